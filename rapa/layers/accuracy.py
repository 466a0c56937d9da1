"""Accuracy: the fraction of predictions whose top_k scores hold the label (Caffe's)."""
from __future__ import annotations

import torch

from .base import Layer, register


@register("Accuracy")
class Accuracy(Layer):
    bottoms = (2, 2)
    tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        ap = param.accuracy_param
        scores = self.bottom_shapes[0]
        self.axis = ap.axis if ap.axis >= 0 else ap.axis + len(scores)
        self.top_k = ap.top_k
        if self.top_k < 1 or self.top_k > scores[self.axis]:
            raise self.error(f"top_k {self.top_k} must be in [1, {scores[self.axis]}]")
        self.check_labels(self.axis)
        self.ignore = ap.ignore_label if ap.HasField("ignore_label") else None
        if len(param.top) == 2:
            raise self.error("the per-class accuracy top is not supported")

    def label_range(self):
        return self.bottom_shapes[0][self.axis], self.ignore

    @torch.no_grad()
    def forward(self, scores, labels):
        s = scores.movedim(self.axis, -1).reshape(-1, scores.shape[self.axis])
        target = labels.reshape(-1).long()
        hit = (s.topk(self.top_k, dim=1).indices == target.unsqueeze(1)).any(1)
        if self.ignore is not None:
            valid = target != self.ignore
            return ((hit & valid).sum() / valid.sum().clamp_min(1)).to(scores.dtype),
        return (hit.to(scores.dtype).mean(),)
