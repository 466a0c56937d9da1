"""InnerProduct (Caffe's fully connected layer) as one rapa.nn.Linear: weight (O, K), or (K, O)
with transpose; the bottom is flattened from `axis` on. With rpu_param the weight lives on one
simulated analog array (its device draws and scale are saved after the bias); the bias stays
digital. With hic_param it lives on hybrid binary + multi-level PCM arrays (rapa.analog.hic)."""
from __future__ import annotations

import math

from ..fillers import fill
from ..nn import Linear
from ..proto import pb
from .base import ArrayWork, Layer, register


@register("InnerProduct")
class InnerProduct(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        ip = param.inner_product_param
        shape = self.bottom_shapes[0]
        if not ip.HasField("num_output") or ip.num_output == 0:
            raise self.error("inner_product_param.num_output must be given and > 0")
        self.axis = self.axis_of(ip.axis, shape, "axis")
        rpu = self.arrays_config(ip)
        where = f"layer '{self.layer_name}'"
        wf = ip.weight_filler if ip.HasField("weight_filler") else pb.FillerParameter()
        bf = ip.bias_filler if ip.HasField("bias_filler") else pb.FillerParameter()
        self.module = self.build(
            Linear, math.prod(shape[self.axis:]), ip.num_output, ip.bias_term,
            transpose=ip.transpose, rpu_config=rpu,
            weight_filler=lambda w: fill(w, wf, f"{where} weight_filler"),
            bias_filler=lambda b: fill(b, bf, f"{where} bias_filler"))

    def top_shapes(self):
        return [(*self.bottom_shapes[0][:self.axis], self.module.out_features)]

    def learnable_blobs(self):
        m = self.module
        return [m.weight] + ([m.bias] if m.bias is not None else [])

    def blob_arrays(self, index):
        return self.module.arrays if index == 0 else None

    def state_blobs(self):
        return self.module.state_blobs()

    def state_blob_problem(self, index, value):
        return self.module.state_blob_problem(index, value)

    def array_work(self):
        return ArrayWork(1, self.module.weight.numel(), 1)

    def forward(self, x):
        return (self.module(x.flatten(self.axis)),)
