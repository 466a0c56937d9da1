"""Caffe's weight fillers (FillerParameter): constant, gaussian, uniform, xavier, msra.

Fan-in and fan-out follow Caffe: for a blob of shape (num, channels, ...), fan_in = count / num
and fan_out = count / channels. A tiled convolution's weight (T, O, C, kh, kw) is filled one
replica (O, C, kh, kw) at a time, each replica drawn independently.
"""
from __future__ import annotations

import math

import torch

from .errors import RapaError
from .proto import pb

FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra")


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return max(fan_in, 1), max(fan_out, 1)


def _norm(param: pb.FillerParameter, shape) -> float:
    fan_in, fan_out = _fans(tuple(shape))
    if param.variance_norm == pb.FillerParameter.FAN_OUT:
        return fan_out
    if param.variance_norm == pb.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


@torch.no_grad()
def fill(tensor: torch.Tensor, param: pb.FillerParameter, where: str) -> None:
    """Fill `tensor` in place as Caffe's filler `param` would; `where` names it in errors."""
    kind = param.type
    if kind not in FILLERS:
        raise RapaError(f"{where}: unknown filler type '{kind}'; known: {', '.join(FILLERS)}")
    if kind == "constant":
        tensor.fill_(param.value)
    elif kind == "uniform":
        if param.max < param.min:
            raise RapaError(f"{where}: uniform filler needs min <= max, got {param.min} > {param.max}")
        tensor.uniform_(param.min, param.max)
    elif kind == "gaussian":
        if not param.std >= 0:  # also catches nan
            raise RapaError(f"{where}: gaussian filler needs std >= 0, got {param.std:g}")
        tensor.normal_(param.mean, param.std)
        if param.sparse >= 0:
            # Caffe: each weight is kept with probability sparse / num_outputs.
            num_outputs = tensor.shape[0] if tensor.dim() > 0 else 1
            keep = min(param.sparse / max(num_outputs, 1), 1.0)
            tensor.mul_(torch.rand_like(tensor) < keep)
    elif kind == "xavier":
        bound = math.sqrt(3.0 / _norm(param, tensor.shape))
        tensor.uniform_(-bound, bound)
    elif kind == "msra":
        tensor.normal_(0.0, math.sqrt(2.0 / _norm(param, tensor.shape)))
