"""The layer base class and the registry of layer types.

A layer is set up once from its LayerParameter and the shapes of its bottoms (Caffe's
LayerSetUp + Reshape), checks every invariant there with an error that names the layer, and
then maps bottom tensors to top tensors in forward. Learnable blobs are nn.Parameters listed
in Caffe's blob order, so that .caffemodel files map onto them one to one.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import RapaError
from ..proto import pb

Shape = tuple[int, ...]
LAYER_TYPES: dict[str, type["Layer"]] = {}


def register(type_name: str):
    def wrap(cls):
        cls.type_name = type_name
        LAYER_TYPES[type_name] = cls
        return cls
    return wrap


class Layer(torch.nn.Module):
    type_name = ""
    # (fewest, most) bottoms and tops; None = any number.
    bottoms: tuple[int, int | None] = (1, 1)
    tops: tuple[int, int | None] = (1, 1)
    # Tops that are losses by default (Caffe: loss layers weigh their first top 1).
    default_loss_weight = 0.0
    # Layers that read files or seeds from the net (Data) take a NetContext.
    needs_context = False

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape],
                 phase: int):
        super().__init__()
        self.param = param
        self.layer_name = param.name
        self.phase = phase
        self._check_counts("bottom", len(param.bottom), self.bottoms)
        self._check_counts("top", len(param.top), self.tops)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]

    # -- set-up helpers ------------------------------------------------------------------------

    def error(self, message: str) -> RapaError:
        return RapaError(f"layer '{self.layer_name}' ({self.type_name}): {message}")

    def _check_counts(self, what: str, count: int, limits: tuple[int, int | None]) -> None:
        low, high = limits
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else (f"at least {low}" if high is None
                                                  else f"{low} to {high}")
            raise self.error(f"needs {want} {what} blob(s), has {count}")

    def label_range(self):
        """(classes, ignore_label) for a layer that reads class labels from bottom[1]: a label
        must lie in [0, classes) or equal ignore_label (None: none). Other layers: None."""
        return None

    def check_labels(self, axis: int) -> None:
        """bottom[1] must hold one label per prediction of bottom[0] along `axis`."""
        scores, labels = self.bottom_shapes[:2]
        outer = math.prod(scores[:axis]) * math.prod(scores[axis + 1:])
        if math.prod(labels) != outer:
            raise self.error(f"the labels (bottom '{self.param.bottom[1]}', shape {labels}) must "
                             f"hold one label per prediction of bottom '{self.param.bottom[0]}' "
                             f"(shape {scores}): {outer} labels, not {math.prod(labels)}")

    def param_specs(self) -> list[pb.ParamSpec]:
        """The ParamSpec of each learnable blob (Caffe's defaults where the prototxt has none)."""
        specs = list(self.param.param)
        learnable = self.learnable_blobs()
        if len(specs) > len(learnable):
            raise self.error(f"has {len(specs)} param {{ }} entries but only "
                             f"{len(learnable)} learnable blob(s)")
        return specs + [pb.ParamSpec() for _ in range(len(learnable) - len(specs))]

    # -- what subclasses provide ---------------------------------------------------------------

    def learnable_blobs(self) -> list[torch.nn.Parameter]:
        """Learnable blobs in Caffe's order (weight, bias, ...)."""
        return []

    def state_blobs(self) -> list[torch.Tensor]:
        """Blobs saved with the model that are not learned (e.g. a fixed tile partition)."""
        return []

    def load_state_blob(self, index: int, value: torch.Tensor) -> None:
        blobs = self.state_blobs()
        if not 0 <= index < len(blobs):
            raise self.error(f"has no state blob {index}")
        with torch.no_grad():  # in place: a test net shares these very tensors
            blobs[index].copy_(value.reshape(blobs[index].shape))

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


def pair_from(values: Sequence[int], h: int | None, w: int | None, default: int,
              what: str, layer: Layer) -> tuple[int, int]:
    """Caffe's spatial parameters: `what` given once, once per side, or as what_h/what_w."""
    values = list(values)
    if h is not None or w is not None:
        if values:
            raise layer.error(f"give either {what} or {what}_h/{what}_w, not both")
        if h is None or w is None:
            raise layer.error(f"give both {what}_h and {what}_w")
        return int(h), int(w)
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise layer.error(f"{what} takes 1 or 2 values for a 2D layer, got {len(values)}")


def make_layer(param: pb.LayerParameter, bottom_shapes: Sequence[Shape], phase: int,
               context=None) -> Layer:
    cls = LAYER_TYPES.get(param.type)
    if cls is None:
        raise RapaError(f"layer '{param.name}': unknown type '{param.type}'; known types: "
                        f"{', '.join(sorted(LAYER_TYPES))}")
    if cls.needs_context:
        return cls(param, bottom_shapes, phase, context=context)
    return cls(param, bottom_shapes, phase)
