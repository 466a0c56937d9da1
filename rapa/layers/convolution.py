"""Convolution: Caffe's, plus RAPA's tiling (tiling_param: scheme and number of tiles).

Without tiling_param (or with scheme none and one tile) the weight blob is Caffe's
(O, C, kh, kw) and the layer is torch's conv2d, so Caffe's .caffemodel files load. With tiling
the weight is (T, O, C, kh, kw), the bias (T, O), and the layer is rapa.tiled_conv; a scheme
that draws its partition once (random_fixed) keeps it as a third, saved blob.
With rpu_param, every kernel replica lives on its own simulated analog array (rapa.analog): the
products go through the arrays' periphery, the solver updates the weight by pulses, and the
arrays' device draws follow the partition in the saved blobs. The bias stays digital.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analog import analog_conv, arrays_for
from ..fillers import fill
from ..proto import pb
from ..tiling import SCHEMES, make_scheme
from ..ops import tiled_conv
from .base import Layer, pair_from, register


def _opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


@register("Convolution")
class Convolution(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        cp = param.convolution_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4D bottom (N, C, H, W), got shape {shape}")
        if not cp.HasField("num_output") or cp.num_output == 0:
            raise self.error("convolution_param.num_output must be given and > 0")
        if cp.axis != 1:
            raise self.error("only axis 1 (channels) is supported")
        self.kernel = pair_from(cp.kernel_size, _opt(cp, "kernel_h"), _opt(cp, "kernel_w"), 0,
                                "kernel_size", self)
        if min(self.kernel) < 1:
            raise self.error("convolution_param.kernel_size must be given and > 0")
        self.pad = pair_from(cp.pad, _opt(cp, "pad_h"), _opt(cp, "pad_w"), 0, "pad", self)
        self.stride = pair_from(cp.stride, _opt(cp, "stride_h"), _opt(cp, "stride_w"), 1,
                                "stride", self)
        self.dilation = pair_from(cp.dilation, None, None, 1, "dilation", self)
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise self.error("stride and dilation must be >= 1")
        n, c, h, w = shape
        self.groups = cp.group
        if self.groups < 1:
            raise self.error(f"group must be >= 1, got {self.groups}")
        out_c = cp.num_output
        if c % self.groups or out_c % self.groups:
            raise self.error(f"group {self.groups} must divide the input channels ({c}) and "
                             f"num_output ({out_c})")
        ext = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel)]
        self.out_hw = ((h + 2 * self.pad[0] - ext[0]) // self.stride[0] + 1,
                       (w + 2 * self.pad[1] - ext[1]) // self.stride[1] + 1)
        if min(self.out_hw) < 1:
            raise self.error(f"kernel {self.kernel} with pad {self.pad} does not fit the input "
                             f"{h}x{w} (bottom shape {shape})")

        tp = cp.tiling_param if cp.HasField("tiling_param") else None
        self.scheme = None
        if tp is not None and not (tp.scheme == "none" and tp.num_tiles == 1):
            if tp.scheme not in SCHEMES:
                raise self.error(f"unknown tiling scheme '{tp.scheme}'; known: "
                                 f"{', '.join(sorted(SCHEMES))}")
            if self.groups != 1 or self.dilation != (1, 1):
                raise self.error("a tiled convolution supports neither group nor dilation")
            try:
                self.scheme = make_scheme(tp.scheme, int(tp.num_tiles))
                # Checks the scheme against this output size now, not at the first batch.
                self.scheme.assign(1, *self.out_hw, training=False, device=torch.device("cpu"))
                self.scheme.region(h, w, torch.device("cpu"))
            except ValueError as e:
                raise self.error(str(e).removeprefix("rapa: ")) from None
            replicas = self.scheme.num_kernels
            wshape = (replicas, out_c, c, *self.kernel)
            bshape = (replicas, out_c)
        else:
            wshape = (out_c, c // self.groups, *self.kernel)
            bshape = (out_c,)
        self.weight = torch.nn.Parameter(torch.empty(wshape))
        self.bias = torch.nn.Parameter(torch.empty(bshape)) if cp.bias_term else None
        where = f"layer '{self.layer_name}'"
        wf = cp.weight_filler if cp.HasField("weight_filler") else pb.FillerParameter()
        bf = cp.bias_filler if cp.HasField("bias_filler") else pb.FillerParameter()
        replicas = self.weight if self.scheme is not None else [self.weight]
        for replica in replicas:  # each kernel replica drawn on its own, as its own array
            fill(replica, wf, f"{where} weight_filler")
        if self.bias is not None:
            fill(self.bias, bf, f"{where} bias_filler")
        self.analog = None
        if cp.HasField("rpu_param"):
            if self.groups != 1 or self.dilation != (1, 1):
                raise self.error("an analog convolution supports neither group nor dilation")
            if self.scheme is not None and self.scheme.region(h, w, torch.device("cpu")) is not None:
                raise self.error(f"tiling '{self.scheme.name}' reads other regions as zero, "
                                 f"which analog arrays do not model; use image_overlap")
            self.analog = arrays_for(self, cp.rpu_param, self.analog_weight())

    def learnable_blobs(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def analog_weight(self):
        """The weight as T arrays of O x K, K in (c, ky, kx) order: a view."""
        w = self.weight
        return w.view(-1, w.shape[-4], math.prod(w.shape[-3:]))

    def state_blobs(self):
        blobs = []
        if self.scheme is not None and hasattr(self.scheme, "partition"):
            blobs.append(self.scheme.partition)
        if self.analog is not None:
            blobs += self.analog.state_blobs()
        return blobs

    def forward(self, x):
        if self.analog is not None:
            assignment = None
            if self.scheme is not None:
                assignment = self.scheme.assign(x.shape[0], *self.out_hw, training=self.training,
                                                device=x.device)
            return (analog_conv(x, self.analog_weight(), self.bias, assignment, self.kernel,
                                self.stride, self.pad, self.analog),)
        if self.scheme is None:
            return (F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation,
                             self.groups),)
        n, _, h, w = x.shape
        assignment = self.scheme.assign(n, *self.out_hw, training=self.training, device=x.device)
        region = self.scheme.region(h, w, x.device)
        return (tiled_conv(x, self.weight, self.bias, assignment, self.stride, self.pad,
                           region),)
