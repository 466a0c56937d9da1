"""Concat: Caffe's concatenation of inputs along one axis (concat_layer.cpp)."""
from __future__ import annotations

import torch
from torch import Tensor


class Concat(torch.nn.Module):
    """torch.cat of n >= 1 inputs along `axis` (canonical, >= 0); the other axes must agree."""

    def __init__(self, axis: int = 1):
        super().__init__()
        if axis < 0:
            raise ValueError(f"rapa: axis must be >= 0 (canonical), got {axis}")
        self.axis = axis

    def output_shape(self, *shapes: tuple[int, ...]) -> tuple[int, ...]:
        first = tuple(shapes[0])
        if self.axis >= len(first):
            raise ValueError(f"rapa: axis {self.axis} is out of range for input shape {first}")
        total = 0
        for i, s in enumerate(shapes):
            s = tuple(s)
            if len(s) != len(first) or s[:self.axis] + s[self.axis + 1:] != \
                    first[:self.axis] + first[self.axis + 1:]:
                raise ValueError(f"rapa: input {i} has shape {s}, which differs from input 0's "
                                 f"{first} outside axis {self.axis}")
            total += s[self.axis]
        return (*first[:self.axis], total, *first[self.axis + 1:])

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] if len(xs) == 1 else torch.cat(xs, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"
