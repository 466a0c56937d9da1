"""Softmax over the channel axis (for deploy nets)."""
import torch

from .base import Layer, register


@register("Softmax")
class Softmax(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.axis = param.softmax_param.axis

    def forward(self, x):
        return (torch.softmax(x, self.axis),)
