"""SoftmaxWithLoss: cross-entropy of softmax(bottom[0]) over the channel axis against the
integer labels of bottom[1], normalized as Caffe's LossParameter says (default VALID)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..proto import pb
from .base import Layer, register

N = pb.LossParameter


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    bottoms = (2, 2)
    tops = (1, 2)
    default_loss_weight = 1.0

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.axis = param.softmax_param.axis
        self.check_labels(self.axis)
        lp = param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.norm = lp.normalization
        elif lp.HasField("normalize"):
            self.norm = N.VALID if lp.normalize else N.BATCH_SIZE
        else:
            self.norm = N.VALID

    def label_range(self):
        return self.bottom_shapes[0][self.axis], self.ignore

    def forward(self, scores, labels):
        logp = F.log_softmax(scores, self.axis).movedim(self.axis, -1)
        logp = logp.reshape(-1, logp.shape[-1])
        target = labels.reshape(-1).long()
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore is None \
            else target != self.ignore
        picked = logp.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
        total = -(picked * valid).sum()
        if self.norm == N.VALID:
            loss = total / valid.sum().clamp_min(1)
        elif self.norm == N.FULL:
            loss = total / target.numel()
        elif self.norm == N.BATCH_SIZE:
            loss = total / scores.shape[0]
        else:
            loss = total
        if len(self.param.top) == 2:
            return loss, torch.softmax(scores, self.axis)
        return (loss,)
