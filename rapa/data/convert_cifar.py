"""convert-cifar: CIFAR-10 / CIFAR-100 into LMDBs of raw Datum records, keys '%05d' (as
Caffe's convert_cifar_data), plus the training set's mean (mean.binaryproto).

Sources: the official archives in python format (cifar-10-python.tar.gz, cifar-100-python.tar.gz)
or binary format (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), packed or unpacked; or
images in class folders under train/ and test/ folders, in folders or .tar(.gz) archives
(e.g. a JPEG copy). Official data keep their order (already shuffled); class-folder images are
shuffled with a fixed seed, since the data layer reads records in order.
"""
from __future__ import annotations

import pathlib
import pickle
import tarfile

import numpy as np

from ..errors import RapaError
from ..progress import Progress
from .archive import tar_files
from .compute_mean import compute_mean
from .datum import encode_raw
from .image_folder import read_split_folders
from .lmdb_writer import LmdbWriter, check_output

CIFAR_MEMBERS = {
    ("cifar10", "python"): {"train": [f"data_batch_{i}" for i in range(1, 6)],
                            "test": ["test_batch"]},
    ("cifar10", "binary"): {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                            "test": ["test_batch.bin"]},
    ("cifar100", "python"): {"train": ["train"], "test": ["test"]},
    ("cifar100", "binary"): {"train": ["train.bin"], "test": ["test.bin"]},
}


def _members(source: pathlib.Path) -> dict[str, bytes]:
    """basename -> bytes of the files of an official archive or its unpacked folder."""
    out = {}
    if source.is_dir():
        for p in source.rglob("*"):
            if p.is_file() and p.stat().st_size > 1000:
                out[p.name] = p
    elif source.is_file() and tarfile.is_tarfile(source):
        for name, data in tar_files(source):
            base = name.rsplit("/", 1)[-1]
            if len(data) > 1000 and not base.startswith("."):
                out[base] = data
    return out


def _parse_python(data: bytes, label_key: str, name: str):
    try:
        d = pickle.loads(data, encoding="bytes")
        images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[label_key.encode()], dtype=np.int64)
    except Exception as e:
        raise RapaError(f"{name}: not a CIFAR python batch ({e})") from None
    return images, labels


def _parse_binary(data: bytes, label_bytes: int, label_index: int, name: str):
    rec = label_bytes + 3072
    if len(data) % rec:
        raise RapaError(f"{name}: {len(data)} bytes is not a whole number of {rec}-byte records")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, rec)
    return arr[:, label_bytes:].reshape(-1, 3, 32, 32), arr[:, label_index].astype(np.int64)


def read_official(source: pathlib.Path, dataset: str, label: str):
    members = _members(source)
    for fmt in ("python", "binary"):
        names = CIFAR_MEMBERS[(dataset, fmt)]
        if all(n in members for split in names.values() for n in split):
            break
    else:
        return None
    out = {}
    for split, files in names.items():
        parts = []
        for n in files:
            data = members[n]
            data = data.read_bytes() if isinstance(data, pathlib.Path) else data
            if fmt == "python":
                key = "labels" if dataset == "cifar10" else f"{label}_labels"
                parts.append(_parse_python(data, key, n))
            elif dataset == "cifar10":
                parts.append(_parse_binary(data, 1, 0, n))
            else:
                parts.append(_parse_binary(data, 2, 0 if label == "coarse" else 1, n))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def convert_cifar(sources: list[str], out_dir: str, dataset: str = "cifar10",
                  label: str = "fine", overwrite: bool = False, seed: int = 0,
                  progress=None, say=print) -> dict[str, pathlib.Path]:
    if dataset not in ("cifar10", "cifar100"):
        raise RapaError(f"--dataset must be cifar10 or cifar100, got {dataset!r}")
    paths = [pathlib.Path(s) for s in sources]
    for p in paths:
        if not p.exists():
            raise RapaError(f"{p}: no such file or folder")
    out = pathlib.Path(out_dir)
    for split in ("train", "test"):  # before reading: archives take a while
        check_output(out / f"{dataset}_{split}_lmdb", overwrite)
    splits = read_official(paths[0], dataset, label) if len(paths) == 1 else None
    if splits is None:
        splits, classes = read_split_folders(paths)
        if not splits:
            raise RapaError(f"{', '.join(map(str, paths))}: found neither the official "
                            f"{dataset} batches nor train/ and test/ class folders of images")
        rng = np.random.default_rng(seed)
        for split, (images, labels) in splits.items():
            order = rng.permutation(len(labels))
            splits[split] = (images[order], labels[order])
        want = {"cifar10": 10, "cifar100": 100}[dataset]
        if len(classes) > want:  # labels the nets' classifier would refuse
            raise RapaError(f"{', '.join(map(str, paths))}: {len(classes)} class folders, but "
                            f"--dataset {dataset} has {want} classes")
        if len(classes) < want:
            say(f"note: {len(classes)} class folders, fewer than {dataset}'s {want}: the "
                f"labels are 0 to {len(classes) - 1}")
        if label != "fine":
            raise RapaError(f"--label {label}: class folders name one label per image (their "
                            f"folder); the coarse labels come with the official CIFAR-100 "
                            f"archives")
        say(f"read {', '.join(f'{len(v[1])} {k}' for k, v in splits.items())} images in "
            f"{len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
            f"; shuffled with seed {seed}")
    written = {}
    for split, (images, labels) in splits.items():
        db = out / f"{dataset}_{split}_lmdb"
        bar = Progress(len(labels), f"{split} -> {db}", enabled=progress)
        with LmdbWriter(db, overwrite=overwrite) as w:
            for i in range(len(labels)):
                w.put(b"%05d" % i, encode_raw(images[i], labels[i]))
                if i % 1000 == 999:
                    bar.update(i + 1)
        bar.close()
        say(f"wrote {len(labels)} records to {db}")
        written[split] = db
    if "train" in written:
        mean_path = out / "mean.binaryproto"
        compute_mean(written["train"], mean_path, progress=False)
        say(f"wrote the training set's mean to {mean_path}")
        written["mean"] = mean_path
    else:
        say(f"no training set among the sources: no mean file (the nets' mean_file is the "
            f"training set's; compute-mean DB OUT writes one)")
    return written
