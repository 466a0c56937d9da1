"""Data: batches of (image, label) from an LMDB of Caffe Datum records.

The database path and the mean file are taken relative to the working directory, as Caffe
does, or else relative to the folder of the prototxt. Background threads (data_param.threads)
or worker processes (data_param.processes) read, decode and transform batches ahead of the net
(rapa.data.prefetch).
"""
from __future__ import annotations

import numpy as np

from ..proto import pb
from ..data.lmdb_source import LmdbSource
from ..data.prefetch import Prefetcher
from ..data.transform import Transformer
from .base import DataLayer, register


def read_mean(path) -> np.ndarray:
    """A Caffe mean file as float32 (C, H, W): a BlobProto in any form Caffe reads (rapa.blobs),
    of 3 or 4 axes, the last three (channels, height, width); of several stacked means
    (num > 1) the first, which is the one Caffe's DataTransformer subtracts."""
    from ..blobs import blob_to_tensor
    from ..errors import RapaError
    from ..prototxt import read_binary
    blob = read_binary(path, pb.BlobProto())
    try:
        mean = blob_to_tensor(blob)
    except ValueError as e:
        raise RapaError(f"mean file {path}: {e}") from None
    if mean.dim() not in (3, 4) or mean.numel() == 0:
        raise RapaError(f"mean file {path}: shape {tuple(mean.shape)} is not (num, channels, "
                        f"height, width) or (channels, height, width)")
    return mean.reshape(-1, *mean.shape[-3:])[0].numpy().astype(np.float32)


@register("Data")
class Data(DataLayer):
    tops = (1, 2)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        dp, tp = param.data_param, param.transform_param
        if dp.HasField("backend") and dp.backend != pb.DataParameter.LMDB:
            raise self.error("only LMDB databases are supported (backend: LMDB)")
        if not dp.source:
            raise self.error("data_param.source (the LMDB path) is missing")
        if not dp.batch_size:
            raise self.error("data_param.batch_size must be > 0")
        if not 1 <= dp.threads <= 64:
            raise self.error(f"data_param.threads must be in [1, 64], got {dp.threads}")
        if dp.processes > 64:
            raise self.error(f"data_param.processes must be in [0, 64], got {dp.processes}")
        if dp.processes and dp.threads > 1:
            raise self.error("give either data_param.threads or data_param.processes, not both")
        # Caffe's deprecated DataParameter fields still count.
        tp = pb.TransformationParameter.FromString(tp.SerializeToString())
        if dp.HasField("scale") and not tp.HasField("scale"):
            tp.scale = dp.scale
        if dp.mean_file and not tp.mean_file:
            tp.mean_file = dp.mean_file
        if dp.crop_size and not tp.crop_size:
            tp.crop_size = dp.crop_size
        if dp.mirror:
            tp.mirror = True
        if tp.force_color and tp.force_gray:  # as Caffe's DataTransformer refuses
            raise self.error("transform_param: force_color and force_gray cannot both be set")
        resolve = context.resolve if context is not None else (lambda p, what: p)
        source = LmdbSource(resolve(dp.source, f"layer '{self.layer_name}' data_param.source"),
                            force_color=tp.force_color or dp.force_encoded_color,
                            force_gray=tp.force_gray)
        mean = read_mean(resolve(tp.mean_file, f"layer '{self.layer_name}' mean_file")) \
            if tp.mean_file else None
        train = phase == pb.TRAIN
        self.transformer = Transformer(tp, source.shape, train, mean,
                                       f"layer '{self.layer_name}' transform_param")
        seed = (context.seed if context is not None else 0) + self.seed_offset
        self.prefetcher = Prefetcher(source, self.transformer, dp.batch_size,
                                     seed=seed, depth=dp.prefetch,
                                     skip=dp.rand_skip, threads=dp.threads,
                                     processes=dp.processes)
        self.source = source
        self.batch_size = dp.batch_size

    @property
    def records(self):
        return len(self.source)

    def input_normalization(self):
        return self.transformer.test_normalization()

    def top_shapes(self):
        shapes = [(self.batch_size, *self.transformer.out_shape)]
        return shapes + [(self.batch_size,)] * (len(self.param.top) - 1)
