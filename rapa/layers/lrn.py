"""LRN: Caffe's local response normalization.

ACROSS_CHANNELS: x / (k + alpha/n * sum over n neighbouring channels of x^2)^beta.
WITHIN_CHANNEL:  x / (1 + alpha * mean over an n x n spatial window of x^2)^beta, the window
zero-padded by (n-1)/2 and the mean always over n^2 pixels (Caffe's AVE pooling); Caffe does
not use k here.
"""
import torch.nn.functional as F

from ..proto import pb
from .base import Layer, register


@register("LRN")
class LRN(Layer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        lp = param.lrn_param
        if len(self.bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4D bottom, got shape {self.bottom_shapes[0]}")
        if lp.local_size % 2 == 0:
            raise self.error(f"local_size must be odd, got {lp.local_size}")
        self.size, self.alpha, self.beta, self.k = lp.local_size, lp.alpha, lp.beta, lp.k
        self.within = lp.norm_region == pb.LRNParameter.WITHIN_CHANNEL

    def forward(self, x):
        if not self.within:
            return (F.local_response_norm(x, self.size, self.alpha, self.beta, self.k),)
        pad = (self.size - 1) // 2
        mean_sq = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return (x * (1.0 + self.alpha * mean_sq).pow(-self.beta),)
