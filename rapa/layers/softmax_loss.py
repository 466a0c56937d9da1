"""SoftmaxWithLoss: cross-entropy of softmax(bottom[0]) over the channel axis against the
integer labels of bottom[1], normalized as Caffe's LossParameter says (default VALID); a second
top, if named, is the softmax."""
from __future__ import annotations

import torch

from ..nn import SoftmaxWithLoss as SoftmaxWithLossModule
from ..proto import pb
from .base import Layer, register

N = pb.LossParameter
NORMALIZATIONS = {N.FULL: "full", N.VALID: "valid", N.BATCH_SIZE: "batch_size", N.NONE: "none"}


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    bottoms = (2, 2)
    tops = (1, 2)
    default_loss_weight = 1.0

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        self.axis = self.axis_of(param.softmax_param.axis, self.bottom_shapes[0],
                                 "softmax_param.axis")
        self.check_labels(self.axis)
        lp = param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            norm = lp.normalization
        elif lp.HasField("normalize"):  # Caffe's deprecated boolean
            norm = N.VALID if lp.normalize else N.BATCH_SIZE
        else:
            norm = N.VALID
        self.module = self.build(SoftmaxWithLossModule, self.axis, self.ignore,
                                 NORMALIZATIONS[norm])

    def label_range(self):
        return self.bottom_shapes[0][self.axis], self.ignore

    def top_shapes(self):
        return [()] + [self.bottom_shapes[0]] * (len(self.param.top) - 1)

    def forward(self, scores, labels):
        loss = self.module(scores, labels)
        if len(self.param.top) == 2:
            return loss, torch.softmax(scores, self.axis)
        return (loss,)
