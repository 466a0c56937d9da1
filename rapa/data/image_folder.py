"""Images in class folders (root/<class>/<file>), from a folder or a .tar/.tar.gz of one.

Labels are the class folders in sorted order (numeric names in numeric order), which for
CIFAR-10 and CIFAR-100 is the official label order.
"""
from __future__ import annotations

import pathlib
import tarfile
from typing import Iterator

import numpy as np

from ..errors import RapaError
from .archive import tar_files
from .datum import RecordError, decode_image_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}


def _sort_classes(names):
    names = sorted(set(names))
    if names and all(n.isdigit() for n in names):
        names = sorted(names, key=int)
    return names


def iter_files(source: str | pathlib.Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, file bytes) of every image file in a folder or tar archive."""
    source = pathlib.Path(source)
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                yield str(p.relative_to(source)), p.read_bytes()
    elif source.is_file() and tarfile.is_tarfile(source):
        for name, data in tar_files(source):
            if pathlib.PurePath(name).suffix.lower() in IMAGE_SUFFIXES:
                yield name, data
    elif not source.exists():
        raise RapaError(f"{source}: no such file or folder")
    else:
        raise RapaError(f"{source}: neither a folder nor a tar archive of class folders")


def read_split_folders(sources, splits=("train", "test")):
    """{split: (images (N,C,H,W) uint8, labels (N,))} from class folders under split folders
    (e.g. train/cat/0001.jpg) in any of the sources, plus the class names."""
    files: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in splits}
    for src in sources:
        for rel, data in iter_files(src):
            parts = pathlib.PurePath(rel).parts
            split = next((p for p in parts[:-2] if p in splits), None)
            if split is None or len(parts) < 2:
                continue
            files[split].append((parts[-2], rel, data))
    classes = _sort_classes(c for f in files.values() for c, _, _ in f)
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in files.items():
        if not items:
            continue
        items.sort(key=lambda x: x[1])
        images, labels = [], []
        for cls, rel, data in items:
            try:
                images.append(decode_image_file(data, force_color=True))
            except RecordError as e:
                raise RapaError(f"{rel}: {e}") from None
            labels.append(index[cls])
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise RapaError(f"the {split} images have different sizes: {sorted(shapes)[:4]}")
        out[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return out, classes
