"""Caffe layer types as torch.nn.Modules, one file each, registered by their prototxt type."""
from .base import LAYER_TYPES, Layer, make_layer
from . import (accuracy, convolution, data, dropout, inner_product, input, lrn,  # noqa: F401
               pooling, relu, softmax, softmax_loss)

__all__ = ["LAYER_TYPES", "Layer", "make_layer"]
