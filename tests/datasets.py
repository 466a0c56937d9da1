"""Small data sets that the tests make themselves: LMDBs of random images, CIFAR archives."""
from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import numpy as np

from rapa.data.datum import encode_file, encode_raw
from rapa.data.lmdb_writer import LmdbWriter


def random_images(n, c=3, h=32, w=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    # Class-dependent brightness so that a net can learn something in a few iterations.
    base = (labels[:, None, None, None] * (200 // classes)).astype(np.int64)
    images = np.clip(base + rng.integers(0, 56, (n, c, h, w)), 0, 255).astype(np.uint8)
    return images, labels


def write_lmdb(path, images, labels, encoded=False):
    from PIL import Image
    with LmdbWriter(path, overwrite=True) as w:
        for i, (im, lab) in enumerate(zip(images, labels)):
            if encoded:
                buf = io.BytesIO()
                Image.fromarray(im.transpose(1, 2, 0)).save(buf, format="PNG")
                w.put(b"%05d" % i, encode_file(buf.getvalue(), lab))
            else:
                w.put(b"%05d" % i, encode_raw(im, lab))
    return pathlib.Path(path)


def cifar_tree(root: pathlib.Path, n_train=60, n_test=40, classes=10, seed=0):
    """data/<name>/{<name>_train_lmdb, <name>_test_lmdb, mean.binaryproto} as the nets expect."""
    from rapa.data.compute_mean import compute_mean
    for name, cls in (("cifar10", 10), ("cifar100", 100), ("svhn", 10)):
        folder = root / "data" / name
        tr = write_lmdb(folder / f"{name}_train_lmdb", *random_images(n_train, classes=cls,
                                                                        seed=seed))
        write_lmdb(folder / f"{name}_test_lmdb", *random_images(n_test, classes=cls,
                                                                seed=seed + 1))
        compute_mean(tr, folder / "mean.binaryproto", progress=False)
    return root


def cifar_python_archive(path, train_per_batch=20, test=20, cifar100=False, seed=0):
    rng = np.random.default_rng(seed)
    top = "cifar-100-python" if cifar100 else "cifar-10-batches-py"
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + \
        ["test_batch"]
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            n = test if "test" in name else train_per_batch
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            if cifar100:
                d = {b"data": data, b"fine_labels": list(rng.integers(0, 100, n)),
                     b"coarse_labels": list(rng.integers(0, 20, n))}
            else:
                d = {b"data": data, b"labels": list(rng.integers(0, 10, n))}
            blob = pickle.dumps(d)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[name] = d
    return expected


def cifar_binary_archive(path, per_batch=20, seed=0):
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            rec = rng.integers(0, 256, (per_batch, 3073), dtype=np.uint8)
            rec[:, 0] %= 10
            blob = rec.tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[name] = rec
    return expected
