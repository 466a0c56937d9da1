"""Caffe's BlobProto <-> tensors, in every form Caffe reads (Blob::FromProto): the shape given
as `shape { dim }` or by the legacy num, channels, height, width; the values in `data` (float)
or `double_data` (double, preferred when present, as Caffe does)."""
from __future__ import annotations

import numpy as np
import torch

from .proto import pb


def tensor_to_blob(t: torch.Tensor) -> pb.BlobProto:
    """A tensor as a BlobProto with `shape`; float64 in double_data, others as float data."""
    blob = pb.BlobProto()
    blob.shape.dim.extend(t.shape)
    t = t.detach().cpu()
    if t.dtype == torch.float64:
        blob.double_data.extend(t.reshape(-1).tolist())
    else:
        blob.data.extend(t.float().reshape(-1).numpy().tolist())
    return blob


def blob_shape(blob: pb.BlobProto) -> tuple[int, ...]:
    """The blob's shape: `shape` if set, else the legacy (num, channels, height, width)."""
    if blob.HasField("shape"):
        return tuple(blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)


def blob_to_tensor(blob: pb.BlobProto) -> torch.Tensor:
    """The blob's values in its shape (float64 from double_data, else float32). Raises
    ValueError when the count of values is not the shape's."""
    shape = blob_shape(blob)
    double = len(blob.double_data) > 0
    data = np.asarray(blob.double_data if double else blob.data,
                      dtype=np.float64 if double else np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"a blob of shape {shape} holds {data.size} values")
    return torch.from_numpy(data.reshape(shape))
