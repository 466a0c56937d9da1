"""Writing an LMDB of Datum records; the database appears under its name only when complete."""
from __future__ import annotations

import os
import pathlib
import shutil

from ..errors import RapaError


class LmdbWriter:
    """with LmdbWriter(path) as w: w.put(key, value) ... ; written to path.tmp, then renamed."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, batch: int = 2000):
        self.path = pathlib.Path(path)
        if self.path.exists() and not overwrite:
            raise RapaError(f"{self.path} already exists; remove it or pass --overwrite")
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.batch = batch
        self.count = 0

    def __enter__(self):
        import lmdb
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        # The map is virtual address space: the file grows only as records are written.
        self.env = lmdb.open(str(self.tmp), map_size=1 << 40, subdir=True, lock=True,
                             meminit=False, map_async=True)
        self.txn = self.env.begin(write=True)
        return self

    def put(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, value)
        self.count += 1
        if self.count % self.batch == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.txn.commit()
            self.env.sync(True)
            self.env.close()
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(self.tmp, self.path)
        else:
            self.txn.abort()
            self.env.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
