"""Weights (.caffemodel) and solver states (.solverstate) in Caffe's binary formats.

A .caffemodel is a NetParameter whose layers carry only name, type and blobs: learnable blobs
in Caffe's order, then state blobs (a fixed tile partition). Caffe's own models load into our
untiled layers unchanged. A .solverstate is Caffe's SolverState plus what an exact resume needs
(random generator states, data positions). Snapshots are written weights first, state second,
each atomically: the state file is the commit, so a crash at any moment leaves either the new
snapshot complete or the previous one as the latest.
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Callable, Optional

import torch

from .blobs import blob_to_tensor, tensor_to_blob  # noqa: F401  (also this module's API)
from .errors import RapaError
from .net import Net
from .proto import pb
from .prototxt import read_binary, write_binary


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def net_to_proto(net: Net) -> pb.NetParameter:
    out = pb.NetParameter(name=net.name)
    for e in net.entries:
        blobs = e.layer.learnable_blobs() + e.layer.state_blobs()
        if blobs:
            lp = out.layer.add(name=e.layer.layer_name, type=e.layer.type_name)
            lp.blobs.extend(tensor_to_blob(b) for b in blobs)
    return out


def save_weights(net: Net, path) -> None:
    write_binary(path, net_to_proto(net))


@torch.no_grad()
def load_weights(net: Net, path, say: Optional[Callable[[str], None]] = None) -> list[str]:
    """Copy the blobs of every layer of `path` whose name the net has (Caffe's
    CopyTrainedLayersFrom); returns the names of the net's layers with blobs it did not find.

    A layer on analog arrays whose entry lacks the arrays' blobs (device draws and scales: a
    model of the digital net) gets digital weights: they are mapped onto the arrays as the
    fillers' are at set-up (rapa.analog.MappingParameters: scale, then clip to the devices'
    bounds), and `say` (default: standard error) tells how many were clipped."""
    say = say or (lambda text: print(text, file=sys.stderr))
    model = read_binary(path, pb.NetParameter())
    if not model.layer and model.ByteSize():
        state = pb.SolverState()
        try:
            state.ParseFromString(pathlib.Path(path).read_bytes())
        except Exception:  # noqa: BLE001 - not a solver state either
            state.Clear()
        if state.learned_net:
            raise RapaError(f"{path}: a solver state, not weights: --weights takes a "
                            f".caffemodel (this state's is {state.learned_net}), --snapshot "
                            f"a .solverstate")
        raise RapaError(f"{path}: holds no 'layer' entries (a V1 model? upgrade it with "
                        f"Caffe's upgrade_net_proto_binary)")
    by_name = {lp.name: lp for lp in model.layer}
    missing = []
    for e in net.entries:
        layer = e.layer
        learn, state = layer.learnable_blobs(), layer.state_blobs()
        if not learn and not state:
            continue
        lp = by_name.get(layer.layer_name)
        if lp is None:
            missing.append(layer.layer_name)
            continue
        arrays = [(i, a) for i, a in ((i, layer.blob_arrays(i)) for i in range(len(learn)))
                  if a is not None]
        device_state = sum(len(a.state_blobs()) for _, a in arrays)  # the last state blobs
        # State blobs may be left out (a fixed partition: a Caffe model of the untiled net;
        # the arrays' blobs: a model of the digital net), but not all blobs of a layer (a
        # BatchNorm without its statistics, as Caffe refuses).
        counts = {len(learn) or None, len(learn) + len(state),
                  len(learn) + len(state) - device_state}
        if len(lp.blobs) not in counts:
            analog = (" (a model of an analog net holds its arrays' state after the weights: "
                      "an RPU model loads only into a layer with rpu_param and the same "
                      "devices_per_weight, a HIC model only into one with hic_param and the "
                      "same programming: \"pulsed\" adds the blob pulse_draws)")
            # One blob more or fewer than the weights and bias of a digital layer: its bias.
            bias = (" (one has a bias and the other not: bias_term, or another net's layer "
                    "of the same name?)" if not arrays and not state and
                    abs(len(lp.blobs) - len(learn)) == 1 else "")
            extra = bias or (analog if len(lp.blobs) > len(learn) + len(state) or arrays
                             else "")
            raise RapaError(f"{path}: layer '{layer.layer_name}' has {len(lp.blobs)} blobs, the "
                            f"net's layer has {len(learn)} learnable (+{len(state)} state)"
                            f"{extra}")
        for i, blob in enumerate(lp.blobs):
            try:
                value = blob_to_tensor(blob)
            except ValueError as err:
                raise RapaError(f"{path}: layer '{layer.layer_name}' blob {i}: {err}") from None
            if not torch.isfinite(value).all():  # a diverged run's weights: garbage out
                raise RapaError(f"{path}: layer '{layer.layer_name}' blob {i} holds NaN or "
                                f"infinite values")
            target = learn[i] if i < len(learn) else state[i - len(learn)]
            # Caffe's legacy 4-D shapes (num, channels, height, width: a bias (1, 1, 1, C), an
            # InnerProduct's weights (1, 1, N, K)) hold what the shapes without their 1s hold
            # now; so must a state blob (a fixed partition, statistics). Other learnable blobs
            # have the net's shape exactly.
            legacy = i >= len(learn) or not blob.HasField("shape")
            if value.numel() != target.numel() or (
                    _squeezed(value.shape) != _squeezed(target.shape) if legacy
                    else tuple(value.shape) != tuple(target.shape)):
                raise RapaError(
                    f"{path}: layer '{layer.layer_name}' blob {i} has shape "
                    f"{tuple(value.shape)}, the net's layer wants {tuple(target.shape)} (a "
                    f"different num_output, kernel, channel count, tiling or "
                    f"devices_per_weight?)")
            if i < len(learn):
                target.copy_(value.reshape(target.shape))
                continue
            problem = layer.state_blob_problem(i - len(learn), value)
            if problem:
                raise RapaError(f"{path}: layer '{layer.layer_name}' blob {i} (state blob "
                                f"{i - len(learn)}): {problem}")
            layer.load_state_blob(i - len(learn), value)
        digital = len(lp.blobs) < len(learn) + len(state)
        for i, a in arrays:
            # Digital weights are written as fillers' are; an analog model's own state is kept
            # (and made consistent: clipped to the devices' bounds, or read from the devices).
            for note in a.after_load(learn[i].view(a.shape), digital):
                say(f"{path}: layer '{layer.layer_name}': {note}")
    return missing


# The iteration as str(int) writes it (ASCII digits, no leading zero: p_iter_007 is no
# snapshot), so that a state's name and snapshot_paths' agree.
SNAPSHOT_RE = re.compile(r"_iter_(0|[1-9][0-9]*)\.solverstate$")


def snapshot_iter(state_path: pathlib.Path) -> int:
    """The iteration a PREFIX_iter_N.solverstate's name says."""
    return int(SNAPSHOT_RE.search(pathlib.Path(state_path).name).group(1))


def snapshot_paths(prefix: str, iteration: int) -> tuple[pathlib.Path, pathlib.Path]:
    return (pathlib.Path(f"{prefix}_iter_{iteration}.caffemodel"),
            pathlib.Path(f"{prefix}_iter_{iteration}.solverstate"))


def _snapshot_files(prefix: str) -> list[tuple[int, pathlib.Path]]:
    """(iteration, path) of every PREFIX_iter_N.solverstate by its name alone, by iteration.
    The prefix is a string, as snapshot_paths joins it: "snap/" names snap/_iter_N, and no
    character of it is a pattern ("t[1]")."""
    folder, base = os.path.split(str(prefix))
    try:
        names = os.listdir(folder or ".")
    except OSError:  # no folder yet: no snapshot
        return []
    found = []
    for name in names:
        m = SNAPSHOT_RE.search(name)
        if m and name == f"{base}_iter_{m.group(1)}.solverstate":  # not PREFIX_x_iter_N
            found.append((int(m.group(1)), pathlib.Path(folder, name)))
    return sorted(found)


def _complete(state_path: pathlib.Path) -> bool:
    """A state that parses and whose weights exist (not what a damaged disk or a copy cut
    short leaves)."""
    try:
        state = pb.SolverState.FromString(state_path.read_bytes())
    except Exception:  # noqa: BLE001 - any failure to read or parse: not complete
        return False
    return bool(state.learned_net) and (state_path.parent / state.learned_net).is_file()


def snapshots_under(prefix: str) -> list[tuple[int, pathlib.Path]]:
    """(iteration, path) of the snapshots under `prefix` that have their weights file beside
    them (snapshot_paths' names; the states are not read: a run's start lists them all), by
    iteration."""
    return [(i, f) for i, f in _snapshot_files(prefix)
            if snapshot_paths(prefix, i)[0].is_file()]


def damaged_snapshots(prefix: str, newest: pathlib.Path | None) -> list[pathlib.Path]:
    """The .solverstate files under `prefix` newer than `newest`, its newest complete snapshot
    as latest_snapshot found it (those --snapshot auto passes over)."""
    after = -1 if newest is None else snapshot_iter(newest)
    return [f for i, f in _snapshot_files(prefix) if i > after]


def remove_snapshot(prefix: str, iteration: int) -> None:
    """A snapshot's two files (snapshot_paths')."""
    for path in snapshot_paths(prefix, iteration):
        path.unlink(missing_ok=True)


def latest_snapshot(prefix: str) -> pathlib.Path | None:
    """The newest complete snapshot under `prefix` (the states read newest first, until one
    is complete), None if there is none."""
    for _, f in reversed(_snapshot_files(prefix)):
        if _complete(f):
            return f
    return None
