"""Files that are either complete or absent: a crash (even kill -9) mid-write leaves the old
file, or no file, never a truncated one."""
from __future__ import annotations

import hashlib
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
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota: no partial temporary left behind
        tmp.unlink(missing_ok=True)
        raise RapaError(f"{path}: cannot write it ({e.strerror or e}); the previous version, "
                        f"if any, is unchanged") from None
    # The rename itself must reach the disk before the file counts as written.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(prefix: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the temporaries atomic_write_bytes left for files named `prefix`* by a process
    killed mid-write (kill -9, power loss); returns them. Only those of dead processes: a
    live one (another run, refused elsewhere) may still be writing its own."""
    prefix = pathlib.Path(prefix)
    folder = prefix.parent if str(prefix.parent) else pathlib.Path(".")
    removed = []
    for tmp in folder.glob(f".{prefix.name}*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_of(path: str | os.PathLike) -> bytes:
    """The SHA-256 digest of a file's bytes."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).digest()


def hold_lock(path: str | os.PathLike, what: str):
    """An open lock file, exclusively locked (released when closed or when the process
    ends, even by kill -9); RapaError naming `what` and the holder's pid when another process
    holds it. Two runs with one snapshot prefix would otherwise mix their snapshots."""
    import fcntl
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RapaError(f"{what}: another run is using it (pid {holder}; lock {path})") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
