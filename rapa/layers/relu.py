"""ReLU, with Caffe's negative_slope (leaky ReLU)."""
import torch.nn.functional as F

from .base import Layer, register


@register("ReLU")
class ReLU(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.negative_slope = param.relu_param.negative_slope

    def forward(self, x):
        if self.negative_slope:
            return (F.leaky_relu(x, self.negative_slope),)
        return (F.relu(x),)
