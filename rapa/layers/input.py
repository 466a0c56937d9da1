"""Input: blobs fed from outside the net (deploy nets), with the shapes input_param names."""
from __future__ import annotations

import math

from .base import Layer, register


@register("Input")
class Input(Layer):
    bottoms = (0, 0)
    tops = (1, None)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        if len(shapes) not in (1, len(param.top)):
            raise self.error(f"input_param gives {len(shapes)} shapes for {len(param.top)} tops")
        for shape in shapes:
            if not shape or min(shape) < 1 or math.prod(shape) > 2**31 - 1:
                raise self.error(f"input_param.shape {list(shape)}: each dim must be >= 1, "
                                 f"and the blob under 2^31 values")
        self.shapes = shapes * len(param.top) if len(shapes) == 1 else shapes

    def top_shapes(self):
        return self.shapes

    def forward(self):
        raise self.error(f"no value fed for its tops {', '.join(self.param.top)}")
