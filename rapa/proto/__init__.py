"""rapa's protobuf schema (rapa.proto): Caffe's messages and field numbers plus RAPA's fields."""
from . import rapa_pb2 as pb

__all__ = ["pb"]
