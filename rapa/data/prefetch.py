"""Batches prepared in background threads, in order, a few ahead of the training loop.

Batch b holds the records from position (rand_skip + b * batch_size) on, wrapping around, and
its augmentation draws come from a generator seeded by (seed, b). So a batch depends on its
index alone and a resumed run (seek(b)) sees exactly the batches that an uninterrupted run
would. Errors in a thread (a bad record) are raised in the consumer, at that batch's turn.

In a run of `world` processes (rapa.distributed) process `rank` reads batches rank, rank +
world, rank + 2 world, ...: the processes' batches of one step, in rank order, are the records
one process would read with a batch `world` times larger. The position (next_index) counts the
batches of all processes, so a snapshot's cursor means the same records for any world size.

With `threads` n > 1 (data_param.threads), thread j prepares the j-th of every n batches this
process reads, each into its own queue, and the consumer takes them in turn: the same batches
in the same order as one thread's. LMDB reads, image decoding and torch's transforms release
the GIL and run in parallel; parsing the Datum records does not.
"""
from __future__ import annotations

import queue
import threading
from typing import Optional

import numpy as np
import torch

from ..errors import RapaError
from ..seeds import mix_seed
from .lmdb_source import LmdbSource
from .transform import Transformer


class Prefetcher:
    def __init__(self, source: LmdbSource, transform: Transformer, batch_size: int,
                 seed: int, depth: int = 4, skip: int = 0, threads: int = 1):
        self.source, self.transform = source, transform
        self.batch_size, self.seed, self.skip = batch_size, seed, skip
        self.depth = max(1, depth)
        self.threads = max(1, threads)
        self.next_index = 0
        self.rank, self.world = 0, 1
        self._workers: list[tuple[threading.Thread, queue.Queue]] = []
        self._first = 0  # next_index when the workers started
        self._stop = threading.Event()
        self._label_limits: list[tuple[int, Optional[int], str]] = []

    def limit_labels(self, classes: int, ignore: Optional[int], reader: str) -> None:
        """Every label must lie in [0, classes) or equal `ignore`, as `reader` (a layer) needs."""
        self._label_limits.append((classes, ignore, reader))

    def _check_labels(self, labels: np.ndarray, start: int) -> None:
        for classes, ignore, reader in self._label_limits:
            bad = (labels < 0) | (labels >= classes)
            if ignore is not None:
                bad &= labels != ignore
            if bad.any():
                i = int(np.argmax(bad))
                raise RapaError(f"database {self.source.path}, key "
                                f"{self.source.key_at(start + i)!r}: label {labels[i]}, but "
                                f"{reader} takes labels in [0, {classes})")

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (self.skip + index * self.batch_size) % len(self.source)
        images, labels = self.source.read_many(start, self.batch_size)
        self._check_labels(labels, start)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, index))
        return self.transform(images, gen), torch.from_numpy(labels)

    def shard(self, rank: int, world: int) -> None:
        """Read as process `rank` of `world` (see above)."""
        self.close()
        self.rank, self.world = rank, world

    def _run(self, first: int, q: queue.Queue, stop: threading.Event) -> None:
        """Batches first + rank, then every (threads x world)-th after it, into q."""
        index = first + self.rank
        while not stop.is_set():
            try:
                item = (index, self.batch(index), None)
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

    def seek(self, index: int) -> None:
        """The next batch returned will be batch `index` (plus the rank)."""
        self.close()
        self.next_index = index

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
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
        self.next_index += self.world
        return batch

    def close(self) -> None:
        if self._workers:
            self._stop.set()
            for thread, _ in self._workers:
                thread.join()
            self._workers = []
