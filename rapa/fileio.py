"""Files that are either complete or absent: a crash (even kill -9) mid-write leaves the old
file, or no file, never a truncated one."""
from __future__ import annotations

import os
import pathlib

from .errors import RapaError


def make_folder(path: str | os.PathLike, what: str) -> None:
    """Create `path` and its parents; `what` names the setting that asked for it in errors."""
    try:
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise RapaError(f"{what}: {e.filename} is a file, where a folder is needed") from None
    except OSError as e:
        raise RapaError(f"{what}: cannot create the folder {path} ({e.strerror})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself must reach the disk before the file counts as written.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
