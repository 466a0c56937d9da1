"""BatchNorm: Caffe's batch normalization as one rapa.nn.BatchNorm (no affine part: a Scale
layer follows). Its three blobs, the accumulated mean, variance and moving-average factor, are
not learned: Caffe gives them lr_mult 0 and refuses any other rate; rapa saves them as the
layer's state blobs, in Caffe's order, so that Caffe's .caffemodel files load."""
from __future__ import annotations

from ..nn import BatchNorm as BatchNormModule
from ..proto import pb
from .base import Layer, register


@register("BatchNorm")
class BatchNorm(Layer):
    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        bp = param.batch_norm_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with a channel axis (N, C, ...), got shape {shape}")
        if len(param.param) > 3:
            raise self.error(f"has {len(param.param)} param {{ }} entries; its 3 blobs take at "
                             f"most 3, each with lr_mult 0")
        if any(spec.lr_mult != 0 for spec in param.param):
            raise self.error("cannot configure batch normalization statistics as layer "
                             "parameters: every param { } needs lr_mult: 0 (Caffe)")
        use_global = bp.use_global_stats if bp.HasField("use_global_stats") \
            else phase == pb.TEST
        self.module = self.build(BatchNormModule, shape[1], bp.eps, bp.moving_average_fraction,
                                 use_global)
        self.affine = None  # a Scale after it, applied in its pass (absorb_affine)

    def top_shapes(self):
        return [self.bottom_shapes[0]]

    def absorb_affine(self, affine):
        self.affine = affine
        return True

    def forward(self, x):
        if self.affine is None:
            return (self.module(x),)
        return (self.module(x, *self.affine()),)

    def param_specs(self):
        return []  # the statistics are state blobs, never updated by the solver

    def state_blobs(self):
        m = self.module
        return [m.mean_sum, m.var_sum, m.factor]

    def running_blobs(self):
        return self.state_blobs()  # the moving averages, updated by every training pass
