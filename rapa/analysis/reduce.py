"""Reduction of a tiled net to one kernel per layer (paper section 3.4.2, Table 3): an untiled
net whose kernels are formed from the trained replicas.

Methods, per tiled layer with replicas W_t (T, O, C, kh, kw) and biases b_t (T, O):
  norm           each filter o from the replica t with the largest L2 norm of W_t[o]
  random_tile    every filter from one tile t, drawn at random
  first_tile     every filter from tile 0
  random_filter  each filter o from a tile drawn at random for it
The bias of filter o comes from the same replica as its weights.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import RapaError
from ..net import Net
from ..proto import pb

METHODS = ("norm", "random_tile", "first_tile", "random_filter")


def chosen_tiles(weight: Tensor, method: str, generator: torch.Generator) -> Tensor:
    """The tile each filter is taken from: int64 (O,)."""
    t, o = weight.shape[:2]
    if method == "norm":
        return weight.detach().reshape(t, o, -1).norm(dim=2).argmax(0)
    if method == "random_tile":
        return torch.randint(t, (1,), generator=generator).expand(o).clone()
    if method == "first_tile":
        return torch.zeros(o, dtype=torch.int64)
    if method == "random_filter":
        return torch.randint(t, (o,), generator=generator)
    raise RapaError(f"unknown reduction method '{method}'; known: {', '.join(METHODS)}")


def reduce_kernel(weight: Tensor, bias: Optional[Tensor], method: str,
                  generator: torch.Generator) -> tuple[Tensor, Optional[Tensor]]:
    """One kernel (O, C, kh, kw) and bias (O,) from replicas (T, O, C, kh, kw) and (T, O)."""
    tiles = chosen_tiles(weight, method, generator).to(weight.device)
    filters = torch.arange(weight.shape[1], device=weight.device)
    return (weight.detach()[tiles, filters].clone(),
            None if bias is None else bias.detach()[tiles, filters].clone())


def untiled_param(param: pb.NetParameter) -> pb.NetParameter:
    """The same net with every tiling_param removed: Caffe's layer types and names stay."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.HasField("convolution_param"):
            if layer.convolution_param.HasField("rpu_param") and \
                    layer.convolution_param.HasField("tiling_param"):
                raise RapaError(f"layer '{layer.name}': reducing a tiled layer on analog arrays "
                                f"is not supported (each tile's array has its own devices and "
                                f"scale)")
            layer.convolution_param.ClearField("tiling_param")
    return out


@torch.no_grad()
def reduce_net(tiled: Net, reduced: Net, method: str, generator: torch.Generator) -> int:
    """Fill `reduced` (built from untiled_param of tiled's prototxt) with one kernel per tiled
    layer by `method`, and every other blob as it is in `tiled`; returns the layers reduced."""
    count = 0
    for e in reduced.entries:
        try:
            src = tiled.layer(e.layer.layer_name)
        except KeyError:
            continue
        replicas = src.kernel_replicas()
        dst = e.layer.learnable_blobs()
        if replicas is not None:  # its state (a fixed partition) has no place in one kernel
            weight, bias = reduce_kernel(*replicas, method, generator)
            values = [weight] + ([bias] if bias is not None else [])
            count += 1
        else:
            values = src.learnable_blobs()
            for i, value in enumerate(src.state_blobs()):
                e.layer.load_state_blob(i, value)
        for blob, value in zip(dst, values):
            blob.copy_(value.reshape(blob.shape))
    return count


def holdout_param(param: pb.NetParameter, source: Optional[str] = None) -> pb.NetParameter:
    """The net whose TEST-phase Data layers read `source`, by default the TRAIN phase's
    database: the training images, with the test-time transform (no augmentation)."""
    from ..net import layer_included
    train = pb.NetState(phase=pb.TRAIN)
    test = pb.NetState(phase=pb.TEST)
    if source is None:
        sources = [lp.data_param.source for lp in param.layer
                   if lp.type == "Data" and layer_included(lp, train)]
        if not sources:
            raise RapaError("the net has no TRAIN-phase Data layer to take held-out images "
                            "from: give --holdout-source")
        source = sources[0]
    out = pb.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type == "Data" and layer_included(lp, test):
            lp.data_param.source = source
    return out
