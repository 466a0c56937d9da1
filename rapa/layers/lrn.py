"""LRN: Caffe's local response normalization (ACROSS_CHANNELS, WITHIN_CHANNEL) as one
rapa.nn.LRN."""
from ..nn import LRN as LRNModule
from ..proto import pb
from .base import Layer, register

REGIONS = {pb.LRNParameter.ACROSS_CHANNELS: "across_channels",
           pb.LRNParameter.WITHIN_CHANNEL: "within_channel"}


@register("LRN")
class LRN(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        lp = param.lrn_param
        if len(self.bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4D bottom, got shape {self.bottom_shapes[0]}")
        self.module = self.build(LRNModule, lp.local_size, lp.alpha, lp.beta, lp.k,
                                 REGIONS[lp.norm_region])

    def top_shapes(self):
        return [self.bottom_shapes[0]]
