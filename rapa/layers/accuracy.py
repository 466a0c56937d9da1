"""Accuracy: the fraction of predictions whose top_k scores hold the label (Caffe's), as one
rapa.nn.Accuracy, which also scores test-time majority votes the same way."""
from __future__ import annotations

from ..nn import Accuracy as AccuracyModule
from .base import Layer, register


@register("Accuracy")
class Accuracy(Layer):
    bottoms = (2, 2)
    tops = (1, 2)
    votes = True

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        ap = param.accuracy_param
        scores = self.bottom_shapes[0]
        self.axis = self.axis_of(ap.axis, scores, "accuracy_param.axis")
        if ap.top_k < 1 or ap.top_k > scores[self.axis]:
            raise self.error(f"top_k {ap.top_k} must be in [1, {scores[self.axis]}]")
        self.check_labels(self.axis)
        self.ignore = ap.ignore_label if ap.HasField("ignore_label") else None
        if len(param.top) == 2:
            raise self.error("the per-class accuracy top is not supported")
        self.module = AccuracyModule(ap.top_k, self.axis, self.ignore)

    def label_range(self):
        return self.bottom_shapes[0][self.axis], self.ignore

    def top_shapes(self):
        return [()]

    def vote_accuracy(self, passes, labels):
        return self.module.vote_accuracy(passes, labels)
