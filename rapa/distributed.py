"""The processes of one data-parallel training run (torch.distributed), as `rapa train` sees them.

Launched by torchrun (`torchrun --nproc-per-node N -m rapa train --solver S`), each process
finds its rank and the world size in the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the group over gloo; processes that train on
GPUs exchange their training's tensors over NCCL (Group.place).
Without torchrun (or with WORLD_SIZE 1) the group is one process and every collective below is
the identity, so a one-process run does exactly what it did before.

What the solver exchanges each step (Caffe's multi-GPU semantics, where batch_size is per
process and the gradients are averaged over the processes):
- the digital gradients, averaged (one all-reduce over all of them, flattened);
- the rows of the analog arrays' pulsed update, gathered in rank order (all_gather), so that
  every process applies the same rows with the same draws and the arrays stay bit-identical;
- a few numbers: the loss, the training hits, and whether any process was interrupted.
A process that leaves the run (killed, crashed) makes the next collective fail on the others:
that is raised as PeerLost, which the solver turns into a one-line stop.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import RapaError, first_line, os_error_message


SAME_FILES = "every process of a run must use the same files (copy them to every node)"


class PeerLost(RapaError):
    """A collective failed: another process of the run has left it."""


def _environment_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise RapaError(f"environment variable {name}={value!r} is not a number (set by "
                            f"torchrun; launch with torchrun or unset it)") from None
    world = number("WORLD_SIZE", 1)
    rank, local = number("RANK", 0), number("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise RapaError(f"environment: RANK {rank} and WORLD_SIZE {world} do not fit "
                        f"(0 <= RANK < WORLD_SIZE)")
    return rank, world, local


class Group:
    """This process's place in the run: `rank` in [0, `world`), and the collectives the solver
    uses. `leader` (rank 0) alone logs, tests and writes snapshots, as Caffe's root solver.

    The run's own exchanges (settings, mistakes, seeds) go over gloo on the CPU; the training's
    (gradients, analog rows, the loss) over NCCL when the processes train on GPUs (place)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = torch.device("cpu")
        self.joined = False
        self._training = None  # the NCCL group on GPUs; None: the default (gloo) group

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, timeout_s: float = 7200.0) -> "Group":
        """Join the run torchrun started (one process: no group), before anything else, so
        that every mistake found while setting up can be said once (agree)."""
        rank, world, local = _environment_world()
        if world == 1:
            return cls()
        if not dist.is_available() or not dist.is_gloo_available():
            raise RapaError("this torch build has no torch.distributed gloo backend")
        try:
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise RapaError(f"cannot join the run ({first_line(e)})") from None
        group = cls(rank, world, local)
        group.joined = True
        return group

    def local_device(self, device: torch.device) -> torch.device:
        """The device this process trains on: on CUDA the GPU of its LOCAL_RANK (each process
        of a node its own), else `device`. No exchange: a mistake here goes to agree()."""
        if self.world == 1 or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise RapaError(f"process {self.rank} (LOCAL_RANK {self.local_rank}) has no GPU: its "
                            f"node has {torch.cuda.device_count()}; start at most that many "
                            f"processes per node (--nproc-per-node)")
        return torch.device("cuda", self.local_rank)

    def place(self, device: torch.device) -> torch.device:
        """Train on `device` (from local_device, the same type on every process): on CUDA the
        training's exchanges go over NCCL. Every process calls it, after agree()."""
        self.device = device
        if self.world > 1 and device.type == "cuda":
            torch.cuda.set_device(device)
            self._training = self._call("making the NCCL group", dist.new_group,
                                        backend="nccl")
        return device

    def agree(self, problem: Optional[BaseException], payload=None) -> list:
        """Every process's `payload`, in rank order, once every process has finished a part of
        its set-up; if any found a mistake (`problem`: a RapaError or OSError), all raise one
        error that names it (shared: process 0 says it)."""
        def text(e: BaseException) -> str:
            return os_error_message(e) if isinstance(e, OSError) else str(e)
        if self.world == 1:
            if problem is not None:
                raise problem
            return [payload]
        items = self.gather_objects((None if problem is None else text(problem), payload))
        failed = [(rank, message) for rank, (message, _) in enumerate(items)
                  if message is not None]
        if failed:
            if len({m for _, m in failed}) == 1 and len(failed) == self.world:
                raise RapaError(failed[0][1], shared=True)
            raise RapaError("; ".join(f"process {r}: {m}" for r, m in failed), shared=True)
        return [p for _, p in items]

    def close(self) -> None:
        if self.joined:
            self.joined = False
            dist.destroy_process_group()

    # -- collectives: each the identity in a one-process run -----------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # gloo/NCCL: a peer closed its connection or timed out
            raise PeerLost(f"another process of the run has left it (seen while {what}: "
                           f"{first_line(e, limit=120)})") from None

    def average_(self, tensors: Sequence[Optional[Tensor]]) -> None:
        """In place: each tensor becomes its mean over the processes (None entries skipped;
        every process passes the same shapes in the same order)."""
        present = [t for t in tensors if t is not None]
        if self.world == 1 or not present:
            return
        flat = torch.cat([t.reshape(-1) for t in present])
        self._call("averaging gradients", dist.all_reduce, flat, group=self._training)
        flat.div_(self.world)
        offset = 0
        for t in present:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum(self, values: Sequence) -> list:
        """The sums over the processes of a few numbers (float64); alone, the values as given
        (0-dim tensors stay on their device)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        self._call("summing the loss", dist.all_reduce, t, group=self._training)
        return t.tolist()

    def gather_rows(self, rows: Tensor) -> Tensor:
        """This process's rows (M, ...) and everybody else's, concatenated in rank order
        (world * M, ...); every process passes the same shape."""
        if self.world == 1:
            return rows
        rows = rows.contiguous()
        parts = [torch.empty_like(rows) for _ in range(self.world)]
        self._call("gathering analog update rows", dist.all_gather, parts, rows,
                   group=self._training)
        return torch.cat(parts)

    def gather_objects(self, value) -> list:
        """Every process's `value` (picklable), in rank order (over gloo)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        self._call("exchanging settings", dist.all_gather_object, out, value)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            # all_reduce rather than dist.barrier: on NCCL the barrier guesses a device.
            self.sum([0.0])

    def same_everywhere(self, value: bytes, what: str, advice: str = SAME_FILES) -> None:
        """Raise (on every process) when `value` differs between processes; `what` names it,
        `advice` says what to do."""
        self.check_same(self.gather_objects(hashlib.sha256(value).hexdigest()), what, advice)

    @staticmethod
    def check_same(values: Sequence, what: str, advice: str = SAME_FILES) -> None:
        """Raise (shared) when a process's value (`values` in rank order, as gathered)
        differs from process 0's; `what` names it, `advice` says what to do."""
        rank = next((r for r, v in enumerate(values) if v != values[0]), None)
        if rank is not None:
            raise RapaError(f"process {rank}'s {what} differs from process 0's: {advice}",
                            shared=True)


def speaker() -> tuple[bool, str]:
    """(whether this process speaks for the run's shared messages, a prefix naming it in its
    own): process 0 of a torchrun launch, or a process launched alone."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if world in ("", "1"):
        return True, ""
    return rank == "0", "" if rank == "0" else f"process {rank} of {world}: "


def fingerprint(tensors: Sequence[Tensor]) -> bytes:
    """The exact bytes of `tensors` hashed: equal on two processes only when every bit is."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()
