"""A Caffe net (NetParameter) as a torch.nn.Module over named blobs.

Building follows Caffe's Net::Init: layers are filtered by the net state (phase, level,
stages) with include/exclude rules, set up in order with the shapes of their bottoms, and each
top becomes a named blob whose shape the layer computed at set-up (nothing runs); a layer
whose top repeats its bottom works in place. Losses are the tops with a loss weight (loss
layers weigh their first top 1 unless told otherwise); blobs that no layer consumes are the
net's outputs (loss, accuracy, ...). The net asks its layers only what the layer contract of
rapa/layers/base.py declares.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .errors import RapaError
from .layers import DataLayer, Layer, Learnable, make_layer
from .proto import pb


@dataclass
class NetContext:
    """What layers need from outside their LayerParameter: where relative paths start, seeds."""
    base_dir: Optional[pathlib.Path] = None
    seed: int = 0

    def resolve(self, path: str, what: str) -> pathlib.Path:
        """Caffe resolves paths against the working directory; failing that, try the folder of
        the prototxt, and name both places if neither has it."""
        p = pathlib.Path(path)
        if p.exists() or p.is_absolute() or self.base_dir is None:
            return p
        alt = self.base_dir / p
        if alt.exists():
            return alt
        raise RapaError(f"{what}: {path} not found (looked in {os.getcwd()} and {self.base_dir})")


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer: pb.LayerParameter, state: pb.NetState) -> bool:
    if layer.include and layer.exclude:
        raise RapaError(f"layer '{layer.name}': give include or exclude rules, not both")
    if layer.include:
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(param: pb.NetParameter, state: pb.NetState) -> list[pb.LayerParameter]:
    return [layer for layer in param.layer if layer_included(layer, state)]


@dataclass
class LayerEntry:
    layer: Layer
    bottoms: list[str]
    tops: list[str]
    loss_weights: list[float] = field(default_factory=list)
    # Computed by the layer before it (absorb_affine): forward passes the bottom through.
    absorbed: bool = False


class Net(torch.nn.Module):
    def __init__(self, param: pb.NetParameter, phase: int = pb.TEST, *, level: int = 0,
                 stages: Iterable[str] = (), source: str = "<net>",
                 base_dir: Optional[pathlib.Path] = None, seed: int = 0):
        super().__init__()
        self.name = param.name
        self.source = source
        state = pb.NetState(phase=phase, level=level, stage=list(stages))
        if param.HasField("state"):
            state.MergeFrom(param.state)
            state.phase = phase
        self.phase = phase
        self.context = NetContext(base_dir, seed)
        self.entries: list[LayerEntry] = []
        self.layer_modules = torch.nn.ModuleList()
        shapes: dict[str, tuple[int, ...]] = {}
        producer: dict[str, str] = {}

        # Net-level inputs (Caffe's deprecated input / input_shape / input_dim).
        dims = list(param.input_dim)
        for i, name in enumerate(param.input):
            if i < len(param.input_shape):
                shapes[name] = tuple(param.input_shape[i].dim)
            elif len(dims) >= 4 * (i + 1):
                shapes[name] = tuple(dims[4 * i:4 * i + 4])
            else:
                raise RapaError(f"{source}: input '{name}' has no input_shape")
            producer[name] = "(net input)"

        names_seen: set[str] = set()
        for lp in filter_net(param, state):
            if not lp.name:
                raise RapaError(f"{source}: a layer of type '{lp.type}' has no name")
            if lp.name in names_seen:
                raise RapaError(f"{source}: two layers are named '{lp.name}'")
            names_seen.add(lp.name)
            for b in lp.bottom:
                if b not in shapes:
                    known = ", ".join(sorted(shapes)) or "none"
                    raise RapaError(f"layer '{lp.name}' ({lp.type}): bottom '{b}' is produced by "
                                    f"no earlier layer (blobs so far: {known})")
            bottom_shapes = [shapes[b] for b in lp.bottom]
            layer = make_layer(lp, bottom_shapes, phase, self.context)
            top_shapes = layer.top_shapes()
            if len(top_shapes) != len(lp.top):
                raise RapaError(f"layer '{lp.name}' ({lp.type}): gives {len(top_shapes)} tops, "
                                f"the prototxt names {len(lp.top)}")
            for t, s in zip(lp.top, top_shapes):
                if t in shapes and t not in lp.bottom:
                    raise RapaError(f"layer '{lp.name}' ({lp.type}): top '{t}' is already "
                                    f"produced by layer '{producer[t]}'")
                shapes[t] = tuple(s)
                producer[t] = lp.name
            if lp.loss_weight and len(lp.loss_weight) != len(lp.top):
                raise RapaError(f"layer '{lp.name}': loss_weight needs one value per top "
                                f"({len(lp.top)}), got {len(lp.loss_weight)}")
            weights = list(lp.loss_weight) or (
                [layer.default_loss_weight] + [0.0] * (len(lp.top) - 1))
            self.entries.append(LayerEntry(layer, list(lp.bottom), list(lp.top), weights))
            self.layer_modules.append(layer)
            for spec in lp.param:
                if spec.name:
                    raise RapaError(f"layer '{lp.name}': parameter sharing (param {{ name: "
                                    f"'{spec.name}' }}) is not supported")
        self.blob_shapes = shapes
        # Caffe computes no gradient for a blob with lr_mult 0 (Net::Init): neither does torch.
        for blob in self.learnable():
            if blob.spec.lr_mult == 0:
                blob.blob.requires_grad_(False)
        # Blobs the caller feeds: net inputs, and the tops of layers without bottoms that read
        # no database (Input).
        self.fed_shapes = {name: shapes[name] for name in param.input}
        for e in self.entries:
            if not e.bottoms and not isinstance(e.layer, DataLayer):
                self.fed_shapes.update((t, shapes[t]) for t in e.tops)
        self._limit_labels(producer)
        self._absorb_affines()
        # Outputs, as Caffe finds them: blobs still available after the last layer, i.e. tops
        # that no later layer reads (an in-place layer makes its blob available again).
        available: dict[str, None] = {}
        for e in self.entries:
            for b in e.bottoms:
                available.pop(b, None)
            for t in e.tops:
                available[t] = None
        self.output_names = list(available)
        # rapa.evaluate.test_net's CUDA graphs of this net's test passes, by number of votes.
        self.test_graphs: dict = {}

    def _limit_labels(self, producer: dict[str, str]) -> None:
        """Data layers check each record's label against the layers that read it, so that a
        label outside the classifier names its database and key instead of failing in a
        gather (or, on a GPU, in a device-side assertion)."""
        for e in self.entries:
            limits = e.layer.label_range()
            if limits is None or len(e.bottoms) < 2:
                continue
            source = next((x.layer for x in self.entries
                           if x.layer.layer_name == producer.get(e.bottoms[1])), None)
            if isinstance(source, DataLayer):
                source.limit_labels(*limits, f"layer '{e.layer.layer_name}' "
                                             f"({e.layer.type_name})")

    def _absorb_affines(self) -> None:
        """A channel affine (Scale) working in place right after a layer that can apply it in
        its own pass (BatchNorm) becomes part of that pass (Caffe's in-place BatchNorm + Scale
        pairs): the same numbers, one kernel instead of two, as torch's BatchNorm2d computes
        them. In place, no layer can read the blob between the two."""
        for i in range(len(self.entries) - 1):
            a, b = self.entries[i], self.entries[i + 1]
            if (len(a.tops) != 1 or not (b.bottoms == b.tops == a.tops) or a.absorbed
                    or any(w for w in a.loss_weights)):
                continue
            affine = b.layer.channel_affine()
            if affine is not None and a.layer.absorb_affine(affine):
                b.absorbed = True

    @classmethod
    def from_file(cls, path, phase: int, **kwargs) -> "Net":
        """The net of a prototxt file; relative paths in it may also start at its folder."""
        from .prototxt import read_text
        path = pathlib.Path(path)
        return cls(read_text(path, pb.NetParameter()), phase, source=str(path),
                   base_dir=path.parent, **kwargs)

    # -- running -------------------------------------------------------------------------------

    def forward(self, inputs: Optional[dict[str, torch.Tensor]] = None
                ) -> dict[str, torch.Tensor]:
        """Run the net; `inputs` feeds net inputs and Input layers. Returns every blob."""
        blobs: dict[str, torch.Tensor] = dict(inputs or {})
        for name, value in blobs.items():
            want = self.blob_shapes.get(name)
            if want and tuple(value.shape[1:]) != tuple(want[1:]):
                raise RapaError(f"{self.source}: blob '{name}' is fed with shape "
                                f"{tuple(value.shape)}, but the net was set up for {want} "
                                f"(only the batch size may differ)")
        for e in self.entries:
            if e.absorbed:
                blobs[e.tops[0]] = blobs[e.bottoms[0]]
                continue
            if not e.bottoms:
                fed = [t for t in e.tops if t in blobs]
                if len(fed) == len(e.tops):
                    continue  # data handed in (read_data, or fed inputs)
                if fed:
                    raise RapaError(f"layer '{e.layer.layer_name}' ({e.layer.type_name}): "
                                    f"{', '.join(fed)} fed but not "
                                    f"{', '.join(t for t in e.tops if t not in blobs)}")
            try:
                tops = e.layer(*[blobs[b] for b in e.bottoms])
            except (MemoryError, RuntimeError) as err:  # a top larger than memory
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    # recording a CUDA graph (rapa.cuda_graph): its notice names the layer
                    raise RuntimeError(f"layer '{e.layer.layer_name}' ({e.layer.type_name}): "
                                       f"{err}") from err
                if not isinstance(err, MemoryError) and "allocate" not in str(err):
                    raise
                shapes = ", ".join(str(self.blob_shapes.get(t, "?")) for t in e.tops)
                raise RapaError(f"layer '{e.layer.layer_name}' ({e.layer.type_name}): out of "
                                f"memory computing its top(s) of shape {shapes}") from None
            for name, value in zip(e.tops, tops):
                blobs[name] = value
        return blobs

    def read_data(self) -> dict[str, torch.Tensor]:
        """The next batch of every Data layer, by top name (to run the rest more than once)."""
        data = {}
        for e in self.entries:
            if isinstance(e.layer, DataLayer):
                data.update(zip(e.tops, e.layer()))
        return data

    def share_from(self, other: "Net") -> None:
        """Use the parameters and tile state of `other`'s layers of the same name and type
        (Caffe's ShareTrainedLayersWith: a test net reads the weights the train net learns)."""
        for e in self.entries:
            try:
                src = other.layer(e.layer.layer_name)
            except KeyError:
                continue
            if type(src) is not type(e.layer):
                continue
            mine = e.layer.learnable_blobs() + e.layer.state_blobs()
            theirs = src.learnable_blobs() + src.state_blobs()
            for i, (a, b) in enumerate(zip(mine, theirs)):
                if a.shape != b.shape:  # Caffe's ShareTrainedLayersWith refuses them too
                    raise RapaError(
                        f"layer '{e.layer.layer_name}' ({e.layer.type_name}): blob {i} has "
                        f"shape {tuple(a.shape)} in {self.source} but {tuple(b.shape)} in "
                        f"{other.source}, whose blobs it shares (a random_fixed partition is "
                        f"drawn for one output size: give both phases one input size)")
            _tie(e.layer, src)

    def loss(self, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for e in self.entries:
            for name, w in zip(e.tops, e.loss_weights):
                if w:
                    term = blobs[name].sum() * w
                    total = term if total is None else total + term
        if total is None:
            raise RapaError(f"{self.source}: the net has no loss layer")
        return total

    def to_device(self, device: torch.device) -> "Net":
        self.to(device)
        for layer in self.data_layers():
            layer.set_output_device(device)
        return self

    def data_layers(self) -> list[DataLayer]:
        return [e.layer for e in self.entries if isinstance(e.layer, DataLayer)]

    def close(self) -> None:
        for layer in self.data_layers():
            layer.close()

    # -- parameters ----------------------------------------------------------------------------

    def learnable(self) -> list[Learnable]:
        """Every learnable blob, in layer order: its name, ParamSpec and analog arrays."""
        return [blob for e in self.entries for blob in e.layer.learnable()]

    def layer(self, name: str) -> Layer:
        for e in self.entries:
            if e.layer.layer_name == name:
                return e.layer
        raise KeyError(name)


def _tie(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Make dst's parameters and buffers (what is learned or drawn: weights, a fixed partition,
    the arrays' device draws) src's own tensors, where the shapes agree, through submodules of
    the same type; dst keeps its settings (e.g. its own analog periphery)."""
    for table in ("_parameters", "_buffers"):
        mine, theirs = getattr(dst, table), getattr(src, table)
        for k, p in list(mine.items()):
            q = theirs.get(k)
            if p is not None and q is not None and p.shape == q.shape:
                mine[k] = q
    for k, m in dst._modules.items():
        other = src._modules.get(k)
        if m is not None and type(other) is type(m):
            _tie(m, other)
