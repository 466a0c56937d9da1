"""Concat: Caffe's concatenation of the bottoms along one axis, as one rapa.nn.Concat."""
from __future__ import annotations

from ..nn import Concat as ConcatModule
from .base import Layer, register


@register("Concat")
class Concat(Layer):
    bottoms = (1, None)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        cp = param.concat_param
        shape = self.bottom_shapes[0]
        if cp.HasField("axis") and cp.HasField("concat_dim"):
            raise self.error("give either concat_param.axis or concat_dim, not both")
        if cp.HasField("concat_dim"):
            if cp.concat_dim >= len(shape):
                raise self.error(f"concat_dim {cp.concat_dim} is out of range for bottom shape "
                                 f"{shape}")
            axis = cp.concat_dim
        else:
            axis = self.axis_of(cp.axis, shape, "concat_param.axis")
        self.module = ConcatModule(axis)
        self.top_shape = self.build(self.module.output_shape, *self.bottom_shapes)

    def top_shapes(self):
        return [self.top_shape]
