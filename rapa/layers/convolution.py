"""Convolution: Caffe's, plus RAPA's tiling (tiling_param) and analog arrays (rpu_param), as one
rapa.nn.TiledConv2d.

Without tiling_param (or with scheme none and one tile) the weight blob is Caffe's
(O, C, kh, kw) and the module computes torch's conv2d, so Caffe's .caffemodel files load. With
tiling the weight is (T, O, C, kh, kw), the bias (T, O); a scheme that draws its partition once
(random_fixed) keeps it as a third, saved blob. With rpu_param every kernel replica lives on its
own simulated analog array: the blobs after those are the arrays' device draws and scales.
With hic_param every replica lives on hybrid binary + multi-level PCM arrays (rapa.analog.hic):
the blobs after those are their devices, accumulators and counts.
"""
from __future__ import annotations

import math

from ..fillers import fill
from ..nn import TiledConv2d
from ..proto import pb
from ..tiling import SCHEMES
from .base import ArrayWork, Layer, pair_from, register


def _opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


@register("Convolution")
class Convolution(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        cp = param.convolution_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4D bottom (N, C, H, W), got shape {shape}")
        if not cp.HasField("num_output") or cp.num_output == 0:
            raise self.error("convolution_param.num_output must be given and > 0")
        if cp.axis != 1:
            raise self.error("only axis 1 (channels) is supported")
        kernel = pair_from(cp.kernel_size, _opt(cp, "kernel_h"), _opt(cp, "kernel_w"), 0,
                           "kernel_size", self)
        if min(kernel) < 1:
            raise self.error("convolution_param.kernel_size must be given and > 0")
        pad = pair_from(cp.pad, _opt(cp, "pad_h"), _opt(cp, "pad_w"), 0, "pad", self)
        stride = pair_from(cp.stride, _opt(cp, "stride_h"), _opt(cp, "stride_w"), 1, "stride",
                           self)
        dilation = pair_from(cp.dilation, None, None, 1, "dilation", self)
        tiling, tiles = "none", 1
        if cp.HasField("tiling_param"):
            tiling, tiles = cp.tiling_param.scheme, int(cp.tiling_param.num_tiles)
            if tiling not in SCHEMES:
                raise self.error(f"unknown tiling scheme '{tiling}'; known: "
                                 f"{', '.join(sorted(SCHEMES))}")
        rpu = self.arrays_config(cp)
        where = f"layer '{self.layer_name}'"
        wf = cp.weight_filler if cp.HasField("weight_filler") else pb.FillerParameter()
        bf = cp.bias_filler if cp.HasField("bias_filler") else pb.FillerParameter()
        self.module = self.build(
            TiledConv2d, shape[1], cp.num_output, kernel, stride, pad, dilation, cp.group,
            cp.bias_term, tiling, tiles, rpu,
            weight_filler=lambda w: fill(w, wf, f"{where} weight_filler"),
            bias_filler=lambda b: fill(b, bf, f"{where} bias_filler"))
        self.top_shape = self.build(self.module.output_shape, shape)
        self.module.scheme.prepare(self.top_shape[2:])

    def top_shapes(self):
        return [self.top_shape]

    def learnable_blobs(self):
        m = self.module
        return [m.weight] + ([m.bias] if m.bias is not None else [])

    def blob_arrays(self, index):
        return self.module.arrays if index == 0 else None

    def state_blobs(self):
        return self.module.state_blobs()

    def state_blob_problem(self, index, value):
        return self.module.state_blob_problem(index, value)

    def kernel_replicas(self):
        m = self.module
        return (m.weight, m.bias) if m.tiled else None

    def array_work(self):
        m = self.module
        patches = self.top_shape[2] * self.top_shape[3]
        return ArrayWork(patches, patches * math.prod(m.weight.shape[-3:]) * m.out_channels,
                         m.scheme.num_tiles)
