"""torch.nn modules: the computation of every layer a net builds, usable from plain PyTorch.

A prototxt layer (rapa.layers) parses its Caffe parameters, builds one of these (or a torch.nn
module where torch's is Caffe's), fills its blobs with Caffe's fillers, and forwards through it.
Each module knows its output shape from its input shape without running (`output_shape`).
"""
from .batch_norm import BatchNorm
from .concat import Concat
from .conv import TiledConv2d
from .eltwise import Eltwise
from .linear import Linear
from .loss import Accuracy, SoftmaxWithLoss, vote
from .lrn import LRN
from .pooling import Pool2d
from .scale import Scale

__all__ = ["TiledConv2d", "Linear", "Pool2d", "LRN", "BatchNorm", "Scale", "Eltwise", "Concat",
           "SoftmaxWithLoss", "Accuracy", "vote"]
