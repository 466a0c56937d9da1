"""The files of a tar archive (plain or compressed), read once in order; a damaged archive
(cut short by a partial copy, corrupt) is a one-line error naming it."""
from __future__ import annotations

import pathlib
import tarfile
import zlib
from typing import Iterator

from ..errors import RapaError


def tar_files(source: pathlib.Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular file in the archive `source`."""
    try:
        with tarfile.open(source) as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, tar.extractfile(member).read()
    except (EOFError, tarfile.TarError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and e.filename is not None:
            raise  # the path itself (unreadable): the caller's usual message
        raise RapaError(f"{source}: the archive is damaged ({e or type(e).__name__}); copy or "
                        f"download it again") from None
