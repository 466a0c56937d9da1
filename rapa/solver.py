"""Caffe's SGD solver, with RAPA's warm-up, test-time voting, exact resume and safe stops.

One iteration, in Caffe's order: test if due; iter_size forward/backward passes; gradients
averaged over them and clipped (clip_gradients); one update per learnable blob (rapa.sgd.SGD:
Caffe's SGD for digital blobs, the arrays' pulsed update for analog ones); snapshot if due.
Interrupt (Ctrl-C, SIGTERM, SIGHUP): finish the iteration, snapshot, stop. A NaN or infinite loss:
stop without a snapshot, so that the newest snapshot is the last good state.

Under torchrun every process runs this loop on its own batches (rapa.distributed): after the
backward passes the processes agree on the loss and on a stop, average the digital gradients
and gather the analog update rows, so every process makes the same update; process 0 alone
logs, tests and writes snapshots.
"""
from __future__ import annotations

import math
import os
import pathlib
import signal
import sys
import time
from collections import deque
from typing import Callable, Optional

import numpy as np
import torch

from .analog import HICArrays
from .analog.arrays import ConvInputs
from .cuda_graph import GraphedStep, RecordingFailed, graph_kept_off
from .data.prefetch import (STOP_SIGNALS, WorkerStopped, forget_worker_deaths,
                            is_worker_death, stop_worker_processes, worker_death_line)
from .device import device_named
from .distributed import Group, PeerLost, fingerprint
from .errors import RapaError
from .evaluate import reread, test_net
from .fileio import hold_lock, make_folder, remove_stale_temporaries, sha256_of
from .lr_policy import check_policy, learning_rate
from .net import Net, NetContext
from .progress import Progress
from .proto import pb
from .seeds import mix_seed
from .sgd import SGD
from .prototxt import read_binary, read_text, write_binary
from .resume_changes import resume_changes
from .snapshot import (blob_to_tensor, damaged_snapshots, latest_snapshot, load_weights,
                       remove_snapshot, save_weights, snapshot_paths,
                       snapshots_under, tensor_to_blob)
from .trainlog import TrainLog, read_log_lines


class Stop(Exception):
    """Training ended early; `code` is the process exit status the tool should use; `shared`:
    every process of a data-parallel run stops with this message (process 0 says it)."""

    def __init__(self, message: str, code: int, shared: bool = True):
        super().__init__(message)
        self.code, self.shared = code, shared


def _shared(group: Group, entry):
    """One recorded backward pass of an analog blob, every process's: a summed weight
    gradient (T, O, K) averaged, (x, d, tile) rows gathered with d divided by the world size
    (both: the update of the whole step's images, each process's loss a mean over its own);
    a convolution's input images gathered in place of its rows, which are then made from
    them (ConvInputs: everybody's patches, in rank order, as gathered rows would be)."""
    if isinstance(entry, torch.Tensor):
        group.average_([entry])
        return entry
    x, d, tile = entry
    x, d, tile = group.gather_rows(x), group.gather_rows(d) / group.world, group.gather_rows(tile)
    if isinstance(entry, ConvInputs):
        return ConvInputs(x, d, tile, entry.geometry).rows()
    return x, d, tile


def pick_device(sp: pb.SolverParameter, override: Optional[str], say: Callable) -> torch.device:
    """--device if given, else the solver's solver_mode and device_id; GPU mode falls back to
    the CPU, with a notice, where there is no CUDA device (as a Caffe prototxt often says GPU)."""
    if override:
        return device_named(f"cuda:{sp.device_id}" if override == "cuda" else override)
    if sp.solver_mode != pb.SolverParameter.GPU:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        say("solver_mode GPU, but no CUDA device is available: training on the CPU")
        return torch.device("cpu")
    return device_named(f"cuda:{sp.device_id}")


def check_ranges(sp: pb.SolverParameter, where: str) -> None:
    """Values that Caffe would take and then train badly or divide by zero with."""
    rules = [("max_iter", sp.max_iter, sp.max_iter > 0, "> 0"),
             ("base_lr", sp.base_lr,
              math.isfinite(sp.base_lr) and sp.base_lr >= 0, "finite and >= 0"),
             ("momentum", sp.momentum, 0 <= sp.momentum < 1, "in [0, 1)"),
             ("weight_decay", sp.weight_decay,
              math.isfinite(sp.weight_decay) and sp.weight_decay >= 0, "finite and >= 0"),
             ("iter_size", sp.iter_size, sp.iter_size >= 1, ">= 1"),
             ("warmup_iter", sp.warmup_iter, sp.warmup_iter >= 0, ">= 0"),
             ("warmup_factor", sp.warmup_factor,
              math.isfinite(sp.warmup_factor) and sp.warmup_factor > 0, "finite and > 0"),
             ("test_votes", sp.test_votes, sp.test_votes >= 1, ">= 1")]
    # NaN would pass any comparison below it unnoticed (Caffe too): the policies' numbers and
    # the clipping threshold must at least be finite.
    rules += [(field, getattr(sp, field), math.isfinite(getattr(sp, field)), "finite")
              for field in ("gamma", "power", "clip_gradients")]
    rules += [("test_iter", n, n >= 1, ">= 1") for n in sp.test_iter]
    for field, value, ok, rule in rules:
        if not ok:
            raise RapaError(f"{where}: {field} must be {rule}, got {value:g}")


class _NoLog:
    """The log of a process other than 0 (process 0 alone writes the run's log)."""

    def write(self, **entry) -> None:
        pass

    def close(self) -> None:
        pass


class Solver:
    def __init__(self, solver_path: str, *, device: Optional[str] = None,
                 max_iter: Optional[int] = None, say: Callable[[str], None] = print,
                 progress: Optional[bool] = None, no_cuda_graph: bool = False):
        self.path = pathlib.Path(solver_path)
        self.say = say
        # The command-line overrides a resume must repeat to continue the same run.
        self.overrides = "".join(f" --{flag} {value}" for flag, value in
                                 (("max-iter", max_iter), ("device", device)) if value is not None)
        self.overrides += " --no-cuda-graph" if no_cuda_graph else ""
        self.progress = progress
        self.no_cuda_graph = no_cuda_graph
        self._graph: Optional[GraphedStep] = None  # solve() decides
        self._pending: list = []  # (iteration, rate, device tensor (loss, hits, predictions))
        self._bar: Optional[Progress] = None  # solve()'s progress bar
        # Under torchrun: join the run before anything else, so that a mistake found while
        # setting up is gathered from every process and said once (Group.agree).
        self.group = Group.from_environment()
        if not self.group.leader:
            self.say = lambda message: None  # process 0 speaks for the run
            self.progress = False
        try:
            self._set_up(device, max_iter)
        except BaseException:
            # A process leaving without closing the group aborts in gloo's threads at exit.
            self.group.close()
            raise
        sp = self.sp
        # The training error of Table 1: top-1 hits of the scores the first layer reading
        # labels takes (class axis 1), counted over the training batches between tests.
        self.scored = next(((e.bottoms[0], e.bottoms[1], e.layer.label_range()[1])
                            for e in self.net.entries if e.layer.label_range() is not None
                            and len(e.bottoms) >= 2), None)
        self.train_hits = self.train_predictions = 0
        self.iter = 0
        self.losses: deque = deque(maxlen=max(1, sp.average_loss))
        # Whether the step's numbers stay on the device until needed (_settle): on CUDA.
        self.defer_results = self.device.type == "cuda"
        self._interrupted = None

    def _read_solver(self, max_iter: Optional[int]) -> pb.SolverParameter:
        sp = read_text(self.path, pb.SolverParameter())
        if max_iter is not None:
            sp.max_iter = max_iter
        where = str(self.path)
        if sp.type not in ("SGD",) or sp.solver_type != pb.SolverParameter.SGD:
            raise RapaError(f"{where}: solver type '{sp.type}' is not supported (only SGD)")
        if not sp.HasField("base_lr"):
            raise RapaError(f"{where}: base_lr is missing")
        if sp.regularization_type not in ("L1", "L2"):
            raise RapaError(f"{where}: regularization_type must be L1 or L2")
        check_ranges(sp, where)
        check_policy(sp, where)
        if sp.snapshot_format == pb.SolverParameter.HDF5:
            self.say("snapshot_format HDF5 is not supported: snapshots are written as "
                     "BINARYPROTO")
        return sp

    def _set_up(self, device: Optional[str], max_iter: Optional[int]) -> None:
        """Reads the solver, builds the nets; in a run of several processes, in two parts, each
        ended by Group.agree: the first agrees on the seed, the second checks that every
        process has the same solver, nets and initial weights."""
        g = self.group
        problem, seed = None, None
        try:
            self.sp = sp = self._read_solver(max_iter)
            self.prefix = sp.snapshot_prefix or str(self.path.with_suffix(""))
            local = g.local_device(pick_device(sp, device, self.say))
            seed = sp.random_seed if sp.random_seed >= 0 else \
                int.from_bytes(os.urandom(6), "little")
        except (RapaError, OSError) as e:
            problem = e
        self.seed = g.agree(problem, seed)[0]  # process 0's, where random_seed is -1
        self.device = g.place(local)
        if self.device.type == "cuda":  # streams and graphs made without a device name use it
            torch.cuda.set_device(self.device)
        torch.manual_seed(self.seed)  # every process: the same fillers and device draws

        problem, digests = None, None
        try:
            train_param, train_src, test_params = self._build_nets()
            if g.world > 1:
                digests = (
                    sp.SerializeToString(deterministic=True),
                    b"".join(p.SerializeToString(deterministic=True)
                             for p in [train_param] + [p for p, _ in test_params]),
                    fingerprint(self._everything_saved()))
                for layer in self.net.data_layers():
                    if layer.records and layer.records < g.world * layer.batch_size:
                        raise RapaError(
                            f"layer '{layer.layer_name}': its database holds {layer.records} "
                            f"records, fewer than one step of {g.world} processes reads "
                            f"({g.world} x batch_size {layer.batch_size}): start fewer "
                            f"processes or lower batch_size")
        except (RapaError, OSError) as e:
            problem = e
        everyone = g.agree(problem, digests)
        if g.world > 1:
            self._join_run(everyone)
            for b in self.params:  # RPU convolutions exchange their input images
                if b.arrays is not None and not b.arrays.records_gradient:
                    b.arrays.keep_inputs = True

    def _build_nets(self):
        sp, where = self.sp, str(self.path)
        train_param, train_src, test_params = self._net_params()
        self.train_param = train_param  # kept in snapshots (resume_changes)
        base = self.path.parent
        self.net = Net(train_param, pb.TRAIN, source=train_src, base_dir=base, seed=self.seed,
                       **self._state_kwargs(sp.train_state if sp.HasField("train_state")
                                            else None))
        self.net.to_device(self.device)
        self.test_nets = []
        for i, (param, src) in enumerate(test_params):
            state = sp.test_state[i] if i < len(sp.test_state) else None
            tn = Net(param, pb.TEST, source=src, base_dir=base, seed=self.seed,
                     **self._state_kwargs(state))
            tn.share_from(self.net)
            tn.to_device(self.device)
            self.test_nets.append(tn)
        if len(sp.test_iter) != len(self.test_nets):
            raise RapaError(f"{where}: test_iter must be given once per test net "
                            f"({len(self.test_nets)}), got {len(sp.test_iter)}")
        if self.test_nets and sp.test_interval <= 0:
            raise RapaError(f"{where}: test nets need test_interval > 0")
        for i, tn in enumerate(self.test_nets):
            again = reread(tn, sp.test_iter[i])
            if again:
                self.say(f"note: {where}: test_iter {sp.test_iter[i]} of test net #{i}: "
                         f"{again}")
        self.params = self.net.learnable()
        # The rate of the current iteration, where the update reads it (rapa.sgd.SGD.step).
        self.rate_t = torch.zeros((), dtype=torch.float64, device=self.device)
        # The pulses of the analog updates draw from their own generator, the same on every
        # process, so that every process applies the same pulses.
        self.pulses = torch.Generator(self.device).manual_seed(mix_seed(self.seed, 1))
        self.sgd = SGD(self.params, sp.momentum, sp.weight_decay, sp.regularization_type,
                       generator=self.pulses)
        return train_param, train_src, test_params

    def _join_run(self, digests: list) -> None:
        """Checks that every process runs the same run (`digests`: each process's solver, nets
        and initial weights), gives each its share of the training data, and each its own
        stream of draws for the forward passes (random tiling, dropout, noise), while the
        weights and the device draws made so far are the same."""
        g = self.group
        for i, what in enumerate(("solver", "net", "initial weights (another torch version?)")):
            g.check_same([theirs[i] for theirs in digests], what)
        for layer in self.net.data_layers():
            layer.shard(g.rank, g.world)
        if g.rank:
            torch.manual_seed(mix_seed(self.seed, 2, g.rank))

    def _everything_saved(self) -> list[torch.Tensor]:
        """The net's learnable and state blobs: what must be equal on every process."""
        return [t for e in self.net.entries
                for t in list(e.layer.learnable_blobs()) + list(e.layer.state_blobs())]

    def _state_kwargs(self, state: Optional[pb.NetState]) -> dict:
        if state is None:
            return {}
        return {"level": state.level, "stages": list(state.stage)}

    def _net_params(self):
        sp, base = self.sp, self.path.parent

        def load(path: str) -> tuple[pb.NetParameter, str]:
            p = NetContext(base).resolve(path, f"{self.path}: net")
            return read_text(p, pb.NetParameter()), str(p)

        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if sp.HasField(f)]
        if len(given) != 1:
            raise RapaError(f"{self.path}: give exactly one of net, net_param, train_net, "
                            f"train_net_param (given: {', '.join(given) or 'none'})")
        if sp.HasField("net"):
            train, src = load(sp.net)
        elif sp.HasField("net_param"):
            train, src = sp.net_param, f"{self.path} (net_param)"
        elif sp.HasField("train_net"):
            train, src = load(sp.train_net)
        else:
            train, src = sp.train_net_param, f"{self.path} (train_net_param)"
        tests = [load(t) for t in sp.test_net] + [
            (p, f"{self.path} (test_net_param)") for p in sp.test_net_param]
        if not tests and (sp.HasField("net") or sp.HasField("net_param")):
            tests = [(train, src)] * len(sp.test_iter)
        return train, src, tests

    # -- state ---------------------------------------------------------------------------------

    def rate(self) -> float:
        return learning_rate(self.sp, self.iter)

    def _generators(self, states: Optional[tuple] = None) -> tuple:
        """The states of this process's generators (CPU, and the device's on CUDA); given
        `states`, sets them back to those."""
        cuda = self.device.type == "cuda"
        if states is not None:
            torch.set_rng_state(states[0])
            if cuda:
                torch.cuda.set_rng_state(states[1], self.device)
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None

    def _generator_states(self) -> tuple[bytes, bytes]:
        cpu, cuda = self._generators()
        return cpu.numpy().tobytes(), cuda.numpy().tobytes() if cuda is not None else b""

    def snapshot(self) -> pathlib.Path:
        """Every process takes part (their generators are saved, and they are checked to hold
        the same weights); process 0 writes."""
        self._settle(self._bar)  # no snapshot of an update whose loss was not seen
        model_path, state_path = snapshot_paths(self.prefix, self.iter)
        g = self.group
        generators = g.gather_objects(self._generator_states())
        g.same_everywhere(fingerprint(self._everything_saved()),
                          f"weights at iteration {self.iter}",
                          "the processes diverged, which the exchange is meant to prevent: "
                          "please report it with the solver and net; the last snapshot "
                          "written is the newest good state")
        if not g.leader:
            g.barrier()  # returns once process 0 has written the snapshot
            return state_path
        save_weights(self.net, model_path)
        state = pb.SolverState(iter=self.iter, learned_net=model_path.name, seed=self.seed,
                               rng_state=generators[0][0],
                               learned_net_sha256=sha256_of(model_path),
                               pulse_rng_state=self.pulses.get_state().numpy().tobytes(),
                               world_size=g.world, solver=self.sp, train_net=self.train_param)
        if self.device.type == "cuda":
            state.cuda_rng_state = generators[0][1]
        state.process_rng_state.extend(cpu for cpu, _ in generators[1:])
        state.process_cuda_rng_state.extend(cuda for _, cuda in generators[1:] if cuda)
        state.history.extend(tensor_to_blob(h) for h in self.sgd.history)
        for layer in self.net.data_layers():
            state.data_cursor.add(layer=layer.layer_name, batches=layer.position,
                                  batch_size=layer.batch_size)
        state.loss_window.extend(self.losses)
        state.train_predictions, state.train_hits = self.train_predictions, self.train_hits
        write_binary(state_path, state)
        g.barrier()
        return state_path

    def restore(self, state_path) -> list[str]:
        """Loads a snapshot; returns what the run should be told of it (another solver or net,
        another number of processes or batch size), which _open_run says once the start is
        sure."""
        state_path = pathlib.Path(state_path)
        notes = []
        state = read_binary(state_path, pb.SolverState())
        if not state.learned_net:
            raise RapaError(f"{state_path}: not a solver state (no learned_net): --snapshot "
                            f"takes a .solverstate, --weights a .caffemodel")
        model = state_path.parent / state.learned_net
        if not model.is_file():
            raise RapaError(f"{state_path}: its weights file '{state.learned_net}' is missing")
        if state.learned_net_sha256 and sha256_of(model) != state.learned_net_sha256:
            raise RapaError(f"{state_path}: {model} is not the weights file written with it "
                            f"(another run wrote one of the two under the same names)")
        load_weights(self.net, model)
        history = list(state.history)
        if len(history) == len(self.params) != len(self.sgd.history):
            # Written before analog weights stopped keeping (unused) momentum: skip theirs.
            history = [h for h, b in zip(history, self.params) if b.arrays is None]
        if len(history) != len(self.sgd.history):
            raise RapaError(f"{state_path}: holds {len(state.history)} momentum blobs, the net "
                            f"has {len(self.sgd.history)} digital learnable blobs (a different "
                            f"net?)")
        with torch.no_grad():
            for i, (h, blob) in enumerate(zip(self.sgd.history, history)):
                try:
                    value = blob_to_tensor(blob)
                except ValueError as err:
                    raise RapaError(f"{state_path}: momentum blob {i}: {err}") from None
                if value.numel() != h.numel():
                    raise RapaError(f"{state_path}: momentum blob {i} does not fit the net")
                if not torch.isfinite(value).all():  # as load_weights refuses such weights
                    raise RapaError(f"{state_path}: momentum blob {i} holds NaN or infinite "
                                    f"values")
                h.copy_(value.reshape(h.shape))
        if state.iter < 0:
            raise RapaError(f"{state_path}: iter is {state.iter}; a snapshot's iteration is >= 0")
        if state.world_size < 1:
            raise RapaError(f"{state_path}: world_size is {state.world_size}; a run has >= 1 "
                            f"process")
        for cursor in state.data_cursor:
            if cursor.batches < 0:
                raise RapaError(f"{state_path}: the data position of layer '{cursor.layer}' is "
                                f"{cursor.batches}; it counts batches read, >= 0")
        self.iter = state.iter
        if state.HasField("seed") and state.seed != self.seed:
            self.seed = state.seed
            for layer in self.net.data_layers() + [l for n in self.test_nets
                                                   for l in n.data_layers()]:
                layer.reseed(state.seed)
        rank = self.group.rank
        saved = {"rng_state": state.rng_state, "cuda_rng_state": state.cuda_rng_state,
                 "pulse_rng_state": state.pulse_rng_state}
        if rank:  # process r's own generators, where the run that wrote it had a process r
            saved["rng_state"] = (state.process_rng_state[rank - 1]
                                  if rank <= len(state.process_rng_state) else b"")
            saved["cuda_rng_state"] = (state.process_cuda_rng_state[rank - 1]
                                       if rank <= len(state.process_cuda_rng_state) else b"")
            if not saved["rng_state"]:
                torch.manual_seed(mix_seed(self.seed, 2, rank, state.iter))
        for field, value in saved.items():
            if not value or (field == "cuda_rng_state" and self.device.type != "cuda"):
                continue
            value = torch.from_numpy(np.frombuffer(value, np.uint8).copy())
            try:
                if field == "rng_state":
                    torch.set_rng_state(value)
                elif field == "cuda_rng_state":
                    torch.cuda.set_rng_state(value, self.device)
                else:
                    self.pulses.set_state(value)
            except RuntimeError:  # torch checks the generator state's size and contents
                raise RapaError(f"{state_path}: {field} is damaged ({len(value)} bytes that "
                                f"are no generator state)") from None
        changes = resume_changes(state, self.sp, self.train_param)
        if changes:
            notes.append(f"{state_path} was written with another solver or net; now: "
                         f"{'; '.join(changes)}")
        if state.world_size != self.group.world:
            notes.append(f"{state_path} was written by a run of {state.world_size} "
                         f"process(es), resumed by {self.group.world}: each step now reads "
                         f"{self.group.world} x the batch (was {state.world_size} x), from the "
                         f"same record on; the rate schedule counts iterations as before")
        cursors = {c.layer: c for c in state.data_cursor}
        for layer in self.net.data_layers():
            cursor = cursors.get(layer.layer_name)
            batches = cursor.batches if cursor is not None else 0
            if cursor is not None and cursor.batch_size and cursor.batch_size != layer.batch_size:
                # The same record on, in batches of the new size (rounded down: a few records
                # again), so that the epochs count the images seen.
                records = batches * cursor.batch_size
                batches = records // layer.batch_size
                again = records - batches * layer.batch_size
                notes.append(f"layer '{layer.layer_name}': batch_size {cursor.batch_size} -> "
                             f"{layer.batch_size}: reads on from record "
                             f"{batches * layer.batch_size}"
                             + (f" ({again} read again)" if again else ""))
            layer.seek(batches)
        self.losses.clear()
        self.losses.extend(state.loss_window)
        self.train_predictions, self.train_hits = state.train_predictions, state.train_hits
        return notes

    # -- training ------------------------------------------------------------------------------

    def _share(self) -> None:
        """Every process's gradients in every process (a one-process run: nothing to do): the
        digital ones averaged, as Caffe's multi-GPU solver does (each process's loss is the
        mean over its own batch); the analog rows gathered in rank order, their d divided by
        the world size for the same reason. Every process then makes the same update as one
        process would with the concatenated batch; arrays that learn from the weight gradient
        alone (HIC) exchange its sum, averaged, instead of their rows (ArrayProducts.exchanged).
        BatchNorm's moving averages are averaged too (Caffe keeps the root solver's), so that
        every process holds the same net."""
        g = self.group
        if g.world == 1:
            return
        g.average_([b.blob.grad for b in self.params if b.arrays is None])
        # BatchNorm's moving averages: each process normalises by its own batch (no
        # synchronised BatchNorm) and the averages are averaged: the mean's is that of the
        # whole step's images, the variance's the mean of the processes' batch variances.
        g.average_([t for e in self.net.entries for t in e.layer.running_blobs()])
        for b in self.params:
            if b.arrays is not None:
                b.arrays.pending = [_shared(g, entry) for entry in b.arrays.exchanged()]

    def _update(self) -> None:
        """Caffe's ApplyUpdate at the rate in self.rate_t, on the device alone (no number
        comes back to the host: a CUDA graph can hold it)."""
        sp = self.sp
        self._share()
        grads = [b.blob.grad for b in self.params if b.blob.grad is not None]
        # Clip the gradients summed over iter_size passes (scaled by clip / norm where the norm
        # is over clip_gradients), then average them.
        if sp.clip_gradients > 0 and grads:
            norm = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
            scale = (sp.clip_gradients / norm).clamp(max=1.0)
            for g in grads:
                g.mul_(scale)
        if sp.iter_size > 1:
            for g in grads:
                g.div_(sp.iter_size)
        self.sgd.step(self.rate_t, sp.iter_size)

    def _step(self, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The device's part of one iteration: a forward and backward pass per batch of
        `batches` (iter_size of them, each a Data layer's tops by name), then the update.
        Returns device tensors: the loss summed over the passes, the right top-1 predictions
        and the predictions counted. What a CUDA graph records (rapa.cuda_graph)."""
        for b in self.params:  # a step of its own, also after a recording that failed midway
            b.blob.grad = None
        loss_sum = hits = predictions = None
        for batch in batches:
            blobs = self.net(batch)
            right, counted = self._count_hits(blobs)
            loss = self.net.loss(blobs)
            loss.backward()
            loss = loss.detach().double()  # summed as the host would (float64)
            if loss_sum is None:
                loss_sum, hits, predictions = loss, right, counted
            else:
                loss_sum, hits, predictions = (loss_sum + loss, hits + right,
                                               predictions + counted)
        self._update()
        return loss_sum, hits, predictions

    def _graphed_step(self) -> Optional[GraphedStep]:
        """The step as a CUDA graph (rapa.cuda_graph), where it can be one: on CUDA, one
        process, cuda_graph true and no --no-cuda-graph, no arrays whose update decides on the
        host (HIC; RPU arrays are `capturable`). Says which of these keeps it off, where that
        is not the user's choice."""
        if self.device.type != "cuda" or not self.sp.cuda_graph or self.no_cuda_graph:
            return None
        why = None
        host = graph_kept_off(self.params)
        if host:
            why = f"layer(s) {', '.join(host)} hold HIC arrays, whose updates decide on the host"
        elif self.group.world > 1:
            why = "the processes exchange gradients between the passes and the update"
        if why:
            self.say(f"CUDA graph: off ({why}): training without one")
            return None
        analog = any(p.arrays is not None for p in self.params)
        graph = GraphedStep(self._step, warmup=3, say=self.say, device=self.device,
                            generators=(self.pulses,) if analog else ())
        self.say(f"CUDA graph: the training step is recorded at iteration "
                 f"{self.iter + graph.warmup} (after {graph.warmup} steps without) and replayed "
                 f"after it (cuda_graph: false or --no-cuda-graph turn this off)")
        return graph

    def _settle(self, bar: Optional[Progress]) -> None:
        """Brings the iterations' losses and hits recorded on the device (self._pending) to
        the host, in one copy: the smoothed loss, the training accuracy, and the stop at a NaN
        or infinite loss, named with its iteration (the update it made is never saved: every
        snapshot settles first)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([v for *_, v in pending]).tolist()
        for (it, rate, _), (loss_value, hits, predictions) in zip(pending, values):
            if not math.isfinite(loss_value):
                if bar is not None:
                    bar.clear()
                raise Stop(f"loss is {loss_value} at iteration {it} (lr {rate:g}): training "
                           f"stopped{self._last_good(self._last_snapshot)}", 3)
            self.losses.append(loss_value)
            self.train_hits += int(hits)
            self.train_predictions += int(predictions)

    def epoch(self) -> Optional[float]:
        """Epochs of the training database read so far (None without one)."""
        data = self.net.data_layers()
        if not data or not data[0].records:
            return None
        # The batches read, by every process (a resume with another number of processes
        # reads on from the same record): images seen, whatever the run's history.
        images = data[0].position * data[0].batch_size
        return round(images / data[0].records, 4)

    def _count_hits(self, blobs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(right, counted) top-1 predictions of this batch, as device tensors."""
        if self.scored is None:
            zero = torch.zeros((), dtype=torch.int64, device=self.device)
            return zero, zero
        scores, labels, ignore = self.scored
        with torch.no_grad():
            predicted = blobs[scores].argmax(1).reshape(-1)
            target = blobs[labels].reshape(-1).long()
            valid = target != ignore if ignore is not None else torch.ones_like(target, dtype=bool)
            return ((predicted == target) & valid).sum(), valid.sum()

    def _test_all(self, log: Optional[TrainLog]) -> None:
        """Tests every test net and logs the results. A signal stops a test and the rest (the
        resumed run tests this iteration again), keeping the training counts for it."""
        self._settle(self._bar)  # the training counts of every step before it
        train = {}
        if self.train_predictions:
            train["train_accuracy"] = self.train_hits / self.train_predictions
        epoch = self.epoch()
        for i, tn in enumerate(self.test_nets):
            t0 = time.monotonic()
            result = test_net(tn, self.sp.test_iter[i], max(1, self.sp.test_votes),
                              progress_label=f"test net #{i}", progress=self.progress,
                              stop=lambda: self._interrupted is not None,
                              graph=self._graph is not None, say=self.say)
            if result is None:
                self.say(f"Iteration {self.iter}, test net #{i}: interrupted")
                return
            parts = [f"{k} = {v:.4f}" for k, v in result.outputs.items()]
            parts += [f"{k} (majority of {self.sp.test_votes} votes) = {v:.4f}"
                      for k, v in result.vote_accuracy.items()]
            self.say(f"Iteration {self.iter}, test net #{i}: " + ", ".join(parts) +
                     f" ({time.monotonic() - t0:.1f} s)")
            if log:
                entry = {"iter": self.iter, "phase": "test", "net": i, **result.outputs}
                entry.update({f"{k}_vote": v for k, v in result.vote_accuracy.items()})
                entry.update(train if epoch is None else {"epoch": epoch, **train})
                log.write(**entry)
        self.train_hits = self.train_predictions = 0

    @staticmethod
    def _last_good(snapshot) -> str:
        return (f"; the last good snapshot is {snapshot}" if snapshot
                else "; no snapshot was written")

    def _stop_for_signal(self, bar) -> None:
        """After a signal (to any process): snapshot, then stop with the resume command."""
        self._interrupted = self._interrupted or "a signal to another process of the run"
        path = self.snapshot()
        bar.clear()
        self.say(f"Snapshot: {path}")
        launch = ("torchrun [the same options] -m rapa train" if self.group.world > 1
                  else "rapa train")
        raise Stop(f"{self._interrupted} at iteration {self.iter}: stopped after writing "
                   f"{path}; resume with: {launch} --solver {self.path} --snapshot {path}"
                   f"{self.overrides}", 130)

    def _on_signal(self, signum, frame):
        if self._interrupted is not None and self.group.world > 1:
            # torchrun passes the user's Ctrl-C on to its processes, which the terminal gave
            # them already: the second is that one. torchrun kills them 30 s after it.
            return
        if self._interrupted is not None:
            # A second Ctrl-C: stop now. An exception raised here could surface in any frame
            # (a traceback) or leave the reader threads to be torn down mid-call (an abort);
            # files are only ever replaced whole, so leaving at once loses at most the
            # snapshot being written, and the previous one stays the newest.
            try:
                last = latest_snapshot(self.prefix)  # the one being written is not complete
            except Exception:  # noqa: BLE001 - the message must not stop the exit
                last = None
            resume = (f"; resume with: rapa train --solver {self.path} --snapshot {last}"
                      f"{self.overrides}" if last else "")
            sys.stderr.write(f"\n{signal.Signals(signum).name} again at iteration {self.iter}: "
                             f"stopped at once{self._last_good(last)}{resume}\n")
            sys.stderr.flush()
            stop_worker_processes()
            os._exit(130)
        self._interrupted = signal.Signals(signum).name

    def _load_weights(self, weights: str) -> None:
        if not all(weights.split(",")):
            raise RapaError(f"--weights '{weights}': an empty file name in the list")
        for w in weights.split(","):
            # Caffe's fine-tuning: layers the file lacks keep their fillers' values; a file
            # that has none of the net's layers is a mistake, not a fine-tuning.
            missing = load_weights(self.net, w, say=self.say)
            with_blobs = [e.layer.layer_name for e in self.net.entries
                          if e.layer.learnable_blobs() or e.layer.state_blobs()]
            if with_blobs and len(missing) == len(with_blobs):
                raise RapaError(f"{w}: holds none of the net's layers with weights "
                                f"({', '.join(with_blobs)})")
            if missing:
                self.say(f"{w}: no weights for {', '.join(missing)}: they start from their "
                         f"fillers")

    def _open_run(self, resume: Optional[str], weights: Optional[str], log_path: str,
                  overwrite: bool = False):
        """Loads --weights or resumes, and on process 0 makes the run's folders, takes the
        prefix's lock (self._lock) and opens the log, which it returns (a _NoLog elsewhere)."""
        if resume and weights:
            raise RapaError("give --snapshot or --weights, not both")
        if weights:
            self._load_weights(weights)
        path, notes = None, []
        if resume:
            path = latest_snapshot(self.prefix) if resume == "auto" else pathlib.Path(resume)
            if resume == "auto":
                for f in damaged_snapshots(self.prefix, path):
                    self.say(f"Skipped {f}: not a complete snapshot (it does not parse, or "
                             f"its weights file is missing)")
            if path is not None:
                notes = self.restore(path)
            else:
                self.say(f"No snapshot under {self.prefix}_iter_*: starting from iteration 0")
        if not self.group.leader:  # process 0 writes the run's files (and speaks)
            return _NoLog()
        # Made now, so that an unwritable place fails before the first snapshot, not at it.
        make_folder(pathlib.Path(self.prefix).parent, f"{self.path}: snapshot_prefix")
        make_folder(pathlib.Path(log_path).parent, f"{self.path}: log_file")
        self._lock = hold_lock(f"{self.prefix}.lock", f"{self.path}: snapshot_prefix "
                               f"{self.prefix}")
        for stale in remove_stale_temporaries(self.prefix):
            self.say(f"Removed {stale}, left by a run killed while writing it")
        own = path is not None and path.resolve() == \
            snapshot_paths(self.prefix, self.iter)[1].resolve()
        doomed, removal = self._claim_prefix(path, own, log_path, overwrite,
                                             auto=resume == "auto", weights=weights)
        log = TrainLog(log_path, self.iter if own else None)  # written before anything goes
        for iteration in doomed:
            remove_snapshot(self.prefix, iteration)
        if removal:
            self.say(removal)
        for note in notes:  # said once the start is sure
            self.say(note)
        if path is not None:
            self.say(f"Resuming from {path} at iteration {self.iter}")
        return log

    def _claim_prefix(self, resumed: Optional[pathlib.Path], own: bool, log_path: str,
                      overwrite: bool, auto: bool, weights: Optional[str] = None
                      ) -> tuple[list[int], str]:
        """Refuses (RapaError) to start where an earlier run's files would be lost: snapshots
        under the prefix (all of them for a fresh start or a resume from another prefix's
        snapshot; those after the resumed iteration for a resume from one of its own) and the
        log's lines (all of them, but for a resume of the prefix's own snapshot, which keeps
        those up to it). With `overwrite` (--overwrite): returns the snapshots to remove (their
        iterations) and
        the line that says so, for the caller to act on once the new log is written. `auto`
        (--snapshot auto) that found no snapshot: a log of the prefix's own name without one
        is of a run that cannot be resumed, replaced (a log_file of the solver's own may be
        another prefix's run's: refused)."""
        after = self.iter if own else -1
        doomed = [(i, f) for i, f in snapshots_under(self.prefix) if i > after]
        unreadable = None
        try:
            lines = [] if own else read_log_lines(log_path)
        except RapaError as e:  # not a rapa log (a file of the user's own): never overwritten
            lines, unreadable = [], str(e)
        if not doomed and not lines and not unreadable:
            return [], ""
        what = []
        if doomed:
            what.append(f"{len(doomed)} snapshots, iterations {doomed[0][0]} to {doomed[-1][0]}"
                        if len(doomed) > 1 else f"a snapshot of iteration {doomed[0][0]}")
        if lines:
            what.append(f"a log to iteration {max(x['iter'] for x in lines)} in {log_path}")
        if unreadable:
            what.append(f"a log_file that is no rapa log ({unreadable})")
        what = " and ".join(what)
        start = ("resuming from its iteration " + str(self.iter) if own else
                 f"resuming from {resumed}" if resumed is not None else "starting afresh")
        own_log = pathlib.Path(log_path) == pathlib.Path(f"{self.prefix}_log.jsonl")
        orphan_log = auto and not doomed and not unreadable and own_log
        if not overwrite and not orphan_log:
            raise RapaError(
                f"{self.path}: snapshot_prefix {self.prefix} holds an earlier run ({what}), "
                f"which {start} would overwrite: "
                + ("resume its newest with --snapshot auto, " if doomed and not auto else "")
                + ("give the solver another snapshot_prefix" if own_log else
                   "give the solver another snapshot_prefix and log_file")
                + ", or pass --overwrite to remove it")
        for i, _ in doomed:
            model = snapshot_paths(self.prefix, i)[0]
            if weights and model.exists() and os.path.samefile(weights, model):
                raise RapaError(f"--weights {weights} is one of the earlier run's snapshots that "
                                f"--overwrite would remove: copy it elsewhere first")
        return [i for i, _ in doomed], (
            f"Removed an earlier run under {self.prefix}: {what}" if overwrite else
            f"Replacing {log_path}, the log of a run with no snapshot to resume")

    def solve(self, resume: Optional[str] = None, weights: Optional[str] = None,
              overwrite: bool = False) -> int:
        """Train to max_iter. Returns the final iteration; raises Stop on an early end.
        `overwrite`: remove an earlier run's snapshots and log under the prefix that this start
        would otherwise refuse to overwrite (_claim_prefix)."""
        sp = self.sp
        leader = self.group.leader
        self._lock, log = None, _NoLog()

        def release():  # the log, the prefix's lock, the readers and the group
            log.close()
            if self._lock is not None:
                self._lock.close()
            self.close()

        # Loading, resuming and the run's files, each process (the files process 0 alone);
        # then every process learns what any of them found (Group.agree).
        log_path = sp.log_file or f"{self.prefix}_log.jsonl"
        try:
            problem = None
            try:
                log = self._open_run(resume, weights, log_path, overwrite)
            except (RapaError, OSError) as e:
                problem = e
            self.group.agree(problem)
        except BaseException:
            release()
            raise
        world = self.group.world
        per_process = sum(layer.batch_size for layer in self.net.data_layers()) or 1
        batch = per_process * world
        processes = f"{world} processes x " if world > 1 else ""
        on = f"{world} processes on {self.device.type}" if world > 1 else str(self.device)
        self.say(f"Training {self.net.name or self.net.source} on {on} to iteration "
                 f"{sp.max_iter} (batch {processes}{per_process} x iter_size {sp.iter_size}, "
                 f"seed {self.seed}); log {log_path}")
        if sp.momentum or sp.weight_decay:  # rapa.sgd: arrays take their own updates only
            digital = " and ".join(what for what, value in (("momentum", sp.momentum),
                                                            ("weight decay", sp.weight_decay))
                                   if value)
            for kind, how in (("Analog", "pulsed updates"),
                              ("HIC", "SGD steps into their accumulators")):
                names = sorted({p.name.rsplit("/", 1)[0] for p in self.params
                                if p.arrays is not None and
                                isinstance(p.arrays, HICArrays) == (kind == "HIC")})
                if names:
                    self.say(f"{kind} weights of {', '.join(names)}: {how} at the rate times "
                             f"lr_mult, without momentum or weight decay (their biases have "
                             f"{digital})")
        old = {s: signal.signal(s, self._on_signal) for s in sorted(STOP_SIGNALS)}
        bar = self._bar = Progress(sp.max_iter, "train", start=self.iter, enabled=self.progress)
        t_display, it_display = time.monotonic(), self.iter
        # The run's own speed at its end: a run shorter than `display` says it nowhere else.
        t_start, it_start, paused = t_display, self.iter, 0.0
        if self.iter >= sp.max_iter:
            self.say(f"Nothing to train: the run is at iteration {self.iter}, max_iter is "
                     f"{sp.max_iter}")
        self._last_snapshot = latest_snapshot(self.prefix)
        self._graph = self._graphed_step()
        try:
            self.net.train()
            while self.iter < sp.max_iter:
                if sp.test_interval and self.iter % sp.test_interval == 0 and (
                        self.iter > 0 or sp.test_initialization) and self.test_nets:
                    bar.clear()
                    t_test = time.monotonic()
                    drawn = self._generators()
                    if leader:
                        self._test_all(log)
                    tested = time.monotonic() - t_test
                    t_display, paused = t_display + tested, paused + tested  # training only
                    # A signal during the test stops the run here, before the step, as in
                    # Caffe: the snapshot is of this iteration, whose tests the resumed run
                    # does again. (The other processes wait here for process 0's tests.) Its
                    # generators are those from before the tests, which draw from them
                    # (random tiling, analog noise): the tests done again draw the same.
                    if self.group.sum([self._interrupted is not None])[0]:
                        self._generators(drawn)
                        self._stop_for_signal(bar)
                rate = self.rate()
                self.rate_t.fill_(rate)
                batches = [self.net.read_data() for _ in range(sp.iter_size)]
                loss_sum, hits, predictions = self._graph(batches) if self._graph else \
                    self._step(batches)
                # Every process: the same loss and the same decision to stop, decided here by
                # every process alike: a signal that comes later counts at the next step (a
                # process acting on its own would leave the others waiting). One process:
                # the device's numbers as they are.
                loss_sum, hits, predictions, stops = self.group.sum(
                    [loss_sum, hits, predictions, self._interrupted is not None])
                stop_after_step = bool(stops)
                summary = [loss_sum / (sp.iter_size * world), hits, predictions]
                summary = torch.stack([v.double() for v in summary]) if world == 1 else \
                    torch.tensor(summary, dtype=torch.float64)
                self._pending.append((self.iter, rate, summary))
                self.iter += 1
                # On CUDA the numbers stay on the device until they are needed (a display, the
                # last step, or 100 iterations; tests and snapshots read them back themselves),
                # so the host never waits for the GPU in between; elsewhere waiting costs
                # nothing.
                due = [sp.display and self.iter % sp.display == 0, self.iter == sp.max_iter,
                       len(self._pending) >= 100]
                if not self.defer_results or any(due):
                    self._settle(bar)
                smoothed = sum(self.losses) / max(1, len(self.losses))
                bar.update(self.iter, (f"loss {smoothed:.4f} " if self.losses else "") +
                           f"lr {rate:.2g}")
                if sp.display and self.iter % sp.display == 0:
                    now = time.monotonic()
                    speed = (self.iter - it_display) * batch * sp.iter_size / max(now - t_display,
                                                                                   1e-9)
                    t_display, it_display = now, self.iter
                    bar.clear()
                    self.say(f"Iteration {self.iter}, loss = {smoothed:.6g}, lr = {rate:.6g}, "
                             f"{speed:.0f} images/s")
                    log.write(iter=self.iter, phase="train", epoch=self.epoch(), loss=smoothed,
                              lr=rate, images_per_s=round(speed, 1))
                if stop_after_step:
                    self._stop_for_signal(bar)
                if sp.snapshot and self.iter % sp.snapshot == 0:
                    t_snapshot = time.monotonic()
                    self._last_snapshot = self.snapshot()
                    saved = time.monotonic() - t_snapshot
                    t_display, paused = t_display + saved, paused + saved
                    bar.clear()
                    self.say(f"Snapshot: {self._last_snapshot}")
            bar.close()
            if self.iter > it_start:
                seconds = max(time.monotonic() - t_start - paused, 1e-9)
                self.say(f"Trained {self.iter - it_start} iterations in {seconds:.1f} s, "
                         f"{(self.iter - it_start) * batch * sp.iter_size / seconds:.0f} "
                         f"images/s (tests and snapshots left out)")
            # (A resumed run with nothing left to train has its snapshot already.)
            if sp.snapshot_after_train and self.iter > it_start and (
                    not sp.snapshot or self.iter % sp.snapshot):
                self.say(f"Snapshot: {self.snapshot()}")
            if sp.test_interval and self.iter % sp.test_interval == 0 and self.test_nets and \
                    leader:
                self._test_all(log)
            self.say("Optimization done.")
            return self.iter
        except RecordingFailed as e:
            bar.clear()
            raise Stop(f"CUDA graph: the step could not be recorded at iteration {self.iter} "
                       f"({e}); run again without a graph (--no-cuda-graph or cuda_graph: "
                       f"false){self._last_good(self._last_snapshot)}", 1) from None
        except (WorkerStopped, RuntimeError) as e:
            # A data worker killed (out of memory): as the prefetcher noticed it, or as torch's
            # SIGCHLD handler raised it wherever the loop was. Other workers that die now
            # must not raise again in what follows (the run ends either way).
            forget_worker_deaths()
            if isinstance(e, RuntimeError) and not is_worker_death(e):
                raise
            bar.clear()
            raise Stop(f"{worker_death_line(e)} at iteration {self.iter}: training stopped"
                       f"{self._last_good(self._last_snapshot)}", 2, shared=False) from None
        except PeerLost as e:
            # torchrun now stops the others with SIGTERM: the handler must stay, to let this
            # process say why it stops rather than die of the signal.
            self._interrupted = self._interrupted or "lost"
            bar.clear()
            raise Stop(f"{e} at iteration {self.iter}: training stopped"
                       f"{self._last_good(self._last_snapshot)}", 1, shared=False) from None
        finally:
            # After a Ctrl-C the handler stays: a second one while the process shuts down
            # (atexit, the readers' threads) must still stop it at once, not raise there.
            for s, h in old.items() if not self._interrupted else ():
                signal.signal(s, h)
            release()

    def close(self) -> None:
        self.net.close()
        for tn in self.test_nets:
            tn.close()
        self.group.close()

