"""An LMDB of Caffe Datum records, read by position: record i is the i-th key in key order."""
from __future__ import annotations

import os
import pathlib

import numpy as np

from ..errors import RapaError
from .datum import RecordError, decode


# LMDB allows one open environment per database and process: the train and test nets (and
# any later net) share it. Keyed by the file's identity, so a rewritten database reopens. An
# environment is not to be used across fork: a forked process (a worker preparing batches)
# closes its copies of the parent's and opens its own.
_ENVS: dict = {}
_ENVS_PID = os.getpid()


def _open(path: pathlib.Path):
    import lmdb
    global _ENVS_PID
    if os.getpid() != _ENVS_PID:
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    st = (path / "data.mdb").stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns)
    if key not in _ENVS:
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                            meminit=False, max_readers=64)
        except lmdb.Error as e:
            raise RapaError(f"database {path}: cannot open ({e})") from None
        # A file shorter than its own header says (a partial copy) would be read past its end
        # through the memory map: the process dies with SIGBUS, so check before any read.
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        if st.st_size < needed:
            env.close()
            raise RapaError(f"database {path}: data.mdb is cut short ({st.st_size} bytes of the "
                            f"{needed} its header names): copy it again")
        _ENVS[key] = env
    return _ENVS[key]


def lmdb_error() -> type:
    import lmdb
    return lmdb.Error


class LmdbSource:
    def __init__(self, path: str | os.PathLike, force_color: bool = False,
                 force_gray: bool = False):
        self.path = pathlib.Path(path)
        if not (self.path / "data.mdb").is_file():
            what = "is not an LMDB (no data.mdb in it)" if self.path.is_dir() else "does not exist"
            raise RapaError(f"database {self.path} {what}")
        self._env, self._pid = _open(self.path), os.getpid()
        try:
            with self.env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb_error() as e:  # a damaged page: the database is named, not a traceback
            raise RapaError(f"database {self.path}: damaged ({e}); copy or convert it again") \
                from None
        if not self.keys:
            raise RapaError(f"database {self.path} is empty")
        self.force_color, self.force_gray = force_color, force_gray
        with self.env.begin(buffers=True) as txn:
            self.shape = self._record(txn, self.keys[0])[0].shape

    @property
    def env(self):
        """The LMDB environment, opened in this process (a forked or spawned worker opens its
        own)."""
        if self._pid != os.getpid():
            self._env, self._pid = _open(self.path), os.getpid()
        return self._env

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None  # the receiving process opens its own
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def key_at(self, position: int) -> str:
        """The key of the record at `position` (wrapping around), for messages."""
        return self.keys[position % len(self.keys)].decode(errors="replace")

    def _record(self, txn, key: bytes) -> tuple[np.ndarray, int]:
        """The decoded record under `key`; errors name the database and the key."""
        try:
            return decode(bytes(txn.get(key)), self.force_color, self.force_gray)
        except RecordError as e:
            raise RapaError(f"database {self.path}, key {key.decode(errors='replace')!r}: "
                            f"{e}") from None
        except lmdb_error() as e:
            raise RapaError(f"database {self.path}, key {key.decode(errors='replace')!r}: "
                            f"damaged ({e}); copy or convert the database again") from None

    def read_many(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` records from position `start` on, wrapping around at the end: (N,C,H,W), (N,)."""
        images = np.empty((count, *self.shape), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        n = len(self.keys)
        with self.env.begin(buffers=True) as txn:
            for i in range(count):
                key = self.keys[(start + i) % n]
                image, label = self._record(txn, key)
                if image.shape != self.shape:
                    raise RapaError(f"database {self.path}, key {key.decode(errors='replace')!r}:"
                                    f" image of shape {image.shape}, but the first record (and the"
                                    f" net's input) has {self.shape}")
                images[i] = image
                labels[i] = label
        return images, labels
