"""convert-svhn: SVHN's cropped-digit .mat files (train_32x32.mat, test_32x32.mat, extra_32x32.mat)
into LMDBs of raw Datum records, keys '%05d'; label 10 (the digit 0) becomes 0."""
from __future__ import annotations

import pathlib

import numpy as np

from ..errors import RapaError
from .datum import encode_raw
from .lmdb_writer import LmdbWriter, check_output
from .matfile import load_mat


def read_svhn(path) -> tuple[np.ndarray, np.ndarray]:
    mat = load_mat(path)
    if "X" not in mat or "y" not in mat:
        raise RapaError(f"{path}: expected variables X and y, found {sorted(mat)}")
    x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise RapaError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, {len(y)})")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, np.where(y == 10, 0, y)


def convert_svhn(mat_files: list[str], out_dir: str, overwrite=False, say=print):
    out = pathlib.Path(out_dir)
    for f in mat_files:  # before reading: the files are large
        check_output(out / f"svhn_{pathlib.Path(f).name.split('_')[0]}_lmdb", overwrite)
    written = {}
    for f in mat_files:
        name = pathlib.Path(f).name.split("_")[0]  # train, test, extra
        images, labels = read_svhn(f)
        db = out / f"svhn_{name}_lmdb"
        with LmdbWriter(db, overwrite=overwrite) as w:
            for i in range(len(labels)):
                w.put(b"%05d" % i, encode_raw(images[i], labels[i]))
        say(f"wrote {len(labels)} records to {db}")
        written[name] = db
    return written
