"""torch.nn modules: the computation of every layer a net builds, usable from plain PyTorch.

A prototxt layer (rapa.layers) parses its Caffe parameters, builds one of these (or a torch.nn
module where torch's is Caffe's), fills its blobs with Caffe's fillers, and forwards through it.
Each module knows its output shape from its input shape without running (`output_shape`).
"""
from .conv import TiledConv2d
from .linear import Linear
from .loss import Accuracy, SoftmaxWithLoss, vote
from .lrn import LRN
from .pooling import Pool2d

__all__ = ["TiledConv2d", "Linear", "Pool2d", "LRN", "SoftmaxWithLoss", "Accuracy", "vote"]
