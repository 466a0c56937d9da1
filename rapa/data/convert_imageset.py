"""convert-imageset: image files into an LMDB, as Caffe's convert_imageset.

The images are listed in a file of "relative/path label" lines (paths relative to ROOT), or,
without a list, taken from ROOT's class folders (labels = sorted folder names). Keys are
'%08d_<path>'. Records are raw (decoded, optionally resized) or, with encoded, the files as
they are.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ..errors import RapaError
from ..progress import Progress
from .datum import RecordError, decode_image_file, encode_file, encode_raw
from .image_folder import IMAGE_SUFFIXES, _sort_classes
from .lmdb_writer import LmdbWriter, check_output


def read_list(list_file: pathlib.Path) -> list[tuple[str, int]]:
    items = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        path, _, label = line.rstrip().rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            raise RapaError(f"{list_file}:{n}: expected 'path label', got {line!r}") from None
        if not -2**31 <= value < 2**31:  # Datum.label is an int32
            raise RapaError(f"{list_file}:{n}: label {value} is outside int32")
        items.append((path, value))
    return items


def convert_imageset(root, db, list_file=None, shuffle=False, gray=False, resize_height=0,
                     resize_width=0, encoded=False, overwrite=False, seed=0, progress=None,
                     say=print) -> int:
    root = pathlib.Path(root)
    if not root.is_dir():
        raise RapaError(f"{root}: no such folder")
    if bool(resize_height) != bool(resize_width):
        raise RapaError("give both --resize-height and --resize-width (Caffe resizes only when "
                        "both are given)")
    if (1 if gray else 3) * resize_height * resize_width >= 2**31:
        raise RapaError(f"--resize-height {resize_height} --resize-width {resize_width}: a "
                        f"record holds at most 2^31 - 1 bytes (protobuf's limit)")
    check_output(db, overwrite)
    if list_file:
        items = read_list(pathlib.Path(list_file))
    else:
        classes = _sort_classes(p.name for p in root.iterdir() if p.is_dir())
        items = [(str(f.relative_to(root)), i) for i, c in enumerate(classes)
                 for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise RapaError(f"{root}: no images found")
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    if encoded and (gray or resize_height or resize_width):
        raise RapaError("--encoded keeps files as they are: it cannot be combined with --gray "
                        "or a resize")
    shape = None
    bar = Progress(len(items), f"convert-imageset -> {db}", enabled=progress)
    with LmdbWriter(db, overwrite=overwrite) as w:
        for i, (rel, label) in enumerate(items):
            path = root / rel
            try:
                data = path.read_bytes()
            except OSError as e:
                raise RapaError(f"{path}: cannot read ({e})") from None
            try:
                image = decode_image_file(data, force_color=not gray, force_gray=gray)
            except RecordError as e:
                raise RapaError(f"{path}: {e}") from None
            if resize_height and resize_width:
                from PIL import Image
                img = Image.fromarray(image[0] if gray else image.transpose(1, 2, 0))
                img = img.resize((resize_width, resize_height), Image.BILINEAR)
                image = np.asarray(img)[None] if gray else np.asarray(img).transpose(2, 0, 1)
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise RapaError(f"{path}: size {image.shape[1:]} differs from the first image's "
                                f"{shape[1:]}; give --resize-height and --resize-width")
            value = encode_file(data, label) if encoded else encode_raw(image, label)
            w.put(b"%08d_%s" % (i, rel.encode()), value)
            bar.update(i + 1)
    bar.close()
    say(f"wrote {len(items)} records to {db}")
    return len(items)
