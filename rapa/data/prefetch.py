"""Batches prepared in the background, in order, a few ahead of the training loop.

Batch b holds the records from position (rand_skip + b * batch_size) on, wrapping around, and
its augmentation draws come from a generator seeded by (seed, b). So a batch depends on its
index alone and a resumed run (seek(b)) sees exactly the batches that an uninterrupted run
would. Errors in the background (a bad record) are raised in the consumer, at that batch's
turn, as the one-line message that names the database and the key.

In a run of `world` processes (rapa.distributed) process `rank` reads batches rank, rank +
world, rank + 2 world, ...: the processes' batches of one step, in rank order, are the records
one process would read with a batch `world` times larger. The position (next_index) counts the
batches of all processes, so a snapshot's cursor means the same records for any world size.

Two ways to prepare them, both giving the same batches in the same order:
- `threads` n (data_param.threads): thread j prepares the j-th of every n batches this
  process reads, each into its own queue, and the consumer takes them in turn. LMDB reads,
  image decoding and torch's transforms release the GIL; parsing the records and the
  transforms' Python do not, which caps threads at about one core's worth of batches.
- `processes` n (data_param.processes): n worker processes of torch's DataLoader, each with
  its own interpreter, prepare chunks of consecutive batches (at least CHUNK_IMAGES images, so
  that one message between processes carries many small batches) and the loader hands them
  over in order. For a GPU host with cores to spare, where training at batch 10 consumes tens
  of thousands of images a second. The workers ignore SIGINT and SIGTERM: Ctrl-C or a signal to
  the whole process group stops the training loop, which finishes its iteration (reading its
  batch) and snapshots, not the workers (a second Ctrl-C stops both at once:
  stop_worker_processes). A worker's death (the out-of-memory killer) and a full /dev/shm are
  raised at the next read, in one line that names the database (worker_death_line); the
  shared memory of a worker that died is removed with it.
With `pin_memory` (set for a net on CUDA) the batches come in page-locked memory, so that the
copy to the GPU runs asynchronously.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import queue
import signal
import sys
import threading
import warnings
import weakref
from typing import Optional

import numpy as np
import torch
import torch.utils.data

from ..errors import RapaError, first_line
from ..seeds import mix_seed
from .lmdb_source import LmdbSource
from .transform import Transformer

CHUNK_IMAGES = 256  # the least images a worker process hands over at once


class BatchReader:
    """Batch `index` of a database under a seed: reads, checks the labels, transforms. What a
    worker thread or process runs; picklable (a spawned worker process gets a copy)."""

    def __init__(self, source: LmdbSource, transform: Transformer, batch_size: int, skip: int):
        self.source, self.transform = source, transform
        self.batch_size, self.skip = batch_size, skip
        self.label_limits: list[tuple[int, Optional[int], str]] = []

    def _check_labels(self, labels: np.ndarray, start: int) -> None:
        for classes, ignore, reader in self.label_limits:
            bad = (labels < 0) | (labels >= classes)
            if ignore is not None:
                bad &= labels != ignore
            if bad.any():
                i = int(np.argmax(bad))
                raise RapaError(f"database {self.source.path}, key "
                                f"{self.source.key_at(start + i)!r}: label {labels[i]}, but "
                                f"{reader} takes labels in [0, {classes})")

    def __call__(self, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (self.skip + index * self.batch_size) % len(self.source)
        images, labels = self.source.read_many(start, self.batch_size)
        self._check_labels(labels, start)
        gen = torch.Generator().manual_seed(mix_seed(seed, index))
        return self.transform(images, gen), torch.from_numpy(labels)


class _Chunks(torch.utils.data.Dataset):
    """Key (seed, batch indices) -> (images (K, N, C, H, W), labels (K, N), error): the first K
    batches that could be read, and the error that stopped the rest (or None)."""

    def __init__(self, reader: BatchReader):
        self.reader = reader

    def __getitem__(self, key):
        seed, indices = key
        images = labels = error = None
        done = 0
        for index in indices:
            try:
                x, y = self.reader(index, seed)
                if images is None:
                    images, labels = self._buffers(len(indices), x, y)
            except Exception as e:  # handed to the consumer, raised at this batch's turn
                error = e if isinstance(e, RapaError) else RapaError(
                    f"{type(e).__name__}: {first_line(e)}")  # the traceback stays in the worker
                break
            images[done], labels[done] = x, y
            done += 1
        if not done:
            return None, None, error
        return images[:done], labels[:done], error

    def _buffers(self, n: int, x: torch.Tensor, y: torch.Tensor):
        """Room for n batches like (x, y); in a worker process in shared memory, written once
        there so that handing it over copies nothing more."""
        images = torch.empty((n, *x.shape), dtype=x.dtype)
        labels = torch.empty((n, *y.shape), dtype=y.dtype)
        if torch.utils.data.get_worker_info() is not None:
            try:
                images.share_memory_(), labels.share_memory_()
            except RuntimeError as e:  # /dev/shm full (a container's 64 MB default)
                size = (images.nbytes + labels.nbytes) / 2 ** 20
                raise RapaError(
                    f"database {self.reader.source.path}: no room for {size:.1f} MB of batches "
                    f"in shared memory (/dev/shm) for the worker processes ({first_line(e)}); "
                    f"free some, give the container more (docker run --shm-size), or read with "
                    f"data_param.threads instead of processes") from None
        return images, labels


class _ChunkKeys(torch.utils.data.Sampler):
    """The keys of this process's chunks from the prefetcher's position on, without end; read
    when the loader (re)starts, so a seek, a reseed or a new shard takes effect there."""

    def __init__(self, prefetcher: "Prefetcher"):
        self.p = prefetcher

    def __iter__(self):
        p = self.p
        seed, first, step, per_chunk = p.seed, p.next_index + p.rank, p.world, p.chunk_batches
        k = 0
        while True:
            yield seed, tuple(first + (k + i) * step for i in range(per_chunk))
            k += per_chunk


class WorkerStopped(RapaError):
    """A worker process of a prefetcher died; the message names the database."""


# The prefetchers whose loaders have worker processes: where a death is looked up.
_WITH_WORKERS: "weakref.WeakSet[Prefetcher]" = weakref.WeakSet()


def worker_death_line(error: BaseException) -> str:
    """The one line for a worker's death however it was noticed: as a prefetcher raised it
    (WorkerStopped, with its database), or as torch's SIGCHLD handler raised it, anywhere
    (a RuntimeError; the database is that of a loader whose worker is gone, while it is open)."""
    if isinstance(error, WorkerStopped):
        return str(error)
    for p in list(_WITH_WORKERS):
        workers = p._worker_processes()
        if ended_abnormally(workers):
            return f"database {p.source.path}: {worker_stopped(error, workers)}"
    return worker_stopped(error)


def _remove_shared_memory_of(pids) -> None:
    """A dead worker's shared memory segments that it had not yet handed over and unlinked
    (torch names them /dev/shm/torch_<pid>_*): nobody else will open them by name."""
    for pid in pids:
        for path in glob.glob(f"/dev/shm/torch_{pid}_*"):
            try:
                os.unlink(path)
            except OSError:
                pass


def worker_stopped(error: BaseException, workers=()) -> str:
    """The one line for a worker process that died (killed for memory, by a signal): the dead
    ones among `workers` (multiprocessing.Process) and how they ended, else the first line of
    the error it was noticed by (torch's SIGCHLD handler raises a RuntimeError anywhere in
    the training process; a read finds a closed connection)."""
    return _stopped_line(first_line(error), workers)


def ended_abnormally(workers) -> list:
    """The worker processes (multiprocessing.Process) among `workers` that have exited other
    than as told (killed, or with a status other than 0)."""
    return [w for w in workers if w.exitcode not in (None, 0)]


def _stopped_line(noticed: str, workers) -> str:
    reason = ", ".join(f"pid {w.pid} {_how_it_ended(w.exitcode)}"
                       for w in ended_abnormally(workers))
    return f"a worker process preparing batches stopped ({reason or noticed})"


def _how_it_ended(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"killed by signal {-exitcode}"


def is_worker_death(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and str(error).startswith("DataLoader worker")


@contextlib.contextmanager
def _sigchld_held():
    """Without torch's SIGCHLD handler for a while (in the main thread, where it runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def forget_worker_deaths() -> None:
    """Removes torch's SIGCHLD handler, once a worker's death has stopped the run: it would
    raise again for every other dead worker, from inside the loaders' shutdown (tracebacks
    "Exception ignored in ..."). A loader still read finds a death itself at its next read."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def stop_worker_processes() -> None:
    """Kills this process's worker processes (every child started through multiprocessing: in
    rapa, the data workers) at once, for an exit that skips the loaders' orderly shutdown (a
    second Ctrl-C); else they would see their parent gone only at their next check, seconds
    later. torch's SIGCHLD handler, which would raise at their death, is removed first."""
    import multiprocessing
    forget_worker_deaths()
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=1)  # reaped: gone from the process table when this returns
    _remove_shared_memory_of(child.pid for child in children)


# The signals that stop a run (rapa.solver: finish the iteration, snapshot, stop): Ctrl-C, a
# timeout's or a batch system's SIGTERM, and the hangup of a closed terminal or ssh session.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the training loop handles it (it finishes its
    # iteration, which may still read a batch, and snapshots). SIGTERM likewise (timeout, a
    # batch system's scancel signal the whole group), and SIGHUP (a closed terminal). The
    # worker was born with them blocked (see Prefetcher._start): one sent before this line is
    # discarded here, not fatal.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sys.excepthook = _worker_excepthook


def _worker_excepthook(kind, value, tb) -> None:
    """A worker's uncaught errors (multiprocessing's thread that hands shared memory over
    reports through this one) in one line on the training's stderr; none for a consumer that
    went away mid-hand-over (the training process closing its loaders)."""
    if issubclass(kind, (BrokenPipeError, ConnectionResetError)):
        return
    sys.stderr.write(f"rapa: data worker process {os.getpid()}: {kind.__name__}: "
                     f"{first_line(value)}\n")


class Prefetcher:
    def __init__(self, source: LmdbSource, transform: Transformer, batch_size: int,
                 seed: int, depth: int = 4, skip: int = 0, threads: int = 1,
                 processes: int = 0):
        self.reader = BatchReader(source, transform, batch_size, skip)
        self.source, self.batch_size = source, batch_size
        self._seed = seed
        self.depth = max(1, depth)
        self.threads = max(1, threads)
        self.processes = max(0, processes)
        self.chunk_batches = max(1, math.ceil(CHUNK_IMAGES / batch_size))
        self.pin_memory = False
        self.next_index = 0
        self.rank, self.world = 0, 1
        # threads
        self._workers: list[tuple[threading.Thread, queue.Queue]] = []
        self._first = 0  # next_index when the workers started
        self._stop = threading.Event()
        # processes: the loader (its workers persist across seeks), its iterator, the chunk
        # being handed out and the position in it
        self._loader: Optional[torch.utils.data.DataLoader] = None
        self._chunks = None
        self._chunk: Optional[tuple] = None
        self._chunk_pos = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        """Draw the augmentation from `seed` from the next batch on."""
        self.seek(self.next_index)
        self._seed = seed

    def limit_labels(self, classes: int, ignore: Optional[int], reader: str) -> None:
        """Every label must lie in [0, classes) or equal `ignore`, as `reader` (a layer) needs."""
        self.close()  # worker processes hold a copy of the reader
        self.reader.label_limits.append((classes, ignore, reader))

    def set_pin_memory(self, pin: bool) -> None:
        """Hand out batches in page-locked memory (for a net on CUDA) or not."""
        if pin != self.pin_memory:
            self.close()
            self.pin_memory = pin

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index`, read here and now."""
        return self.reader(index, self._seed)

    def shard(self, rank: int, world: int) -> None:
        """Read as process `rank` of `world` (see above)."""
        self.seek(self.next_index)
        self.rank, self.world = rank, world

    def seek(self, index: int) -> None:
        """The next batch returned will be batch `index` (plus the rank)."""
        self._close_threads()
        self._chunks, self._chunk = None, None  # the loader restarts its keys at the next read
        self.next_index = index

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._next_from_processes() if self.processes else self._next_from_threads()
        self.next_index += self.world
        return x, y

    # -- threads -------------------------------------------------------------------------------

    def _run(self, first: int, q: queue.Queue, stop: threading.Event) -> None:
        """Batches first + rank, then every (threads x world)-th after it, into q."""
        index = first + self.rank
        while not stop.is_set():
            try:
                x, y = self.batch(index)
                if self.pin_memory:
                    x, y = x.pin_memory(), y.pin_memory()
                item = (index, (x, y), None)
            except BaseException as e:  # handed to the consumer, raised there
                item = (index, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            index += self.world * self.threads

    def _next_from_threads(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._workers:
            self._stop = threading.Event()
            self._first = self.next_index
            # About depth batches waiting in all (each thread's queue at least one, and each
            # thread preparing one more).
            per_thread = max(1, self.depth // self.threads)
            for j in range(self.threads):
                q = queue.Queue(per_thread)
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"rapa-prefetch-{j}",
                                          args=(self.next_index + j * self.world, q, self._stop))
                thread.start()
                self._workers.append((thread, q))
        turn = (self.next_index - self._first) // self.world % self.threads
        index, batch, error = self._workers[turn][1].get()
        if error is not None:
            self.close()
            raise error
        assert index == self.next_index + self.rank
        return batch

    def _close_threads(self) -> None:
        if self._workers:
            self._stop.set()
            for thread, _ in self._workers:
                thread.join()
            self._workers = []

    # -- processes -----------------------------------------------------------------------------

    def _next_from_processes(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._chunk is None or self._chunk_pos == len(self._chunk[0]):
            if self._chunk is not None and self._chunk[2] is not None:
                self._raise(self._chunk[2])
            stopped = None
            try:  # a dead worker shows in the restart (workers acknowledge it) or the read
                if self._chunks is None:
                    self._chunks = self._start()
                self._chunk = next(self._chunks)
            except (RuntimeError, OSError, EOFError) as e:  # a worker killed (out of memory)
                forget_worker_deaths()  # others dying now must not raise in what follows
                stopped = first_line(e)  # not e: its traceback would keep the loader alive
            if stopped is not None:
                # Outside the except clause: no traceback keeps the loader alive, so closing
                # stops its workers now (and waits for them: how the dead one ended is known).
                workers = self._worker_processes()
                self.close()
                raise WorkerStopped(f"database {self.source.path}: "
                                    f"{_stopped_line(stopped, workers)}")
            self._chunk_pos = 0
            if self._chunk[0] is None:
                self._raise(self._chunk[2])
        images, labels, _ = self._chunk
        i, self._chunk_pos = self._chunk_pos, self._chunk_pos + 1
        return images[i], labels[i]

    def _start(self):
        """The loader's iterator from next_index on: its workers started, or told to restart."""
        with warnings.catch_warnings():
            # torch's advice when the workers outnumber the cores, a paragraph with a source
            # line: the README says it (they compete with training) where data_param is.
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            if self._loader is None:
                # Its own generator: the loader draws a seed for its workers at every start,
                # which must not move torch's global generator (random tiling draws from it).
                self._loader = torch.utils.data.DataLoader(
                    _Chunks(self.reader), batch_size=None, sampler=_ChunkKeys(self),
                    num_workers=self.processes, pin_memory=self.pin_memory,
                    worker_init_fn=_worker_init, persistent_workers=True, prefetch_factor=2,
                    generator=torch.Generator().manual_seed(0))
                _WITH_WORKERS.add(self)
            # Workers are forked here: blocked at birth, a Ctrl-C cannot reach one before it
            # ignores it. Here it waits, and comes as soon as they are started.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                return iter(self._loader)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _worker_processes(self) -> list:
        """The loader's worker processes (multiprocessing.Process), if it has started them."""
        return list(getattr(getattr(self._loader, "_iterator", None), "_workers", ()))

    def _raise(self, error: BaseException):
        self.close()  # a later read starts again at this batch (and meets the error again)
        raise error

    def close(self) -> None:
        """Stops the threads and the worker processes; a later read starts them again."""
        self._close_threads()
        self._chunks, self._chunk = None, None
        if self._loader is not None:
            workers = self._worker_processes()
            # The loader's shutdown waits for its workers; torch's SIGCHLD handler would raise
            # inside it (an "Exception ignored" traceback) if any worker of any loader had
            # died. Held meanwhile: the other loaders find such a death at their next read.
            with _sigchld_held():
                self._loader = None  # the workers exit
            _WITH_WORKERS.discard(self)
            # Those that did not end as told (killed; or found dying only now, a read having
            # seen their connection close first) may have left a chunk unlinked.
            _remove_shared_memory_of(w.pid for w in ended_abnormally(workers))
