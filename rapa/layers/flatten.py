"""Flatten: Caffe's flattening of axes [axis, end_axis] into one (torch.nn.Flatten)."""
from __future__ import annotations

import math

import torch

from .base import Layer, register


@register("Flatten")
class Flatten(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        fp = param.flatten_param
        shape = self.bottom_shapes[0]
        start = self.axis_of(fp.axis, shape, "flatten_param.axis")
        end = self.axis_of(fp.end_axis, shape, "flatten_param.end_axis")
        if end < start:
            raise self.error(f"flatten_param.end_axis ({fp.end_axis}) comes before axis "
                             f"({fp.axis}) in bottom shape {shape}")
        self.top_shape = (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])
        self.module = torch.nn.Flatten(start, end)

    def top_shapes(self):
        return [self.top_shape]
