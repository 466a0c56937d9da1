"""Pooling (Caffe's MAX, AVE, STOCHASTIC, and RAPA's MIXED) as one rapa.nn.Pool2d, with Caffe's
geometry; global_pooling takes the whole bottom as the window."""
from __future__ import annotations

from ..nn import Pool2d
from ..proto import pb
from .base import Layer, register

P = pb.PoolingParameter
METHODS = {P.MAX: "max", P.AVE: "ave", P.STOCHASTIC: "stochastic", P.MIXED: "mixed"}


@register("Pooling")
class Pooling(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        pp = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4D bottom (N, C, H, W), got shape {shape}")
        if pp.pool not in METHODS:
            raise self.error(f"unknown pooling method {pp.pool}")
        for side in ("kernel", "pad", "stride"):
            if pp.HasField(f"{side}_h") != pp.HasField(f"{side}_w"):
                raise self.error(f"give both {side}_h and {side}_w")
        if pp.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h"):
                raise self.error("global_pooling takes no kernel size")
            if pp.pad or pp.pad_h or pp.pad_w or pp.stride != 1 or pp.HasField("stride_h") and (
                    pp.stride_h, pp.stride_w) != (1, 1):
                raise self.error("global_pooling takes only pad 0 and stride 1 (Caffe)")
            kernel, stride, pad = shape[2:], 1, 0
        else:
            if pp.HasField("kernel_size") == (pp.HasField("kernel_h") or pp.HasField("kernel_w")):
                raise self.error("give either kernel_size or kernel_h and kernel_w")
            kernel = (pp.kernel_size,) * 2 if pp.HasField("kernel_size") \
                else (pp.kernel_h, pp.kernel_w)
            pad = (pp.pad,) * 2 if not (pp.HasField("pad_h") or pp.HasField("pad_w")) \
                else (pp.pad_h, pp.pad_w)
            stride = (pp.stride,) * 2 if not (pp.HasField("stride_h") or pp.HasField("stride_w")) \
                else (pp.stride_h, pp.stride_w)
        method = METHODS[pp.pool]
        self.module = self.build(
            Pool2d, method, tuple(kernel), stride, pad, channels=shape[1], mu=pp.mu,
            beta_init=pp.beta_init if pp.HasField("beta_init") else None)
        self.top_shape = self.build(self.module.output_shape, shape)

    def top_shapes(self):
        return [self.top_shape]

    def learnable_blobs(self):
        return [self.module.beta] if self.module.beta is not None else []
