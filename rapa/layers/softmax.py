"""Softmax over the channel axis (for deploy nets): torch.nn.Softmax."""
import torch

from .base import Layer, register


@register("Softmax")
class Softmax(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        axis = self.axis_of(param.softmax_param.axis, self.bottom_shapes[0], "softmax_param.axis")
        self.module = torch.nn.Softmax(axis)

    def top_shapes(self):
        return [self.bottom_shapes[0]]
