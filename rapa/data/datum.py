"""Caffe Datum records <-> numpy images (uint8, channels x height x width)."""
from __future__ import annotations

import io

import numpy as np

from ..proto import pb


class RecordError(ValueError):
    """A record that cannot be read; the caller adds the database path and key."""


def encode_raw(image: np.ndarray, label: int) -> bytes:
    """A raw Datum of a uint8 image (C, H, W)."""
    c, h, w = image.shape
    return pb.Datum(channels=c, height=h, width=w, data=np.ascontiguousarray(image, np.uint8)
                    .tobytes(), label=int(label)).SerializeToString()


def encode_file(data: bytes, label: int) -> bytes:
    """An encoded Datum holding an image file (JPEG, PNG) as it is."""
    return pb.Datum(data=data, label=int(label), encoded=True).SerializeToString()


def decode_image_file(data: bytes, force_color: bool = False, force_gray: bool = False):
    """Decode JPEG/PNG bytes to uint8 (C, H, W), colour in RGB order (our converters write RGB
    too, so raw and encoded records of one image agree)."""
    from PIL import Image  # only encoded records need it
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for a bad file
        raise RecordError(f"cannot decode the encoded image ({e})") from None
    if force_gray:
        img = img.convert("L")
    elif force_color or img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode(value: bytes, force_color: bool = False, force_gray: bool = False):
    """(image uint8 (C, H, W), label) of one serialized Datum."""
    d = pb.Datum()
    try:
        d.ParseFromString(value)
    except Exception as e:
        raise RecordError(f"not a Datum record ({e})") from None
    if d.encoded:
        return decode_image_file(d.data, force_color, force_gray), d.label
    if d.float_data:
        raise RecordError("float_data records are not supported (only uint8 data)")
    if len(d.data) != d.channels * d.height * d.width or not d.data:
        raise RecordError(f"holds {len(d.data)} bytes, but {d.channels}x{d.height}x{d.width} "
                          f"= {d.channels * d.height * d.width} were declared")
    image = np.frombuffer(d.data, dtype=np.uint8).reshape(d.channels, d.height, d.width)
    return image, d.label
