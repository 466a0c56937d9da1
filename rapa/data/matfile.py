"""A minimal reader of MATLAB level-5 .mat files: the numeric arrays, by variable name.

Enough for SVHN's train_32x32.mat and test_32x32.mat (an X uint8 array and a y label array,
possibly zlib-compressed). MATLAB 7.3 files (HDF5) are not read.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from ..errors import RapaError

_TYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32,
          7: np.float32, 9: np.float64, 12: np.int64, 13: np.uint64}
MI_MATRIX, MI_COMPRESSED = 14, 15


def _elements(buf: bytes, endian: str, where: str):
    pos = 0
    while pos + 8 <= len(buf):
        kind, size = struct.unpack_from(endian + "II", buf, pos)
        if kind >> 16:  # small data element: size and type packed in 4 bytes
            size, kind = kind >> 16, kind & 0xFFFF
            yield kind, buf[pos + 4:pos + 4 + size]
            pos += 8
            continue
        data = buf[pos + 8:pos + 8 + size]
        if len(data) < size:
            raise RapaError(f"{where}: the file is truncated")
        yield kind, data
        pos += 8 + size + ((-size) % 8 if kind != MI_COMPRESSED else 0)


def _matrix(data: bytes, endian: str, where: str):
    parts = list(_elements(data, endian, where))
    if len(parts) < 4:
        return None, None
    dims = np.frombuffer(parts[1][1], dtype=endian + "i4")
    name = parts[2][1].decode("latin1")
    kind, raw = parts[3]
    if kind not in _TYPES:
        return name, None
    arr = np.frombuffer(raw, dtype=np.dtype(_TYPES[kind]).newbyteorder(endian))
    return name, arr.reshape(tuple(dims), order="F")


def load_mat(path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        buf = f.read()
    where = str(path)
    if len(buf) < 128:
        raise RapaError(f"{where}: not a .mat file")
    if buf[:19] == b"MATLAB 7.3 MAT-file" or buf[:4] == b"\x89HDF":
        raise RapaError(f"{where}: a MATLAB 7.3 (HDF5) file; save it as -v7 or older")
    endian = "<" if buf[126:128] == b"IM" else ">"
    out = {}
    for kind, data in _elements(buf[128:], endian, where):
        if kind == MI_COMPRESSED:
            data = zlib.decompress(data)
            kind, size = struct.unpack_from(endian + "II", data, 0)
            data = data[8:8 + size]
        if kind == MI_MATRIX:
            name, arr = _matrix(data, endian, where)
            if arr is not None:
                out[name] = arr
    return out
