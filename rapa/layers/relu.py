"""ReLU, with Caffe's negative_slope (leaky ReLU): torch.nn.ReLU or torch.nn.LeakyReLU."""
import torch

from .base import Layer, register


@register("ReLU")
class ReLU(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        slope = param.relu_param.negative_slope
        self.module = torch.nn.LeakyReLU(slope) if slope else torch.nn.ReLU()

    def top_shapes(self):
        return [self.bottom_shapes[0]]
