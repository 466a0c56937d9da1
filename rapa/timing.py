"""Per-layer forward and backward times (like `caffe time`) and the paper's analog-array time
model (Fig. 1): on crossbar arrays a conv layer takes one array operation per patch, so its time
is its number of patches np; with nt tiles working in parallel it is ceil(np / nt)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .errors import RapaError
from .net import Net


@dataclass
class LayerTime:
    name: str
    type: str
    forward_ms: float
    backward_ms: float


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _marker(marks: list, kind: str, device):
    def hook(*_):
        _sync(device)
        marks.append((kind, time.perf_counter()))
    return hook


def time_layers(net: Net, iterations: int, device: torch.device, backward: bool = True,
                warmup: int = 2) -> list[LayerTime]:
    """Mean time per iteration of each layer's forward and backward pass, measured by hooks on
    the layers while the net runs as it always does (Data layers read one batch, reused)."""
    feed = net.read_data() if net.data_layers() else {}
    # Blobs the caller feeds (Input layers, net inputs) get random values of their shapes;
    # those read as labels (bottom[1] of SoftmaxWithLoss, Accuracy) random valid classes.
    classes = {e.bottoms[1]: e.layer.label_range()[0] for e in net.entries
               if e.layer.label_range() is not None and len(e.bottoms) > 1}
    feed.update({name: (torch.randint(classes[name], shape, device=device).float()
                        if name in classes else torch.randn(shape, device=device))
                 for name, shape in net.fed_shapes.items()})
    names = [e.layer.layer_name for e in net.entries]
    fwd, bwd = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    started: dict[str, float] = {}
    forward_s: dict[str, float] = {}
    stamps: dict[str, list] = {}

    def before(name):
        def hook(module, args):
            _sync(device)
            started[name] = time.perf_counter()
            if backward and torch.is_grad_enabled():
                # An alias per input: its gradient is this layer's share alone, whereas the
                # input's own gradient waits for every consumer (a residual block's shortcut
                # would count the whole branch as the Eltwise's backward).
                return tuple(a.view_as(a) if isinstance(a, torch.Tensor) and a.requires_grad
                             else a for a in args)
        return hook

    def after(name):
        def hook(module, args, tops):
            _sync(device)
            forward_s[name] = time.perf_counter() - started[name]
            if not (backward and torch.is_grad_enabled()):
                return
            marks = stamps.setdefault(name, [])
            for t in tops:  # the gradient reaches a top: the layer's backward starts
                if t.requires_grad:
                    t.register_hook(_marker(marks, "start", device))
            for x in list(args) + list(module.parameters()):  # its inputs' gradients: it ends
                if not x.requires_grad:
                    continue
                if x.is_leaf:
                    x.register_post_accumulate_grad_hook(_marker(marks, "end", device))
                else:
                    x.register_hook(_marker(marks, "end", device))
        return hook

    handles = [h for e, name in zip(net.entries, names) for h in (
        e.layer.register_forward_pre_hook(before(name)),
        e.layer.register_forward_hook(after(name)))]
    try:
        for it in range(warmup + iterations):
            forward_s.clear()
            stamps.clear()
            blobs = net(dict(feed))
            if backward:
                loss = net.loss(blobs)
                if not loss.requires_grad:
                    raise RapaError("the loss depends on no weight that learns (lr_mult 0 "
                                    "everywhere, or no layer with weights before it): no "
                                    "backward pass to time; use --forward-only")
                loss.backward()
                net.zero_grad(set_to_none=True)
            if it < warmup:
                continue
            for name, seconds in forward_s.items():
                fwd[name] += seconds
            for name, marks in stamps.items():
                starts = [t for k, t in marks if k == "start"]
                ends = [t for k, t in marks if k == "end"]
                if starts and ends:
                    bwd[name] += max(ends) - min(starts)
    finally:
        for h in handles:
            h.remove()
    return [LayerTime(e.layer.layer_name, e.layer.type_name, 1e3 * fwd[e.layer.layer_name] /
                      iterations, 1e3 * bwd[e.layer.layer_name] / iterations)
            for e in net.entries]


@dataclass
class AnalogLayer:
    name: str
    patches: int        # np: output pixels per image = matrix-vector products
    macs: int           # multiply-accumulates per image
    tiles: int          # nt: arrays holding a replica (parallel)
    per_tile: int       # ceil(np / nt): sequential array operations per image
    speedup: float      # np / per_tile


def analog_model(net: Net) -> list[AnalogLayer]:
    """The analog time model of every layer that runs on crossbar arrays (its array_work)."""
    out = []
    for e in net.entries:
        work = e.layer.array_work()
        if work is None:
            continue
        # Perforated computes only np/nt patches with its one kernel: fewer, not parallel.
        per_tile = math.ceil(work.patches / work.tiles)
        out.append(AnalogLayer(e.layer.layer_name, work.patches, work.macs, work.tiles,
                               per_tile, work.patches / per_tile))
    return out
