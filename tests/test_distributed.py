"""Data-parallel training under torchrun (gloo, 2 processes on the CPU): the same run as one
process with the concatenated batch, analog arrays bit-identical, safe stops and resumes, bad
launches named in one line."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from datasets import random_images, write_lmdb
from rapa.proto import pb
from rapa.prototxt import read_binary
from rapa.snapshot import latest_snapshot
from rapa.trainlog import read_log_lines

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch without the gloo backend")

# No augmentation and no digital reduction whose order depends on the batch split: the one-
# and two-process runs then compute the same numbers. The analog net has no biases (a bias
# gradient is a sum over the batch, rounded differently when split) and no periphery noise
# (its draws are counted per row of each process's own batch); the pulses are stochastic,
# with cycle-to-cycle noise, so they show whether every process applies the same rows in the
# same order with the same draws.
NET = """
name: "dp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.01 }
  data_param { source: "train_lmdb" batch_size: %(batch)d backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.01 }
  data_param { source: "test_lmdb" batch_size: 5 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: %(bias)s
    weight_filler { type: "xavier" } %(rpu)s } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
%(dropout)s
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  inner_product_param { num_output: 3 bias_term: %(bias)s
    weight_filler { type: "gaussian" std: 0.1 } %(rpu)s } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
ANALOG = ('rpu_param { forward { out_noise: 0 } backward { out_noise: 0 } '
          'device { dw_min: 0.01 dw_min_std: 0.3 } }')
# HIC with exact products: the convolution's backward hands its summed gradient, the
# InnerProduct's its rows; each process sums them into one gradient, averaged over the
# processes (HICArrays.exchanged).
HIC = ('hic_param { forward { is_perfect: true } backward { is_perfect: true } '
       'accumulator_frac_bits: 6 }')

SOLVER = """
net: "%(net)s"
test_iter: 2
test_interval: 4
test_initialization: false
base_lr: 0.1
momentum: 0.9
weight_decay: 0.004
lr_policy: "fixed"
max_iter: %(max_iter)d
snapshot: %(snapshot)d
snapshot_prefix: "%(prefix)s"
solver_mode: CPU
random_seed: 5
display: 1
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    write_lmdb(tmp_path / "train_lmdb", *random_images(24, h=6, w=6, classes=3))
    write_lmdb(tmp_path / "test_lmdb", *random_images(10, h=6, w=6, classes=3, seed=1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


DROPOUT = ('layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" '
           'dropout_param { dropout_ratio: 0.3 } }')


def write_run(workdir, name, batch, analog=False, max_iter=6, snapshot=3, dropout=False):
    """analog: True (RPU arrays) or "hic"."""
    (workdir / f"{name}.prototxt").write_text(NET % {
        "batch": batch, "bias": "false" if analog else "true",
        "rpu": {False: "", True: ANALOG, "hic": HIC}[analog],
        "dropout": DROPOUT if dropout else ""})
    (workdir / f"{name}_solver.prototxt").write_text(SOLVER % {
        "net": f"{name}.prototxt", "max_iter": max_iter, "snapshot": snapshot,
        "prefix": f"snap_{name}/{name}"})
    return f"{name}_solver.prototxt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in extra.items()})
    e["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1])] +
        ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def torchrun(workdir, solver, *extra, processes=2, check=True, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
           "--master-port", str(free_port()), "-m", "rapa", "train", "--solver", solver,
           "--no-progress", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    r = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=240)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def one_process(workdir, solver, *extra):
    r = subprocess.run([sys.executable, "-m", "rapa", "train", "--solver", solver,
                        "--no-progress", *extra], cwd=workdir, env=env(), capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def mid_run(workdir, solver, lines):
    """A torchrun of `solver`, returned once its log has `lines` lines (it is mid-run)."""
    proc = torchrun(workdir, solver, wait=False)
    log = workdir / "snap_two/two_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            log.exists() and len(read_log_lines(log)) >= lines):
        time.sleep(0.05)
    return proc


def workers(proc) -> dict[int, int]:
    """torchrun's processes: {rank: pid}."""
    ranks = {}
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split():
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(v for v in environ if v.startswith(b"RANK="))
        ranks[int(rank[len(b"RANK="):])] = int(pid)
    return ranks


def by_hand(workdir, solvers):
    """Processes 0, 1, ... started without torchrun, process r with solvers[r]: their exit
    statuses and (stdout, stderr)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "rapa", "train", "--solver", solver,
                               "--no-progress"], cwd=workdir,
                              env=env(RANK=rank, WORLD_SIZE=len(solvers), LOCAL_RANK=rank,
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, solver in enumerate(solvers)]
    results = [p.communicate(timeout=120) for p in procs]
    return [p.returncode for p in procs], results


def blobs(path) -> dict:
    net = read_binary(path, pb.NetParameter())
    out = {}
    for layer in net.layer:
        for i, b in enumerate(layer.blobs):
            out[f"{layer.name}/{i}"] = torch.tensor(list(b.data) or list(b.double_data),
                                                    dtype=torch.float64)
    return out


def test_two_processes_train_as_one_with_the_doubled_batch(workdir):
    write_run(workdir, "one", batch=4)
    write_run(workdir, "two", batch=2)
    # Each process's batches prepared by a worker process of its own (data_param.processes),
    # the one process's by its thread: the same records in the same order all the same.
    net = workdir / "two.prototxt"
    net.write_text(net.read_text().replace("backend: LMDB }", "backend: LMDB processes: 1 }"))
    assert net.read_text().count("processes: 1") == 2
    one_process(workdir, "one_solver.prototxt")
    r = torchrun(workdir, "two_solver.prototxt")
    assert "2 processes on cpu" in r.stdout and "batch 2 processes x 2" in r.stdout
    assert r.stdout.count("Optimization done.") == 1  # process 0 speaks for the run
    a, b = blobs("snap_one/one_iter_6.caffemodel"), blobs("snap_two/two_iter_6.caffemodel")
    assert a.keys() == b.keys() and len(a) == 4
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name
    # The weights moved (a test over a run that learns nothing would pass anything).
    first = blobs("snap_two/two_iter_3.caffemodel")
    assert max(float((first[n] - b[n]).abs().max()) for n in b) > 1e-3
    one_log, two_log = (read_log_lines(f"snap_{n}/{n}_log.jsonl") for n in ("one", "two"))
    losses = [[e["loss"] for e in log if e.get("phase") == "train"] for log in (one_log,
                                                                              two_log)]
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    tests = [[e["acc"] for e in log if e.get("phase") == "test"] for log in (one_log, two_log)]
    assert len(tests[1]) == 1 and tests[0] == pytest.approx(tests[1])  # rank 0 tests all
    # Process 1 draws from its own stream (its forward draws: dropout, tiling, noise), though
    # neither has drawn anything yet here.
    state = read_binary("snap_two/two_iter_3.solverstate", pb.SolverState())
    assert len(state.process_rng_state) == 1 and state.process_rng_state[0] != state.rng_state
    epochs = [e["epoch"] for e in two_log if e.get("phase") == "train"]
    assert epochs[-1] == pytest.approx(6 * 4 / 24)  # both processes' images count


def test_analog_arrays_are_bit_identical_to_one_process(workdir):
    write_run(workdir, "one", batch=4, analog=True)
    write_run(workdir, "two", batch=2, analog=True)
    one_process(workdir, "one_solver.prototxt")
    torchrun(workdir, "two_solver.prototxt")  # its snapshots check that the ranks agree
    a = read_binary("snap_one/one_iter_6.caffemodel", pb.NetParameter())
    b = read_binary("snap_two/two_iter_6.caffemodel", pb.NetParameter())
    assert [list(x.data) for l in a.layer for x in l.blobs] == \
        [list(x.data) for l in b.layer for x in l.blobs]
    moved = blobs("snap_two/two_iter_3.caffemodel")
    final = blobs("snap_two/two_iter_6.caffemodel")
    assert (moved["conv/0"] != final["conv/0"]).sum() > 10  # pulses were applied


def test_hic_arrays_train_as_one_process_with_the_doubled_batch(workdir):
    write_run(workdir, "one", batch=4, analog="hic")
    write_run(workdir, "two", batch=2, analog="hic")
    one_process(workdir, "one_solver.prototxt")
    torchrun(workdir, "two_solver.prototxt")  # its snapshots check that the ranks agree
    a, b = blobs("snap_one/one_iter_6.caffemodel"), blobs("snap_two/two_iter_6.caffemodel")
    assert a.keys() == b.keys() and len(a) == 2 * 10  # weight + 9 HIC state blobs per layer
    # The averaged gradient sums in another order than one process's: an accumulator may
    # round the other way, but the devices' values (bits, levels) and counts agree.
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=2e-2), name
    first = blobs("snap_two/two_iter_3.caffemodel")
    for layer in ("conv", "ip"):
        bits = f"{layer}/2"
        assert (first[bits] != b[bits]).sum() > 5  # transfers reached the binary cells


TWO_CONVS = """
name: "dp2"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.01 }
  data_param { source: "train_lmdb" batch_size: %(batch)d backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false
    weight_filler { type: "xavier" } tiling_param { scheme: "random_fixed" num_tiles: 4 }
    %(rpu)s } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 bias_term: false
    weight_filler { type: "xavier" } %(rpu)s } }
layer { name: "relu" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip"
  inner_product_param { num_output: 3 bias_term: false
    weight_filler { type: "gaussian" std: 0.1 } %(rpu)s } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_tiled_and_stacked_analog_convolutions_exchange_images_as_one_process(workdir):
    """Two analog convolutions, the first on tiles, the second on the first's output (a
    channels-last view), two passes a step: the images exchanged in place of the rows give
    the one-process run's arrays bit for bit."""
    for name, batch in (("one", 4), ("two", 2)):
        (workdir / f"{name}.prototxt").write_text(TWO_CONVS % {"batch": batch, "rpu": ANALOG})
        (workdir / f"{name}_solver.prototxt").write_text(
            (SOLVER % {"net": f"{name}.prototxt", "max_iter": 4, "snapshot": 2,
                       "prefix": f"snap_{name}/{name}"}).replace("test_iter: 2\n", "")
            .replace("test_interval: 4\n", "") + "iter_size: 2\n")
    one_process(workdir, "one_solver.prototxt")
    torchrun(workdir, "two_solver.prototxt")
    a = read_binary("snap_one/one_iter_4.caffemodel", pb.NetParameter())
    b = read_binary("snap_two/two_iter_4.caffemodel", pb.NetParameter())
    assert [list(x.data) for l in a.layer for x in l.blobs] == \
        [list(x.data) for l in b.layer for x in l.blobs]
    first, final = blobs("snap_two/two_iter_2.caffemodel"), blobs("snap_two/two_iter_4.caffemodel")
    for layer in ("conv1", "conv2"):
        assert (first[f"{layer}/0"] != final[f"{layer}/0"]).sum() > 5, layer  # pulses applied


def test_interrupted_run_resumes_exactly_on_two_and_resumes_on_one(workdir):
    # Dropout: each process draws its own masks, so a resume must give each its own generator.
    write_run(workdir, "two", batch=2, analog=True, max_iter=400, snapshot=1000, dropout=True)
    proc = mid_run(workdir, "two_solver.prototxt", 3)
    log = workdir / "snap_two/two_log.jsonl"
    # Ctrl-C in a terminal: torchrun and its processes get SIGINT, and torchrun passes it on
    # to them again at once; that second one must not cut the snapshot short.
    pids = workers(proc).values()
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.01)
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.count("SIGINT at iteration") == 1, err
    assert "resume with: torchrun [the same options] -m rapa train --solver two_solver" in err
    snap = latest_snapshot("snap_two/two")
    assert snap is not None
    stopped = int(snap.stem.rsplit("_", 1)[1])
    assert 0 < stopped < 400
    state = read_binary(snap, pb.SolverState())
    assert state.world_size == 2 and len(state.process_rng_state) == 1
    assert state.process_rng_state[0] != state.rng_state  # process 1 draws its own
    # The uninterrupted run to a little past the stop, and the resumed one, agree bit for bit.
    end = stopped + 3
    torchrun(workdir, "two_solver.prototxt", "--snapshot", str(snap), "--max-iter", str(end))
    resumed = read_binary(f"snap_two/two_iter_{end}.caffemodel", pb.NetParameter())
    write_run(workdir, "again", batch=2, analog=True, max_iter=400, snapshot=1000,
              dropout=True)
    (workdir / "again_solver.prototxt").write_text(
        (workdir / "two_solver.prototxt").read_text().replace("snap_two/two", "snap_again/two"))
    torchrun(workdir, "again_solver.prototxt", "--max-iter", str(end))
    assert read_binary(f"snap_again/two_iter_{end}.caffemodel", pb.NetParameter()) == resumed
    # On one process: it says what changes, reads on from the same record, and finishes (the
    # snapshot written after it, by the resume above, is overwritten on request).
    r = one_process(workdir, "two_solver.prototxt", "--snapshot", str(snap), "--max-iter",
                    str(stopped + 2), "--overwrite")
    assert f"Removed an earlier run under snap_two/two: a snapshot of iteration {end}" in r.stdout
    assert "written by a run of 2 process(es), resumed by 1" in r.stdout
    data = read_binary(f"snap_two/two_iter_{stopped + 2}.solverstate", pb.SolverState())
    assert data.world_size == 1
    assert data.data_cursor[0].batches == 2 * stopped + 2  # counted in batches of 2 records
    last = [e for e in read_log_lines(log) if e["phase"] == "train"][-1]
    assert last["iter"] == stopped + 2
    assert last["epoch"] == round((2 * stopped + 2) * 2 / 24, 4)  # images seen, not iter x N


def test_a_killed_process_stops_the_run_without_a_half_written_snapshot(workdir):
    write_run(workdir, "two", batch=2, max_iter=100000, snapshot=50)
    proc = mid_run(workdir, "two_solver.prototxt", 120)
    ranks = workers(proc)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    said = [l for l in err.splitlines() if l.startswith("rapa train")]
    assert len(said) == 1 and "another process of the run has left it" in said[0], err
    assert "training stopped; the last good snapshot is snap_two/two_iter_" in said[0]
    assert "Traceback (most recent call last)" not in err.split("rapa train")[0]
    for snap in (workdir / "snap_two").glob("*.solverstate"):
        state = read_binary(snap, pb.SolverState())
        model = workdir / "snap_two" / state.learned_net
        assert model.is_file() and state.world_size == 2
    assert not list((workdir / "snap_two").glob(".*tmp*"))


def test_bad_launches_are_one_line_errors(workdir):
    write_run(workdir, "two", batch=20)  # 24 records: two processes of 20 would share some
    r = torchrun(workdir, "two_solver.prototxt", check=False)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.startswith("rapa train")]
    assert lines == ["rapa train: error: layer 'data': its database holds 24 records, fewer "
                     "than one step of 2 processes reads (2 x batch_size 20): start fewer "
                     "processes or lower batch_size"], r.stderr
    # Processes that were given different solver files (one per node, edited on one).
    write_run(workdir, "a", batch=2)
    write_run(workdir, "b", batch=2)
    (workdir / "b_solver.prototxt").write_text(
        (workdir / "b_solver.prototxt").read_text().replace("base_lr: 0.1", "base_lr: 0.2")
        .replace('net: "b.prototxt"', 'net: "a.prototxt"').replace("snap_b/b", "snap_a/a"))
    codes, results = by_hand(workdir, ["a_solver.prototxt", "b_solver.prototxt"])
    assert codes == [2, 2], results
    assert results[0][1] == ("rapa train: error: process 1's solver differs from process "
                             "0's: every process of a run must use the same files (copy them "
                             "to every node)\n"), results
    assert results[1][1] == ""  # said once, by process 0
    # A mistake only process 1 finds (its copy of the solver), and one both find: each said
    # once, by process 0, naming the process where not all found it.
    for old, new, expected in (
            ("base_lr: 0.1", "base_lr: -1", "rapa train: error: process 1: b_solver.prototxt: "
                                            "base_lr must be finite and >= 0, got -1\n"),
            ('net: "a.prototxt"', 'net: "missing.prototxt"', None)):
        (workdir / "b_solver.prototxt").write_text(
            (workdir / "a_solver.prototxt").read_text().replace(old, new))
        names = "ab" if expected else "bb"  # the second: the same file for both
        codes, results = by_hand(workdir, [f"{name}_solver.prototxt" for name in names])
        assert codes == [2, 2], results
        if expected is None:
            assert results[0][1].count("\n") == 1 and "missing.prototxt" in results[0][1]
            assert "process 1:" not in results[0][1], results
        else:
            assert results[0][1] == expected, results
        assert results[1][1] == "", results
    # Found by process 0 alone while starting to train (its lock, its files), or by all (a
    # snapshot that is not there): one line, and no word from process 1 about a lost peer.
    from rapa.fileio import hold_lock
    (workdir / "snap_a").mkdir()
    lock = hold_lock(workdir / "snap_a/a.lock", "test")
    try:
        r = torchrun(workdir, "a_solver.prototxt", check=False)
    finally:
        lock.close()
    said = [l for l in r.stderr.splitlines() if l.startswith("rapa train")]
    assert len(said) == 1 and "snapshot_prefix snap_a/a: another run is using it" in said[0], \
        r.stderr
    r = torchrun(workdir, "a_solver.prototxt", "--snapshot", "nope.solverstate", check=False)
    said = [l for l in r.stderr.splitlines() if l.startswith("rapa train")]
    assert len(said) == 1 and "nope.solverstate" in said[0] and "process" not in said[0], \
        r.stderr
    bad = subprocess.run([sys.executable, "-m", "rapa", "train", "--solver",
                          "a_solver.prototxt"], cwd=workdir, env=env(RANK=3, WORLD_SIZE=2),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "RANK 3 and WORLD_SIZE 2 do not fit" in bad.stderr


def test_each_process_reads_its_own_batches_and_the_cursor_counts_all(workdir):
    from rapa.data.lmdb_source import LmdbSource
    from rapa.data.prefetch import Prefetcher
    from rapa.data.transform import Transformer
    source = LmdbSource(workdir / "train_lmdb")

    def reader(rank, world):
        tp = pb.TransformationParameter(scale=1.0)
        p = Prefetcher(source, Transformer(tp, source.shape, False, None, "t"), 2, seed=1)
        p.shard(rank, world)
        return p

    one, first, second = reader(0, 1), reader(0, 2), reader(1, 2)
    try:
        for step in range(7):  # past the end of the 24 records: both wrap alike
            joined = torch.cat([next(first)[1], next(second)[1]])
            assert torch.equal(joined, torch.cat([next(one)[1], next(one)[1]])), step
        assert first.next_index == second.next_index == one.next_index == 14
        second.seek(4)  # a resumed run: batch 4 + rank
        assert torch.equal(next(second)[1], one.batch(5)[1])
    finally:
        for p in (one, first, second):
            p.close()


def test_one_process_group_is_the_identity_and_fingerprints_see_every_bit():
    from rapa.distributed import Group, fingerprint
    from rapa.errors import RapaError
    g = Group()
    t = torch.tensor([1.0, 2.0])
    g.average_([t, None])
    assert t.tolist() == [1.0, 2.0] and g.sum([3.0, 1.0]) == [3.0, 1.0]
    assert torch.equal(g.gather_rows(t), t) and g.leader
    g.same_everywhere(b"x", "solver")
    Group.check_same(["a", "a"], "solver")
    with pytest.raises(RapaError) as e:
        Group.check_same(["a", "a", "b"], "weights", "a bug")
    assert str(e.value) == "process 2's weights differs from process 0's: a bug"
    assert e.value.shared
    a = fingerprint([torch.zeros(3), torch.tensor(5)])
    assert a == fingerprint([torch.zeros(3), torch.tensor(5)])
    assert a != fingerprint([torch.tensor([0.0, -0.0, 0.0]), torch.tensor(5)])  # a sign bit
    assert a != fingerprint([torch.zeros(3), torch.tensor(6)])


class _LosingGroup:
    """A one-process group whose exchange fails at the third step, as when a process dies."""
    rank, world, leader, device = 0, 1, True, torch.device("cpu")

    def __init__(self, *args):
        self.steps, self.closed = 0, 0

    def __getattr__(self, name):
        from rapa.distributed import Group
        return getattr(Group(), name)

    def sum(self, values):
        from rapa.distributed import PeerLost
        self.steps += 1
        if self.steps == 3:
            raise PeerLost("another process of the run has left it (seen while summing)")
        return list(values)

    def close(self):
        self.closed += 1


def test_a_lost_process_stops_with_one_line_and_keeps_the_signal_handlers(workdir, monkeypatch):
    from rapa import solver as solver_module
    from rapa.solver import Solver, Stop
    group = _LosingGroup()
    monkeypatch.setattr(solver_module.Group, "from_environment", lambda: group)
    solver = Solver(write_run(workdir, "one", batch=2, max_iter=10), say=lambda m: None,
                    progress=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Stop) as stop:
            solver.solve()
        assert stop.value.code == 1 and not stop.value.shared
        assert str(stop.value) == ("another process of the run has left it (seen while "
                                   "summing) at iteration 2: training stopped; no snapshot "
                                   "was written")
        # torchrun's SIGTERM follows: it must reach the solver's handler, not kill the
        # process before it has said why it stops.
        assert signal.getsignal(signal.SIGTERM) == solver._on_signal
        assert group.closed == 1
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_a_failed_set_up_leaves_the_group(workdir, monkeypatch):
    from rapa import solver as solver_module
    from rapa.errors import RapaError
    from rapa.solver import Solver
    group = _LosingGroup()
    monkeypatch.setattr(solver_module.Group, "from_environment", lambda: group)
    path = write_run(workdir, "one", batch=2)
    (workdir / "one.prototxt").unlink()
    with pytest.raises(RapaError, match="one.prototxt"):
        Solver(path, say=lambda m: None)
    assert group.closed == 1  # else gloo's threads abort the exiting process


def test_batch_norm_statistics_are_averaged_so_the_processes_hold_one_net(workdir):
    """BatchNorm's moving mean after one step is that of all the step's images (the mean of
    the two halves' means), as one process with the whole batch has it; the run's snapshots
    check that both processes hold the same statistics."""
    bn = ('layer { name: "bn" type: "BatchNorm" bottom: "pool" top: "pool" '
          'batch_norm_param { use_global_stats: false } }')
    for name, batch in (("one", 4), ("two", 2)):
        write_run(workdir, name, batch=batch, max_iter=1, snapshot=1)
        net = workdir / f"{name}.prototxt"
        net.write_text(net.read_text().replace('layer { name: "ip"', bn + '\nlayer { name: "ip"'))
    one_process(workdir, "one_solver.prototxt")
    torchrun(workdir, "two_solver.prototxt", "--max-iter", "3")
    one, two = blobs("snap_one/one_iter_1.caffemodel"), blobs("snap_two/two_iter_1.caffemodel")
    assert one["bn/0"].abs().max() > 0.01  # the moving mean moved
    assert torch.allclose(one["bn/0"], two["bn/0"], rtol=1e-5, atol=1e-7)
    assert one["bn/2"].item() == two["bn/2"].item() == 1.0  # Caffe's moving-average factor
    assert (snap := latest_snapshot("snap_two/two")) is not None and snap.stem.endswith("_3")


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(workdir):
    """SIGINT to process 0 alone (as `kill` of one process would): all stop after the same
    step, through the stop they agree on, and process 0's snapshot is written."""
    # An analog net: its update, after the exchange, is the window where a signal used to
    # make one process stop on its own.
    write_run(workdir, "two", batch=8, analog=True, max_iter=100000, snapshot=50)
    proc = mid_run(workdir, "two_solver.prototxt", 20)
    os.kill(workers(proc)[0], signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)  # a hang: processes at different exchanges
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = [l for l in err.splitlines() if l.startswith("rapa train")]
    assert len(said) == 1 and "SIGINT at iteration" in said[0], err
    stopped = int(said[0].split("SIGINT at iteration ")[1].split(":")[0])
    assert (workdir / f"snap_two/two_iter_{stopped}.solverstate").is_file()


def test_a_signal_after_the_exchange_counts_at_the_next_step(workdir):
    """The stop is decided at the step's exchange: a signal that comes after it (here while
    the step's numbers are read) stops the run one step later, as every other process will (a
    process that acted on it at once would leave the others waiting at the next exchange)."""
    from rapa.solver import Solver, Stop
    solver = Solver(write_run(workdir, "one", batch=2, max_iter=20, snapshot=100),
                    say=lambda m: None, progress=False)
    settle = solver._settle

    def settle_then_a_signal(bar):
        settle(bar)
        if solver.iter == 5:  # after the step to iteration 5 (no test point at 5 or 6)
            solver._interrupted = "SIGINT"
    solver._settle = settle_then_a_signal
    with pytest.raises(Stop, match="SIGINT at iteration 6: stopped after writing "):
        solver.solve()


def test_the_launcher_s_repeated_signal_does_not_stop_a_process_at_once(workdir, monkeypatch):
    """torchrun passes the terminal's Ctrl-C on to processes that had it already: in a run of
    several processes the second SIGINT is ignored (alone, it stops the process at once)."""
    from rapa import solver as solver_module
    from rapa.solver import Solver
    exits = []
    monkeypatch.setattr(solver_module.os, "_exit", exits.append)
    solver = Solver(write_run(workdir, "one", batch=2), say=lambda m: None, progress=False)
    try:
        solver.group.world = 2
        solver._on_signal(signal.SIGINT, None)
        solver._on_signal(signal.SIGINT, None)
        assert solver._interrupted == "SIGINT" and exits == []
        solver.group.world = 1
        solver._on_signal(signal.SIGINT, None)
        assert exits == [130]
    finally:
        solver.group.world = 1
        solver.close()


def test_a_failed_join_and_a_lost_peer_are_said_in_one_short_line(monkeypatch):
    """gloo's multi-line messages are cut to their first line; a lost peer's to 120
    characters at a word."""
    from rapa import distributed
    from rapa.errors import RapaError
    from rapa.distributed import Group, PeerLost
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")

    def init(*args, **kwargs):
        raise RuntimeError("\nThe client socket has timed out after 60s while trying to "
                           "connect to (10.0.0.1, 29500).\nException raised from ...")
    monkeypatch.setattr(distributed.dist, "init_process_group", init)
    with pytest.raises(RapaError) as e:
        Group.from_environment()
    assert str(e.value) == ("cannot join the run (The client socket has timed out after 60s "
                            "while trying to connect to (10.0.0.1, 29500).)")
    detail = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
              "[10.0.0.2]:61000 while reading the header of a message of 4096 bytes from the "
              "pair of process 1")

    def collective():
        raise RuntimeError(detail + "\nException raised from ...")
    with pytest.raises(PeerLost) as e:
        Group()._call("summing", collective)
    said = str(e.value)
    prefix = "another process of the run has left it (seen while summing: "
    assert said.startswith(prefix) and said.endswith(" ...)")
    cut = said[len(prefix):-1]
    assert len(cut) <= 120 and detail.startswith(cut[:-4]) and len(cut) > 100
