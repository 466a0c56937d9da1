"""Output sizes of convolution and pooling windows: the one home of these formulas in Python
(their C++ twin, for the kernels, is operators/geometry.h).

Sizes are ints; a "pair" is (height, width).
"""
from __future__ import annotations

import numbers
from typing import Sequence, Union

IntPair = Union[int, Sequence[int]]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(value: IntPair, name: str) -> tuple[int, int]:
    """An int or two ints as (height, width); ValueError naming `name` otherwise."""
    if _is_int(value):
        return int(value), int(value)
    try:
        values = list(value)
    except TypeError:
        values = None
    if values is None or len(values) != 2 or not all(_is_int(v) for v in values):
        raise ValueError(f"rapa: argument '{name}' must be an int or two ints, got {value!r}")
    return int(values[0]), int(values[1])


def count(value, name: str, minimum: int = 1) -> int:
    """An int >= minimum (channels, features, tiles); ValueError naming `name` otherwise."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"rapa: {name} must be >= {minimum} (an int), got {value!r}")
    if value > 2**31 - 1:  # Caffe's int32 fields; the kernels' indices
        raise ValueError(f"rapa: {name} must be < 2^31, got {value!r}")
    return int(value)


def conv_out(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """Output size of a convolution (Caffe's and torch's): floor((size + 2 pad - extent) /
    stride) + 1, extent = dilation (kernel - 1) + 1. Below 1 when the kernel does not fit."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def pool_out(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
             pad: Sequence[int]) -> tuple[int, int]:
    """(Ho, Wo) of Caffe's pooling (pooling_layer.cpp) of an (H, W) input: each side rounded
    up (ceil mode), then, when either side is padded, one less on each side whose last window
    would start beyond the input and its left padding (Caffe corrects both sides then)."""
    out = [-(-(n + 2 * p - k) // s) + 1 for n, k, s, p in zip(hw, kernel, stride, pad)]
    if pad[0] > 0 or pad[1] > 0:
        out = [o - 1 if (o - 1) * s >= n + p else o
               for o, n, s, p in zip(out, hw, stride, pad)]
    return out[0], out[1]


def pool_empty_window(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      pad: Sequence[int]) -> bool:
    """Whether Caffe's pooling of an (H, W) input has a last window that starts beyond the
    input and its left padding, i.e. covers no pixel: possible only without padding and with
    a stride larger than the kernel. Caffe computes such a window anyway (pooling_layer.cpp
    corrects the size only when padded); torch's ceil mode drops it."""
    return any((o - 1) * s >= n + p
               for o, n, s, p in zip(pool_out(hw, kernel, stride, pad), hw, stride, pad))
