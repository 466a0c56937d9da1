"""The layer contract, the data-layer base, and the registry of layer types.

A layer is a thin Caffe adapter: set up once from its LayerParameter and the shapes of its
bottoms (Caffe's LayerSetUp + Reshape), it parses its `*_param`, checks every invariant with an
error that names the layer, builds one module (rapa.nn, or torch.nn where torch's is Caffe's),
fills its blobs with Caffe's fillers, and forwards through that module.

What the net, the solver and the tools may ask a layer (and nothing else; no one asks a layer
what type it is):
  top_shapes()         the shape of every top, computed at set-up from the bottom shapes
  learnable()          its learnable blobs in Caffe's order (weight, bias, ...), each with its
                       ParamSpec and the analog arrays that hold it, if any (`Learnable`)
  state_blobs()        blobs a model file saves that are not learned (a fixed tile partition,
                       then the analog arrays' device draws and scales, last), after the
                       learnable ones
  load_state_blob()    puts one of them back
  running_blobs()      the state blobs its training forward pass updates (BatchNorm's
                       statistics), which a data-parallel run averages over its processes
  default_loss_weight  the weight of its first top when the prototxt gives none (loss layers: 1)
  label_range()        (classes, ignore_label) when it reads class labels from bottom[1]
  votes                whether it scores predictions and can score a majority vote over
                       several passes (vote_accuracy), as test-time voting asks
  array_work()         for layers on crossbar arrays: matrix-vector products per image, MACs,
                       tiles (the paper's analog time model, Fig. 1)
  kernel_replicas()    a tiled layer's kernel replicas (T, O, C, kh, kw) and biases (T, O): what
                       the analyses of the replicas read (rapa.analysis)
  channel_affine()     a layer that only multiplies each channel by a learned weight and adds
                       a learned bias (Scale) offers them, and a layer before it that can apply
                       them in its own pass (BatchNorm) takes them with absorb_affine(); the
                       net then skips the first (Caffe's BatchNorm + Scale, in one kernel)
A DataLayer (below) reads its tops from a database; a layer without bottoms that is not a
DataLayer has its tops fed by the caller (Input).
"""
from __future__ import annotations

import re

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..analog import ArrayProducts, from_proto, hic_from_proto
from ..errors import RapaError
from ..proto import pb

Shape = tuple[int, ...]
# A function giving a channel affine's current (weight, bias): see channel_affine.
Affine = Callable[[], tuple[torch.Tensor, Optional[torch.Tensor]]]
LAYER_TYPES: dict[str, type["Layer"]] = {}


def register(type_name: str):
    def wrap(cls):
        cls.type_name = type_name
        LAYER_TYPES[type_name] = cls
        return cls
    return wrap


@dataclass
class Learnable:
    """One learnable blob of a net and how the solver updates it."""
    name: str                                # "<layer>/<index>"
    blob: torch.nn.Parameter
    spec: pb.ParamSpec                       # lr_mult, decay_mult (Caffe's defaults if unset)
    arrays: Optional[ArrayProducts] = None   # set: updated by these arrays, not by SGD


@dataclass
class ArrayWork:
    """A layer's work on crossbar arrays per image (paper Fig. 1)."""
    patches: int   # np: matrix-vector products (output pixels of a convolution)
    macs: int      # multiply-accumulates
    tiles: int     # nt: arrays working on them in parallel


def first_nan(message, prefix: str = "") -> Optional[str]:
    """The path (e.g. relu_param.negative_slope) of the first NaN among the float and double
    fields of a protobuf message, its sub-messages included; None without one."""
    from google.protobuf.descriptor import FieldDescriptor as FD
    for fd, value in message.ListFields():
        name = prefix + fd.name
        values = value if fd.is_repeated else [value]
        if fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
            if any(v != v for v in values):
                return name
        elif fd.type == FD.TYPE_MESSAGE and not name.endswith("blobs"):
            for v in values:
                found = first_nan(v, name + ".")
                if found:
                    return found
    return None


class Layer(torch.nn.Module):
    type_name = ""
    # (fewest, most) bottoms and tops; None = any number.
    bottoms: tuple[int, int | None] = (1, 1)
    tops: tuple[int, int | None] = (1, 1)
    # Tops that are losses by default (Caffe: loss layers weigh their first top 1).
    default_loss_weight = 0.0
    # Scores predictions against labels and answers vote_accuracy (test-time voting).
    votes = False

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], phase: int,
                 context=None):
        super().__init__()
        self.param = param
        self.layer_name = param.name
        self.phase = phase
        nan = first_nan(param)
        if nan:  # passes every range check below it unnoticed
            raise self.error(f"{nan} is nan")
        self._check_counts("bottom", len(param.bottom), self.bottoms)
        self._check_counts("top", len(param.top), self.tops)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.module: Optional[torch.nn.Module] = None

    # -- set-up helpers ------------------------------------------------------------------------

    def arrays_config(self, msg):
        """The RPUConfig (rpu_param) or HICConfig (hic_param) of a Convolution's or
        InnerProduct's parameter message, or None; both given is this layer's error."""
        if msg.HasField("rpu_param") and msg.HasField("hic_param"):
            raise self.error("give rpu_param (RPU arrays) or hic_param (HIC arrays), not both")
        if msg.HasField("rpu_param"):
            return self.build(from_proto, msg.rpu_param, "rpu_param")
        if msg.HasField("hic_param"):
            return self.build(hic_from_proto, msg.hic_param, "hic_param")
        return None

    def error(self, message: str) -> RapaError:
        return RapaError(f"layer '{self.layer_name}' ({self.type_name}): {message}")

    def build(self, factory, *args, **kwargs):
        """factory(*args, **kwargs), a module's ValueError becoming this layer's error."""
        try:
            return factory(*args, **kwargs)
        except ValueError as e:
            raise self.error(str(e).removeprefix("rapa: ")) from None
        except (RuntimeError, MemoryError) as e:  # blobs larger than memory (or than a size)
            if not isinstance(e, MemoryError) and not any(
                    k in str(e) for k in ("allocate", "overflow", "negative dimension")):
                raise
            size = re.search(r"allocate (\d+) bytes", str(e))
            what = f"{int(size.group(1)) / 2**30:.1f} GiB" if size else "its blobs"
            raise self.error(f"cannot allocate {what} for its blobs (num_output, kernel, tile "
                             f"count or input too large?)") from None

    def _check_counts(self, what: str, count: int, limits: tuple[int, int | None]) -> None:
        low, high = limits
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else (f"at least {low}" if high is None
                                                  else f"{low} to {high}")
            raise self.error(f"needs {want} {what} blob(s), has {count}")

    def axis_of(self, axis: int, shape: Shape, field: str) -> int:
        """A Caffe axis (negative counts from the end) as an index into `shape`."""
        index = axis + len(shape) if axis < 0 else axis
        if not 0 <= index < len(shape):
            raise self.error(f"{field} {axis} is out of range for bottom shape {shape}")
        return index

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
        count = len(self.learnable_blobs())
        if len(specs) > count:
            raise self.error(f"has {len(specs)} param {{ }} entries but only {count} "
                             f"learnable blob(s)")
        return specs + [pb.ParamSpec() for _ in range(count - len(specs))]

    # -- the contract --------------------------------------------------------------------------

    def top_shapes(self) -> list[Shape]:
        """The shape of each top, from the bottom shapes; every layer answers."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its top shapes")

    def learnable_blobs(self) -> list[torch.nn.Parameter]:
        """Learnable blobs in Caffe's order (weight, bias, ...)."""
        return []

    def blob_arrays(self, index: int) -> Optional[ArrayProducts]:
        """The analog arrays holding learnable blob `index`, or None (digital)."""
        return None

    def learnable(self) -> list[Learnable]:
        return [Learnable(f"{self.layer_name}/{i}", blob, spec, self.blob_arrays(i))
                for i, (blob, spec) in enumerate(zip(self.learnable_blobs(), self.param_specs()))]

    def state_blobs(self) -> list[torch.Tensor]:
        """Blobs saved with the model that are not learned (e.g. a fixed tile partition)."""
        return []

    def running_blobs(self) -> list[torch.Tensor]:
        """Those of state_blobs() that its forward pass updates in training (each process of
        a data-parallel run from its own batch, rapa.distributed)."""
        return []

    def load_state_blob(self, index: int, value: torch.Tensor) -> None:
        blobs = self.state_blobs()
        if not 0 <= index < len(blobs):
            raise self.error(f"has no state blob {index}")
        if value.numel() != blobs[index].numel():
            raise self.error(f"state blob {index} has shape {tuple(blobs[index].shape)}, the "
                             f"value given {tuple(value.shape)}")
        problem = self.state_blob_problem(index, value)
        if problem:
            raise self.error(f"state blob {index}: {problem}")
        with torch.no_grad():  # in place: a test net shares these very tensors
            blobs[index].copy_(value.reshape(blobs[index].shape))

    def state_blob_problem(self, index: int, value: torch.Tensor) -> Optional[str]:
        """Why `value` cannot be state blob `index` (a model file's), or None."""
        return None

    def label_range(self) -> Optional[tuple[int, Optional[int]]]:
        """(classes, ignore_label) for a layer that reads class labels from bottom[1]: a label
        must lie in [0, classes) or equal ignore_label (None: none). Other layers: None."""
        return None

    def vote_accuracy(self, passes: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The accuracy of the majority vote over `passes` (bottom[0] of several passes),
        scored as one pass is; only layers with `votes` answer."""
        raise NotImplementedError

    def array_work(self) -> Optional[ArrayWork]:
        return None

    def kernel_replicas(self) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(weight (T, O, C, kh, kw), bias (T, O) or None) of a layer whose kernel is
        replicated onto tiles (T may be 1: perforated); None for other layers."""
        return None

    def channel_affine(self) -> Optional[Affine]:
        """A function giving this layer's current (weight, bias), each (C,), when all it does is
        top = bottom * weight + bias per channel (axis 1); else None."""
        return None

    def absorb_affine(self, affine: Affine) -> bool:
        """Apply the channel affine that `affine()` gives to this layer's top from now on;
        True if the layer can (then the net skips the layer that offered it)."""
        return False

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*bottoms)
        return out if isinstance(out, tuple) else (out,)


class DataLayer(Layer):
    """A layer that reads its tops from a database through a background prefetcher: batch
    size, position (batches read), reseeding, label limits, the device of its tops."""
    bottoms = (0, 0)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        # Train and test readers draw from different streams of the run's seed.
        self.seed_offset = 7919 * (1 + phase)
        self.batch_size = 0
        self.prefetcher = None      # set by the subclass: a rapa.data.prefetch.Prefetcher
        self.output_device: Optional[torch.device] = None

    @property
    def position(self) -> int:
        """The index of the next batch it will read."""
        return self.prefetcher.next_index

    def seek(self, batches: int) -> None:
        """The next batch read will be batch `batches` (a resumed run; every test pass)."""
        self.prefetcher.seek(batches)

    def shard(self, rank: int, world: int) -> None:
        """Read as process `rank` of a run of `world` (rapa.data.prefetch): every process its
        own batches, the position counting all of theirs."""
        self.prefetcher.shard(rank, world)

    def reseed(self, seed: int) -> None:
        """Draw the augmentation from the run seed `seed` (a resumed run keeps the original)."""
        self.prefetcher.seed = seed + self.seed_offset

    def limit_labels(self, classes: int, ignore: Optional[int], reader: str) -> None:
        """Every label must lie in [0, classes) or equal `ignore`, as `reader` needs."""
        self.prefetcher.limit_labels(classes, ignore, reader)

    def set_output_device(self, device: torch.device) -> None:
        """Hand the tops to `device`: batches for a GPU come in page-locked memory and are
        copied asynchronously."""
        self.output_device = device
        self.prefetcher.set_pin_memory(device.type == "cuda")

    def close(self) -> None:
        self.prefetcher.close()

    @property
    def records(self) -> int:
        """The records in its database (an epoch's worth of images)."""
        raise NotImplementedError

    def input_normalization(self) -> tuple[torch.Tensor, float]:
        """(mean, scale): the first top is (pixels - mean) * scale, mean of the top's
        (C, H, W), as at test time (no augmentation)."""
        raise NotImplementedError

    def forward(self):
        tops = next(self.prefetcher)
        if self.output_device is not None and self.output_device.type != "cpu":
            tops = tuple(t.to(self.output_device, non_blocking=True) for t in tops)
        return tuple(tops)[:len(self.param.top)]


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
    return cls(param, bottom_shapes, phase, context)
