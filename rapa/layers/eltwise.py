"""Eltwise: Caffe's elementwise SUM (with coeff), PROD and MAX of its bottoms, as one
rapa.nn.Eltwise."""
from __future__ import annotations

from ..nn import Eltwise as EltwiseModule
from ..proto import pb
from .base import Layer, register

E = pb.EltwiseParameter
OPERATIONS = {E.SUM: "sum", E.PROD: "prod", E.MAX: "max"}


@register("Eltwise")
class Eltwise(Layer):
    bottoms = (2, None)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        ep = param.eltwise_param
        if ep.operation not in OPERATIONS:
            raise self.error(f"unknown operation {ep.operation}")
        self.module = self.build(EltwiseModule, OPERATIONS[ep.operation], list(ep.coeff),
                                 ep.stable_prod_grad)
        shapes = [f"'{b}' {s}" for b, s in zip(param.bottom, self.bottom_shapes)]
        try:
            self.top_shape = self.module.output_shape(*self.bottom_shapes)
        except ValueError as e:
            raise self.error(f"{str(e).removeprefix('rapa: ')} (bottoms {', '.join(shapes)})") \
                from None

    def top_shapes(self):
        return [self.top_shape]
