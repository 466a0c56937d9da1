"""compute-mean: the mean image of an LMDB as a Caffe BlobProto (1, C, H, W), like Caffe's
compute_image_mean."""
from __future__ import annotations

import numpy as np

from ..progress import Progress
from ..proto import pb
from ..prototxt import write_binary
from .lmdb_source import LmdbSource


def compute_mean(db_path, out_path=None, progress=None) -> np.ndarray:
    source = LmdbSource(db_path)
    total = np.zeros(source.shape, dtype=np.float64)
    chunk = 1000
    bar = Progress(len(source), "compute-mean", enabled=progress)
    for start in range(0, len(source), chunk):
        count = min(chunk, len(source) - start)
        images, _ = source.read_many(start, count)
        total += images.sum(0, dtype=np.float64)
        bar.update(start + count)
    bar.close()
    mean = (total / len(source)).astype(np.float32)
    if out_path is not None:
        blob = pb.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                            width=mean.shape[2])
        blob.shape.dim.extend((1, *mean.shape))
        blob.data.extend(mean.reshape(-1).tolist())
        write_binary(out_path, blob)
    return mean
