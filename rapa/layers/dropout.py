"""Dropout: in training, zero with probability dropout_ratio and scale the rest by 1/(1-ratio)
(torch.nn.Dropout, Caffe's inverted dropout); in a TEST-phase net a copy, whatever the module's
mode (Caffe decides by the phase)."""
import torch

from ..proto import pb
from .base import Layer, register


@register("Dropout")
class Dropout(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        ratio = param.dropout_param.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        self.module = torch.nn.Dropout(ratio) if phase == pb.TRAIN else torch.nn.Identity()

    def top_shapes(self):
        return [self.bottom_shapes[0]]
