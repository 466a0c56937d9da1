"""Dropout: in training, zero with probability dropout_ratio and scale the rest by 1/(1-ratio)."""
import torch.nn.functional as F

from .base import Layer, register


@register("Dropout")
class Dropout(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.ratio = param.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")

    def forward(self, x):
        return (F.dropout(x, self.ratio, self.training),)
