"""InnerProduct (Caffe's fully connected layer): weight (O, K), or (K, O) with transpose.

With rpu_param the weight lives on one simulated analog array (rapa.analog); the bias stays
digital."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analog import arrays_for
from ..fillers import fill
from ..proto import pb
from .base import Layer, register


@register("InnerProduct")
class InnerProduct(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        ip = param.inner_product_param
        shape = self.bottom_shapes[0]
        if not ip.HasField("num_output") or ip.num_output == 0:
            raise self.error("inner_product_param.num_output must be given and > 0")
        axis = ip.axis if ip.axis >= 0 else ip.axis + len(shape)
        if not 0 <= axis < len(shape):
            raise self.error(f"axis {ip.axis} is out of range for bottom shape {shape}")
        self.axis = axis
        k = math.prod(shape[axis:])
        self.transpose = ip.transpose
        wshape = (k, ip.num_output) if ip.transpose else (ip.num_output, k)
        self.weight = torch.nn.Parameter(torch.empty(wshape))
        self.bias = torch.nn.Parameter(torch.empty(ip.num_output)) if ip.bias_term else None
        where = f"layer '{self.layer_name}'"
        fill(self.weight, ip.weight_filler if ip.HasField("weight_filler") else pb.FillerParameter(),
             f"{where} weight_filler")
        if self.bias is not None:
            fill(self.bias, ip.bias_filler if ip.HasField("bias_filler") else pb.FillerParameter(),
                 f"{where} bias_filler")
        self.analog = None
        if ip.HasField("rpu_param"):
            if self.transpose:
                raise self.error("an analog InnerProduct stores (O, K): transpose must be false")
            self.analog = arrays_for(self, ip.rpu_param, self.analog_weight())

    def learnable_blobs(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def state_blobs(self):
        return self.analog.state_blobs() if self.analog is not None else []

    def analog_weight(self):
        """The weight as one array of O x K: a view."""
        return self.weight.view(1, *self.weight.shape)

    def forward(self, x):
        x = x.flatten(self.axis)
        if self.analog is not None:
            lead = x.shape[:-1]
            rows = x.reshape(-1, x.shape[-1])
            tile = torch.zeros(rows.shape[0], dtype=torch.long, device=x.device)
            out = self.analog.matmul(rows, self.analog_weight(), tile)
            if self.bias is not None:
                out = out + self.bias
            return (out.view(*lead, -1),)
        w = self.weight.t() if self.transpose else self.weight
        return (F.linear(x, w, self.bias),)
