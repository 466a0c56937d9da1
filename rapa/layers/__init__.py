"""Caffe layer types, one file each, registered by their prototxt type: thin adapters over the
rapa.nn modules behind the layer contract of base.py."""
from .base import LAYER_TYPES, ArrayWork, DataLayer, Layer, Learnable, make_layer
from . import (accuracy, batch_norm, concat, convolution, data, dropout,  # noqa: F401
               eltwise, flatten, inner_product, input, lrn, pooling, relu, scale, softmax,
               softmax_loss)

__all__ = ["LAYER_TYPES", "ArrayWork", "DataLayer", "Layer", "Learnable", "make_layer"]
