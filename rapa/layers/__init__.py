"""Caffe layer types, one file each, registered by their prototxt type: thin adapters over the
rapa.nn modules behind the layer contract of base.py."""
from .base import LAYER_TYPES, ArrayWork, DataLayer, Layer, Learnable, make_layer
from . import (accuracy, convolution, data, dropout, inner_product, input, lrn,  # noqa: F401
               pooling, relu, softmax, softmax_loss)

__all__ = ["LAYER_TYPES", "ArrayWork", "DataLayer", "Layer", "Learnable", "make_layer"]
