"""Pooling with Caffe's geometry (ceil mode; the last window starts inside the input or its
left padding): MAX, AVE (divided by the window clipped to the padded input), STOCHASTIC, and
RAPA's MIXED (a*max + (1-a)*ave, a = 1/(1+exp(-mu beta)) with beta learned per channel)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops import _pool_out, max_pool, mixed_pool, stochastic_pool
from ..proto import pb
from .base import Layer, register

P = pb.PoolingParameter
METHODS = {P.MAX: "MAX", P.AVE: "AVE", P.STOCHASTIC: "STOCHASTIC", P.MIXED: "MIXED"}


def _torch_ceil_out(size, kernel, stride, pad):
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


@register("Pooling")
class Pooling(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        pp = param.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4D bottom (N, C, H, W), got shape {shape}")
        n, c, h, w = shape
        self.method = pp.pool
        if pp.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h"):
                raise self.error("global_pooling takes no kernel size")
            self.kernel, self.stride, self.pad = (h, w), (1, 1), (0, 0)
        else:
            if pp.HasField("kernel_size") == (pp.HasField("kernel_h") or pp.HasField("kernel_w")):
                raise self.error("give either kernel_size or kernel_h and kernel_w")
            self.kernel = ((pp.kernel_size, pp.kernel_size) if pp.HasField("kernel_size")
                           else (pp.kernel_h, pp.kernel_w))
            self.pad = (pp.pad, pp.pad) if not (pp.HasField("pad_h") or pp.HasField("pad_w")) \
                else (pp.pad_h, pp.pad_w)
            self.stride = (pp.stride, pp.stride) if not (pp.HasField("stride_h") or
                                                         pp.HasField("stride_w")) \
                else (pp.stride_h, pp.stride_w)
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise self.error(f"kernel {self.kernel} and stride {self.stride} must be >= 1")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        if self.kernel[0] > h + 2 * self.pad[0] or self.kernel[1] > w + 2 * self.pad[1]:
            raise self.error(f"kernel {self.kernel} is larger than the padded input "
                             f"(bottom shape {shape})")
        self.out_hw = tuple(_pool_out(s, k, st, p) for s, k, st, p in
                            zip((h, w), self.kernel, self.stride, self.pad))
        torch_hw = tuple(_torch_ceil_out(s, k, st, p) for s, k, st, p in
                         zip((h, w), self.kernel, self.stride, self.pad))
        if self.method in (P.MAX, P.AVE) and torch_hw != self.out_hw:
            raise self.error(f"a stride larger than the kernel without padding gives Caffe's "
                             f"output {self.out_hw} but torch's {torch_hw}; not supported")
        self.beta = None
        if self.method == P.MIXED:
            self.mu = pp.mu
            if not (math.isfinite(pp.mu) and pp.mu > 0):
                raise self.error(f"mu must be finite and > 0 (the paper: 10), got {pp.mu:g}")
            start = pp.beta_init if pp.HasField("beta_init") else 2.0 / pp.mu
            if not math.isfinite(start):
                raise self.error(f"beta_init must be finite, got {start:g}")
            self.beta = torch.nn.Parameter(torch.full((c,), float(start)))
        elif self.method not in METHODS:
            raise self.error(f"unknown pooling method {self.method}")

    def learnable_blobs(self):
        return [self.beta] if self.beta is not None else []

    def forward(self, x):
        k, s, p = self.kernel, self.stride, self.pad
        if self.method == P.MAX:
            return (max_pool(x, k, s, p),)
        if self.method == P.AVE:
            return (F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True),)
        if self.method == P.STOCHASTIC:
            return (stochastic_pool(x, k, s, p, self.training),)
        return (mixed_pool(x, self.beta.to(x.dtype), k, s, p, mu=self.mu),)
