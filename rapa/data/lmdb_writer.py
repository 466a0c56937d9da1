"""Writing an LMDB of Datum records; the database appears under its name only when complete."""
from __future__ import annotations

import os
import pathlib
import shutil

from ..errors import RapaError


LMDB_FILES = {"data.mdb", "lock.mdb"}


def check_output(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output database path before any input is read: an existing one without
    --overwrite, and, even with it, anything that is not an LMDB folder (a folder of data.mdb
    and lock.mdb only), which --overwrite must not delete."""
    path = pathlib.Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise RapaError(f"{path} already exists; remove it or pass --overwrite")
    if not path.is_dir() or path.is_symlink():
        raise RapaError(f"{path}: --overwrite replaces only an LMDB folder; this is not a folder")
    other = sorted(p.name for p in path.iterdir() if p.name not in LMDB_FILES or not p.is_file())
    if other or not (path / "data.mdb").is_file():
        what = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "") if other else \
            "no data.mdb"
        raise RapaError(f"{path}: --overwrite replaces only an LMDB folder (data.mdb, lock.mdb); "
                        f"this one holds {what}")


class LmdbWriter:
    """with LmdbWriter(path) as w: w.put(key, value) ... ; written to path.tmp, then renamed."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, batch: int = 2000,
                 map_size: int = 64 << 20):
        self.path = pathlib.Path(path)
        check_output(self.path, overwrite)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.batch = batch
        self.count = 0
        self.map_size = map_size

    def __enter__(self):
        import lmdb
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        # The map starts small and doubles when full (MapFullError: the open transaction is
        # redone), instead of reserving a terabyte of address space that a cluster's
        # `ulimit -v` refuses.
        self.env = lmdb.open(str(self.tmp), map_size=self.map_size, subdir=True, lock=True,
                             meminit=False, map_async=True)
        self.txn = self.env.begin(write=True)
        self.pending: list[tuple[bytes, bytes]] = []
        return self

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self._put(key, value)
        self.count += 1
        if self.count % self.batch == 0:
            self._commit()
            self.txn = self.env.begin(write=True)

    def _put(self, key: bytes, value: bytes) -> None:
        import lmdb
        try:
            self.txn.put(key, value)
        except lmdb.MapFullError:
            self._grow()

    def _commit(self) -> None:
        import lmdb
        while True:
            try:
                self.txn.commit()
                break
            except lmdb.MapFullError:
                self._grow()
        self.pending = []

    def _grow(self) -> None:
        """Abort the open transaction, double the map, and redo the transaction's puts."""
        import lmdb
        while True:
            self.txn.abort()
            self.map_size *= 2
            self.env.set_mapsize(self.map_size)
            self.txn = self.env.begin(write=True)
            try:
                for k, v in self.pending:
                    self.txn.put(k, v)
                return
            except lmdb.MapFullError:
                continue

    def __exit__(self, kind, value, tb):
        if kind is None:
            self._commit()
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
