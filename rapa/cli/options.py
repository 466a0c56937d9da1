"""Argument types of the rapa command: numbers checked against what they can hold and output
paths checked before the work, so that a wrong option is a one-line usage error at once (not a
traceback, or an error after an hour of computing)."""
from __future__ import annotations

import argparse
import math
import os
import pathlib

import numpy as np

from ..errors import RapaError

# What matplotlib writes (Figure.savefig); a name without a suffix is written as PNG.
FIGURE_SUFFIXES = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg",
                   "svgz", "tif", "tiff", "webp")
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


def count(low: int = 1, high: int = INT32_MAX):
    """An integer in [low, high] (iterations, votes, images: Caffe's int32 fields)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value
    parse.__name__ = "integer"
    return parse


# A seed torch.manual_seed takes (a 64-bit generator state; negative ones are refused here).
seed = count(0, 2**63 - 1)


def finite(low: float | None = None):
    """A float that stays finite in float32 (the nets' precision), >= low if given."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise argparse.ArgumentTypeError(f"{text} is not a finite float32 number")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{text} must be >= {low:g}")
        return value
    parse.__name__ = "number"
    return parse


# Units of --drift-time: a month of 30 days, a year of 365 (aihwkit's examples' year).
TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "mo": 30 * 86400.0,
              "y": 365 * 86400.0}


MAX_TIME = 1e15  # seconds


def times(text: str) -> list[float]:
    """Comma-separated times after programming, in seconds or with a unit (1h, 30d, 1y):
    finite and >= 0, each once."""
    out: list[float] = []
    for item in text.split(","):
        item = item.strip()
        number = item.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = item[len(number):] or "s"
        try:
            value = float(number) * TIME_UNITS[unit]
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(
                f"'{item}' is not a time (a number of seconds, or with a unit: "
                f"{', '.join(TIME_UNITS)})") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"'{item}' must be finite and >= 0")
        if value > MAX_TIME:  # the drift model counts microseconds in an integer
            raise argparse.ArgumentTypeError(f"'{item}' is more than {MAX_TIME:g} s (about "
                                             f"{MAX_TIME / TIME_UNITS['y']:.3g} years)")
        if any(math.isclose(value, o, rel_tol=1e-12) for o in out):  # 1.1h is 3960 s
            raise argparse.ArgumentTypeError(f"'{item}' repeats a time given before it")
        out.append(value + 0.0)  # -0 is 0
    return out


times.__name__ = "times"


def output_path(text: str) -> str:
    """A file to write: its folder must exist (checked before the work, not after)."""
    folder = pathlib.Path(text).parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text}: {folder} {why}")
    if pathlib.Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder")
    return text


def word(text: str) -> str:
    """A string argument that names no file (a device, a layer, a key of a log, a method):
    outputs_apart never compares it with an output, even where a file of that name exists."""
    return text


def figure_path(text: str) -> str:
    """An image file matplotlib can write (by its suffix; none: PNG), in an existing folder."""
    suffix = pathlib.Path(text).suffix.lstrip(".").lower()
    if suffix and suffix not in FIGURE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot draw '.{suffix}' files; use one of "
            f"{', '.join('.' + s for s in FIGURE_SUFFIXES)}")
    return output_path(text)


def figure_written(path: str) -> str:
    """The file matplotlib writes for `path`: a name without a suffix gets .png, one that ends
    in "." gets png."""
    suffix = os.path.splitext(path)[1]
    return path if suffix not in ("", ".") else path + ("png" if suffix else ".png")


def _same_file(a: str, b: str) -> bool:
    """Whether writing `a` would overwrite `b`: the same file, or a file inside folder `b`
    (compute-mean's output inside its database)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet): the same path, links resolved
        if os.path.realpath(a) == os.path.realpath(b):
            return True
    return os.path.isdir(b) and os.path.realpath(a).startswith(os.path.realpath(b) + os.sep)


def outputs_apart(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raises RapaError where a file a command writes (an argument of type output_path or
    figure_path) is one it reads or writes under another argument: `rapa reduce --out-weights`
    naming its --weights would replace the trained weights. Arguments of type `word` name no
    file."""
    named = {}  # dest -> (how the user wrote it, its paths, written by the command)
    for action in parser._actions:
        value = getattr(args, action.dest, None)  # (-h's is None: not in args)
        if value is None or action.type is word:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            continue
        written = action.type in (output_path, figure_path)
        if action.type is figure_path:
            values = [figure_written(v) for v in values]
        name = action.option_strings[0] if action.option_strings else (
            action.metavar or action.dest.upper())
        named[action.dest] = (name, values, written)
    for dest, (name, values, written) in named.items():
        for other, (other_name, others, also_written) in named.items():
            if not written or other == dest:
                continue
            for value in values:
                hit = next((o for o in others if (also_written or os.path.exists(o))
                            and _same_file(value, o)), None)
                if hit is not None:
                    raise RapaError(f"{name} {value} would overwrite {other_name} ({hit}); "
                                    f"name another file")
