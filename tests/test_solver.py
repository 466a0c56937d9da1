"""The solver: Caffe's rate policies and update, exact resume, and safe stops."""
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from datasets import random_images, write_lmdb
from rapa.errors import RapaError
from rapa.lr_policy import learning_rate
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text, read_binary
from rapa.snapshot import latest_snapshot
from rapa import solver as solver_module
from rapa.solver import Solver, Stop
from rapa.trainlog import read_log_lines

NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 6 scale: 0.01 brightness: 5 }
  data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 6 scale: 0.01 }
  data_param { source: "test_lmdb" batch_size: 5 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
    tiling_param { scheme: "%s" num_tiles: 4 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MIXED kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
  param { lr_mult: 1 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.05
momentum: 0.9
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 7
max_iter: %d
snapshot: 4
snapshot_prefix: "snap/tiny"
solver_mode: CPU
random_seed: 3
display: 2
warmup_iter: 2
warmup_factor: 0.1
test_votes: 3
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    images, labels = random_images(40, h=8, w=8, classes=3)
    write_lmdb(tmp_path / "train_lmdb", images, labels)
    write_lmdb(tmp_path / "test_lmdb", *random_images(10, h=8, w=8, classes=3, seed=1))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def setup_files(workdir, max_iter=12, scheme="random_fixed", solver_extra=""):
    (workdir / "net.prototxt").write_text(NET % scheme)
    (workdir / "solver.prototxt").write_text(SOLVER % max_iter + solver_extra)
    return str(workdir / "solver.prototxt")


def weights(solver):
    return {b.name: b.blob.detach().clone() for b in solver.net.learnable()}


@pytest.mark.parametrize("policy,fields,expect", [
    ("fixed", "", lambda it: 0.1),
    ("step", "gamma: 0.5 stepsize: 3", lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", "gamma: 0.9", lambda it: 0.1 * 0.9 ** it),
    ("inv", "gamma: 0.1 power: 0.75", lambda it: 0.1 * (1 + 0.1 * it) ** -0.75),
    ("multistep", "gamma: 0.5 stepvalue: 2 stepvalue: 5",
     lambda it: 0.1 * 0.5 ** ((it >= 2) + (it >= 5))),
    ("poly", "power: 2", lambda it: 0.1 * (1 - it / 10) ** 2),
    ("sigmoid", "gamma: -0.5 stepsize: 4", lambda it: 0.1 / (1 + math.exp(0.5 * (it - 4)))),
])
def test_lr_policies_with_warmup(policy, fields, expect):
    sp = parse_text(f'base_lr: 0.1 max_iter: 10 lr_policy: "{policy}" {fields} '
                    f'warmup_iter: 2 warmup_factor: 0.05', pb.SolverParameter())
    for it in range(10):
        want = expect(it) * (0.05 if it < 2 else 1)
        assert learning_rate(sp, it) == pytest.approx(want, rel=1e-6)


def test_the_run_says_what_it_trains(workdir):
    said = []
    Solver(setup_files(workdir, max_iter=1), say=said.append, progress=False).solve()
    assert said[0] == ("Training tiny on cpu to iteration 1 (batch 4 x iter_size 1, seed 3); "
                       "log snap/tiny_log.jsonl")


def test_the_run_says_its_speed_at_its_end_without_tests_and_snapshots(workdir, monkeypatch):
    """A run shorter than `display` says its images/s nowhere else. A clock that moves only
    in the steps (2 s each), the tests (100 s) and the snapshots (50 s): what is said counts
    the steps' time alone, and only this run's iterations (a resumed run's)."""
    import rapa.solver
    clock = [0.0]
    monkeypatch.setattr(rapa.solver.time, "monotonic", lambda: clock[0])

    def taking(seconds, method):
        def run(*args, **kwargs):
            clock[0] += seconds
            return method(*args, **kwargs)
        return run
    for resume, want in ((None, "Trained 12 iterations in 24.0 s, 2 images/s"),
                         ("auto", "Trained 4 iterations in 8.0 s, 2 images/s")):
        said = []
        solver = Solver(setup_files(workdir, max_iter=12), say=said.append, progress=False)
        solver._step = taking(2.0, solver._step)
        solver._test_all = taking(100.0, solver._test_all)
        solver.snapshot = taking(50.0, solver.snapshot)
        solver.solve(resume=resume)
        assert f"{want} (tests and snapshots left out)" in said
        assert said[-1] == "Optimization done."
        for f in (workdir / "snap").glob("tiny_iter_12.*"):
            f.unlink()  # the next round resumes from iteration 8
        solver.close()


def test_sgd_update_is_caffes(workdir):
    solver = Solver(setup_files(workdir, max_iter=1), say=lambda m: None, progress=False)
    before = weights(solver)
    # Reproduce iteration 0 by hand: the same batch, the same random state.
    rng = torch.get_rng_state()
    batch = solver.net.layer("data").prefetcher.batch(0)
    loss = solver.net.loss(solver.net(dict(zip(["data", "label"], batch))))
    loss.backward()
    grads = {b.name: b.blob.grad.clone() for b in solver.net.learnable()}
    solver.net.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    solver.solve()
    rate = 0.05 * 0.1  # warm-up
    for b in solver.net.learnable():
        decay = 0.001 * b.spec.decay_mult
        expected = before[b.name] - rate * b.spec.lr_mult * (grads[b.name] + decay * before[b.name])
        torch.testing.assert_close(b.blob.detach(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scheme", ["random_fixed", "random"])
def test_resume_continues_exactly(workdir, scheme):
    solver_path = setup_files(workdir, scheme=scheme)
    straight = Solver(solver_path, say=lambda m: None, progress=False)
    straight.solve()
    final = weights(straight)
    log_straight = read_log_lines(workdir / "snap/tiny_log.jsonl")
    for f in (workdir / "snap").iterdir():
        f.unlink()
    first = Solver(solver_path, max_iter=8, say=lambda m: None, progress=False)
    first.solve()
    resumed = Solver(solver_path, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    assert resumed.iter == 12
    for n, w in weights(resumed).items():
        torch.testing.assert_close(w, final[n], rtol=0, atol=0)
    def values(log):  # everything but the measured speed
        return [{k: v for k, v in e.items() if k != "images_per_s"} for e in log]
    assert values(read_log_lines(workdir / "snap/tiny_log.jsonl")) == values(log_straight)
    state = read_binary(workdir / "snap/tiny_iter_12.solverstate", pb.SolverState())
    assert state.iter == 12 and state.learned_net == "tiny_iter_12.caffemodel"


def test_a_resume_keeps_the_first_run_s_seed(workdir):
    """Without random_seed every run draws its own seed; a resumed one takes the snapshot's
    (the data layers reseed), so it continues exactly as the first run would have."""
    solver_path = setup_files(workdir, scheme="random")
    text = (workdir / "solver.prototxt").read_text().replace("random_seed: 3\n", "")
    (workdir / "solver.prototxt").write_text(text)
    first = Solver(solver_path, say=lambda m: None, progress=False)
    first.solve()
    final = weights(first)
    for f in (workdir / "snap").glob("tiny_iter_12.*"):
        f.unlink()
    resumed = Solver(solver_path, say=lambda m: None, progress=False)
    assert resumed.seed != first.seed
    resumed.solve(resume="auto")
    assert resumed.seed == first.seed and resumed.iter == 12
    for n, w in weights(resumed).items():
        torch.testing.assert_close(w, final[n], rtol=0, atol=0)


def test_weights_include_the_fixed_partition(workdir):
    solver = Solver(setup_files(workdir, max_iter=4), say=lambda m: None, progress=False)
    solver.solve()
    partition = solver.net.layer("conv").module.scheme.partition.clone()
    # The test net shares the train net's partition, not a draw of its own.
    assert solver.test_nets[0].layer("conv").module.scheme.partition is \
        solver.net.layer("conv").module.scheme.partition
    from rapa.snapshot import load_weights
    net = Net(parse_text(NET % "random_fixed", pb.NetParameter()), pb.TEST)
    assert not torch.equal(net.layer("conv").module.scheme.partition, partition)
    load_weights(net, workdir / "snap/tiny_iter_4.caffemodel")
    assert torch.equal(net.layer("conv").module.scheme.partition, partition)
    net.close()


def test_nan_loss_stops_and_keeps_last_snapshot(workdir):
    setup_files(workdir, max_iter=12)
    text = (workdir / "solver.prototxt").read_text().replace(
        'lr_policy: "step"\ngamma: 0.5\nstepsize: 7', 'lr_policy: "multistep"\ngamma: 1e30\n'
        'stepvalue: 5')  # a sane rate until iteration 5, then an absurd one
    (workdir / "solver.prototxt").write_text(text)
    solver = Solver(str(workdir / "solver.prototxt"), say=lambda m: None, progress=False)
    with pytest.raises(Stop, match=r"loss is (nan|inf) at iteration \d+ .*the last good "
                                   r"snapshot is snap/tiny_iter_4.solverstate") as e:
        solver.solve()
    assert e.value.code == 3
    assert latest_snapshot("snap/tiny").name == "tiny_iter_4.solverstate"


@pytest.mark.parametrize("old,new,message", [
    ("base_lr: 0.05", "base_lr: -0.05", "base_lr must be finite and >= 0, got -0.05"),
    ("base_lr: 0.05", "base_lr: inf", "base_lr must be finite and >= 0, got inf"),
    ("momentum: 0.9", "momentum: 9", "momentum must be in [0, 1), got 9"),
    ("weight_decay: 0.001", "weight_decay: nan", "weight_decay must be finite and >= 0, got nan"),
    ("test_iter: 2", "test_iter: 0", "test_iter must be >= 1, got 0"),
    ("test_votes: 3", "test_votes: 0", "test_votes must be >= 1, got 0"),
    ("warmup_iter: 2", "warmup_iter: -1", "warmup_iter must be >= 0, got -1"),
    ("warmup_factor: 0.1", "warmup_factor: 0", "warmup_factor must be finite and > 0, got 0"),
    ("display: 2", "display: 2\niter_size: 0", "iter_size must be >= 1, got 0"),
    ("gamma: 0.5", "gamma: nan", "gamma must be finite, got nan"),
    ("display: 2", "display: 2\npower: nan", "power must be finite, got nan"),
    ("display: 2", "display: 2\nclip_gradients: nan", "clip_gradients must be finite, got nan"),
])
def test_solver_values_out_of_range_name_the_field(workdir, old, new, message):
    path = pathlib.Path(setup_files(workdir))
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(RapaError, match=re.escape(f"{path}: {message}")):
        Solver(str(path), say=lambda m: None, progress=False)


def test_unusable_snapshot_folder_fails_before_training(workdir):
    path = pathlib.Path(setup_files(workdir))
    path.write_text(path.read_text().replace('snapshot_prefix: "snap/tiny"',
                                             'snapshot_prefix: "net.prototxt/tiny"'))
    solver = Solver(str(path), say=lambda m: None, progress=False)
    with pytest.raises(RapaError, match=re.escape(
            "snapshot_prefix: net.prototxt is a file, where a folder is needed")):
        solver.solve()
    assert solver.iter == 0
    solver.close()


@pytest.mark.parametrize("ignore", [False, True])
def test_label_outside_the_classifier_names_database_and_key(workdir, ignore):
    images, labels = random_images(40, h=8, w=8, classes=3)
    labels[6] = 7  # the second batch of 4 holds it; the net has 3 classes
    write_lmdb(workdir / "train_lmdb", images, labels)
    path = setup_files(workdir, max_iter=3)
    if ignore:  # the loss skips label 7 then, and training runs
        net = workdir / "net.prototxt"
        net.write_text(net.read_text().replace(
            'type: "SoftmaxWithLoss" bottom: "ip"',
            'type: "SoftmaxWithLoss" loss_param { ignore_label: 7 } bottom: "ip"'))
    solver = Solver(path, say=lambda m: None, progress=False)
    try:
        if ignore:
            assert solver.solve() == 3
        else:
            with pytest.raises(RapaError, match=re.escape(
                    "train_lmdb, key '00006': label 7, but layer 'loss' (SoftmaxWithLoss) takes "
                    "labels in [0, 3)")):
                solver.solve()
            assert solver.iter == 1
    finally:
        solver.close()


def _train_cmd(workdir, *extra):
    return [sys.executable, "-m", "rapa", "train", "--solver", "solver.prototxt",
            "--no-progress", *extra]


def _start_training(workdir, new_group=False) -> subprocess.Popen:
    """A `rapa train` process, returned once its log has 3 lines (it is mid-run); with
    `new_group`, leading a process group of its own (to signal it as a terminal does)."""
    proc = subprocess.Popen(_train_cmd(workdir), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_group)
    log = workdir / "snap/tiny_log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not (
            log.exists() and len(read_log_lines(log)) >= 3):
        time.sleep(0.05)
    return proc


def test_interrupt_writes_snapshot_then_resume_matches(workdir):
    setup_files(workdir, max_iter=400)
    proc = _start_training(workdir)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGINT at iteration" in err and "resume with: rapa train" in err
    assert "Traceback" not in err
    snap = latest_snapshot("snap/tiny")
    assert snap is not None
    assert int(snap.stem.rsplit("_", 1)[1]) < 400


def test_worker_processes_train_as_a_thread_resume_exactly_and_outlive_ctrl_c(workdir):
    """data_param.processes: the same batches as one thread, so the same weights bit for bit,
    through test passes (which seek back every time) and a resume; a Ctrl-C, which reaches
    the workers too, stops the run with its snapshot as with threads."""
    solver_path = setup_files(workdir, scheme="random")
    straight = Solver(solver_path, say=lambda m: None, progress=False)
    straight.solve()
    final = weights(straight)
    for f in (workdir / "snap").iterdir():
        f.unlink()
    net = workdir / "net.prototxt"
    net.write_text(net.read_text().replace("backend: LMDB }", "backend: LMDB processes: 2 }"))
    assert net.read_text().count("processes: 2") == 2
    first = Solver(solver_path, max_iter=8, say=lambda m: None, progress=False)
    assert first.net.layer("data").prefetcher.processes == 2
    first.solve()
    first.close()
    resumed = Solver(solver_path, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    resumed.close()
    for n, w in weights(resumed).items():
        torch.testing.assert_close(w, final[n], rtol=0, atol=0)
    for f in (workdir / "snap").iterdir():
        f.unlink()
    (workdir / "solver.prototxt").write_text(SOLVER % 400)
    proc = _start_training(workdir, new_group=True)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does on Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGINT at iteration" in err and "Traceback" not in err
    assert latest_snapshot("snap/tiny") is not None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_to_the_group_stops_a_run_with_worker_processes_with_its_snapshot(workdir, sig):
    """A timeout or a batch system's cancel (SIGTERM), a closed terminal or ssh session
    (SIGHUP) signal the whole group: the workers ignore it, the run stops as on Ctrl-C."""
    setup_files(workdir, max_iter=400)
    net = workdir / "net.prototxt"
    net.write_text(net.read_text().replace("backend: LMDB }", "backend: LMDB processes: 2 }"))
    proc = _start_training(workdir, new_group=True)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"{sig.name} at iteration" in err and "Traceback" not in err
    assert latest_snapshot("snap/tiny") is not None


def test_a_closed_standard_output_does_not_stop_the_run(workdir):
    """`rapa train ... | head -1`: the pipe closes after the first line; the run trains to
    its end (snapshot and log complete) instead of dying of a broken pipe."""
    setup_files(workdir, max_iter=12)
    proc = subprocess.Popen(_train_cmd(workdir), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err
    assert latest_snapshot("snap/tiny").name == "tiny_iter_12.solverstate"
    assert max(e["iter"] for e in read_log_lines(workdir / "snap/tiny_log.jsonl")) == 12


def test_a_second_signal_stops_at_once_and_takes_the_data_workers_along(workdir, monkeypatch,
                                                                         capsys):
    """It says the newest complete snapshot and how to resume from it (one being written
    when the signal came is lost)."""
    import rapa.solver
    solver = Solver(setup_files(workdir, max_iter=8), say=lambda m: None, progress=False)
    solver.solve()  # snapshots at 4 and 8
    (workdir / "snap/tiny_iter_12.caffemodel.tmp").write_bytes(b"half")
    done = []

    class Exited(Exception):
        pass

    def exit_(code):
        done.append(("exit", code))
        raise Exited
    monkeypatch.setattr(rapa.solver, "stop_worker_processes", lambda: done.append("workers"))
    monkeypatch.setattr(rapa.solver.os, "_exit", exit_)
    try:
        solver._on_signal(signal.SIGINT, None)
        assert done == [] and solver._interrupted == "SIGINT"
        with pytest.raises(Exited):
            solver._on_signal(signal.SIGTERM, None)
        assert done == ["workers", ("exit", 130)]
        last = latest_snapshot("snap/tiny")
        assert last.name == "tiny_iter_8.solverstate"
        assert capsys.readouterr().err == (
            f"\nSIGTERM again at iteration 8: stopped at once; the last good snapshot is {last}; "
            f"resume with: rapa train --solver {workdir / 'solver.prototxt'} --snapshot {last}\n")
        for f in (workdir / "snap").iterdir():
            f.unlink()
        with pytest.raises(Exited):
            solver._on_signal(signal.SIGINT, None)
        assert capsys.readouterr().err == ("\nSIGINT again at iteration 8: stopped at once; no "
                                           "snapshot was written\n")
    finally:
        solver.close()


@pytest.mark.parametrize("killed", ["one", "all"])
def test_a_killed_data_worker_process_stops_the_run_with_one_line(workdir, killed):
    """One worker killed, or all of the train and test nets' workers at once (each death
    that torch's loaders see could be raised again while the others shut down)."""
    setup_files(workdir, max_iter=400)
    net = workdir / "net.prototxt"
    net.write_text(net.read_text().replace("backend: LMDB }", "backend: LMDB processes: 2 }"))
    proc = _start_training(workdir)
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = children.read_text().split() if children.exists() else []
    if not workers:
        proc.kill()
        pytest.skip("the system does not list a process's children")
    assert len(workers) == 4  # two for each net
    for pid in workers[:1] if killed == "one" else workers:
        os.kill(int(pid), signal.SIGKILL)  # as the kernel's out-of-memory killer does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    # the database whose worker died, when the run stopped and what it can resume from
    assert re.fullmatch(r"rapa train: database (train|test)_lmdb: a worker process preparing "
                        r"batches stopped \(pid \d+ killed by SIGKILL(, pid \d+ killed by "
                        r"SIGKILL)*\) at iteration \d+: training "
                        r"stopped; (the last good snapshot is snap/tiny_iter_\d+\.solverstate|"
                        r"no snapshot was written)\n", err), err


def test_kill_9_mid_run_loses_nothing(workdir):
    """kill -9 at a random moment (often mid-snapshot, with snapshots every iteration), then
    resume: the result equals an uninterrupted run's."""
    setup_files(workdir, max_iter=30)
    solver = workdir / "solver.prototxt"
    solver.write_text(solver.read_text().replace("snapshot: 4", "snapshot: 1"))
    subprocess.run(_train_cmd(workdir), cwd=workdir, check=True, capture_output=True)
    final = read_binary(workdir / "snap/tiny_iter_30.caffemodel", pb.NetParameter())
    for f in (workdir / "snap").iterdir():
        f.unlink()
    for delay in (2.5, 3.0):  # after start-up, while iterations and snapshots are written
        proc = subprocess.Popen(_train_cmd(workdir, "--snapshot", "auto"), cwd=workdir,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    # A crash can leave a half-written temporary file: it must be ignored.
    (workdir / "snap/.tiny_iter_99.solverstate.tmp123").write_bytes(b"\x08")
    (workdir / "snap/tiny_iter_98.solverstate").write_bytes(b"\x08\x62\x12\x05nope!")
    r = subprocess.run(_train_cmd(workdir, "--snapshot", "auto"), cwd=workdir, check=True,
                       capture_output=True, text=True)
    assert ("Skipped snap/tiny_iter_98.solverstate: not a complete snapshot (it does not parse, "
            "or its weights file is missing)") in r.stdout
    again = read_binary(workdir / "snap/tiny_iter_30.caffemodel", pb.NetParameter())
    assert again == final


def test_log_has_epochs_and_the_training_accuracy_between_tests(workdir):
    """Table 1's training error: top-1 hits of the training batches' scores since the last
    test, against the scores and labels the net produced; epochs = images seen / records."""
    solver = Solver(setup_files(workdir, max_iter=10, scheme="random"), say=lambda m: None,
                    progress=False)
    seen = []
    forward = solver.net.forward

    def spy(*args, **kw):
        blobs = forward(*args, **kw)
        if solver.net.training:
            seen.append((blobs["ip"].detach().argmax(1) == blobs["label"].long()).tolist())
        return blobs
    solver.net.forward = spy
    solver.solve()
    assert len(seen) == 10 and len(seen[0]) == 4
    tests = [e for e in read_log_lines(workdir / "snap/tiny_log.jsonl") if e["phase"] == "test"]
    assert [e["iter"] for e in tests] == [0, 5, 10]
    assert "train_accuracy" not in tests[0]  # nothing trained before the first test
    for entry, batches in zip(tests[1:], (seen[:5], seen[5:])):
        hits = [h for batch in batches for h in batch]
        assert entry["train_accuracy"] == sum(hits) / len(hits)
    assert 0 < sum(sum(b) for b in seen) < 40  # the two halves can differ
    assert [e["epoch"] for e in tests] == [0.0, 0.5, 1.0]  # 5 batches of 4 of 40 records
    train = [e for e in read_log_lines(workdir / "snap/tiny_log.jsonl") if e["phase"] == "train"]
    assert [e["epoch"] for e in train] == [e["iter"] * 4 / 40 for e in train]


@pytest.mark.parametrize("clip", [0.0, 0.5, 3.0, 50.0])
def test_update_clips_the_summed_gradients_then_averages_them_as_caffe(workdir, clip):
    """Caffe's ApplyUpdate: ClipGradients on the gradients summed over iter_size passes, then
    Normalize (/ iter_size), Regularize (+ decay * decay_mult * w), momentum. clip 3 lies
    between the averaged and the summed norm, so clipping after averaging would not clip."""
    solver = Solver(setup_files(workdir, max_iter=1, solver_extra=f"iter_size: 2\n"
                                f"clip_gradients: {clip}\n"), say=lambda m: None,
                    progress=False)
    gen = torch.Generator().manual_seed(0)
    grads = [0.2 * torch.randn(b.blob.shape, generator=gen, dtype=b.blob.dtype)
             for b in solver.params]
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    assert norm / 2 < 3.0 < norm < 50.0  # the case where the order decides
    before = [b.blob.detach().double().clone() for b in solver.params]
    for b, g in zip(solver.params, grads):
        b.blob.grad = g.clone()
    rate = 0.1
    solver.rate_t.fill_(rate)
    solver._update()
    factor = clip / norm if 0 < clip < norm else 1.0
    for b, g, w in zip(solver.params, grads, before):
        expect = g.double() * factor / 2 + 0.001 * b.spec.decay_mult * w
        expect = w - rate * b.spec.lr_mult * expect  # zero history: one step of the rate
        torch.testing.assert_close(b.blob.detach().double(), expect, rtol=1e-6, atol=1e-7)


def test_a_log_file_given_as_a_link_is_written_through_it(workdir):
    (workdir / "logs").mkdir()
    (workdir / "run.jsonl").symlink_to(workdir / "logs/real.jsonl")
    solver = Solver(setup_files(workdir, max_iter=4, solver_extra='log_file: "run.jsonl"\n'),
                    say=lambda m: None, progress=False)
    solver.solve()
    assert (workdir / "run.jsonl").is_symlink()
    assert read_log_lines(workdir / "logs/real.jsonl")[-1]["iter"] == 4
    resumed = Solver(setup_files(workdir, max_iter=6, solver_extra='log_file: "run.jsonl"\n'),
                     say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    assert (workdir / "run.jsonl").is_symlink()
    assert read_log_lines(workdir / "logs/real.jsonl")[-1]["iter"] == 6


def test_a_caffemodel_given_as_the_snapshot_is_named(workdir):
    path = setup_files(workdir, max_iter=4)
    Solver(path, say=lambda m: None, progress=False).solve()
    model = workdir / "snap/tiny_iter_4.caffemodel"
    with pytest.raises(RapaError, match=re.escape(f"{model}: not a solver state (no learned_net)"
                                                  f": --snapshot takes a .solverstate")):
        Solver(path, say=lambda m: None, progress=False).solve(resume=str(model))


def _history_shape(state):
    state.history[0].shape.dim[0] = 3  # (3, 4, 3, 3, 3): 324 values, 432 held


def _history_nan(state):
    state.history[1].data[0] = math.nan


def _cursor(state):
    state.data_cursor[0].batches = -2


@pytest.mark.parametrize("field,value,message", [
    ("rng_state", b"\x01\x02\x03", "rng_state is damaged (3 bytes that are no generator state)"),
    ("iter", -5, "iter is -5; a snapshot's iteration is >= 0"),
    ("world_size", 0, "world_size is 0; a run has >= 1 process"),
    (None, _history_shape, "momentum blob 0: a blob of shape (3, 4, 3, 3, 3) holds 432 values"),
    (None, _history_nan, "momentum blob 1 holds NaN or infinite values"),
    (None, _cursor, "the data position of layer 'data' is -2; it counts batches read, >= 0"),
])
def test_a_damaged_solverstate_names_the_file_and_field(workdir, field, value, message):
    path = setup_files(workdir, max_iter=4)
    Solver(path, say=lambda m: None, progress=False).solve()
    state_path = workdir / "snap/tiny_iter_4.solverstate"
    state = read_binary(state_path, pb.SolverState())
    if field is None:
        value(state)
    else:
        setattr(state, field, value)
    state_path.write_bytes(state.SerializeToString())
    with pytest.raises(RapaError, match=re.escape(f"{state_path}: {message}")):
        Solver(path, say=lambda m: None, progress=False).solve(resume=str(state_path))


def test_weights_that_share_no_layer_with_the_net_are_refused(workdir):
    """--weights fine-tunes: layers the file lacks keep their fillers (said once), but a file
    with none of the net's layers (empty, or another net's) is refused."""
    path = setup_files(workdir, max_iter=2)
    (workdir / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(RapaError, match=re.escape("empty.caffemodel: holds none of the net's "
                                                  "layers with weights (conv, pool, ip)")):
        Solver(path, say=lambda m: None, progress=False).solve(weights="empty.caffemodel")
    first = Solver(path, say=lambda m: None, progress=False)
    first.solve()
    model = read_binary(workdir / "snap/tiny_iter_2.caffemodel", pb.NetParameter())
    del model.layer[2:]  # conv and pool only: ip starts from its filler
    (workdir / "part.caffemodel").write_bytes(model.SerializeToString())
    said = []
    Solver(path, max_iter=1, say=said.append, progress=False).solve(weights="part.caffemodel",
                                                                    overwrite=True)
    assert "part.caffemodel: no weights for ip: they start from their fillers" in said


def test_temporaries_of_killed_writes_are_removed_and_failed_writes_named(workdir, monkeypatch):
    from rapa import fileio
    path = setup_files(workdir, max_iter=2)
    (workdir / "snap").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = workdir / f"snap/.tiny_iter_4.solverstate.tmp{dead}"
    stale.write_bytes(b"half a snapshot")
    live = workdir / f"snap/.tiny_iter_4.caffemodel.tmp{os.getpid()}"  # a live writer's
    live.write_bytes(b"being written")
    said = []
    Solver(path, say=said.append, progress=False).solve()
    assert not stale.exists() and live.exists()
    assert f"Removed snap/.tiny_iter_4.solverstate.tmp{dead}, left by a run killed while " \
           f"writing it" in said

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    target = workdir / "x.bin"
    with pytest.raises(RapaError, match=re.escape(f"{target}: cannot write it (No space left on "
                                                  f"device); the previous version")):
        fileio.atomic_write_bytes(target, b"data")
    assert list(workdir.glob(".x.bin.tmp*")) == []


def test_one_run_per_snapshot_prefix_and_each_state_with_its_own_weights(workdir):
    """A second run on a prefix in use is refused (the lock); a state resumes only with the
    weights file written with it, not one another run put under the same name."""
    from rapa.fileio import hold_lock
    path = setup_files(workdir, max_iter=8)
    (workdir / "snap").mkdir()
    held = hold_lock(workdir / "snap/tiny.lock", "the first run")
    try:
        with pytest.raises(RapaError, match=r"snapshot_prefix snap/tiny: another run is using it "
                                            rf"\(pid {os.getpid()}; lock snap/tiny.lock\)"):
            Solver(path, say=lambda m: None, progress=False).solve()
    finally:
        held.close()
    Solver(path, say=lambda m: None, progress=False).solve()
    other = workdir / "snap/tiny_iter_4.caffemodel"  # another run's weights under the name
    (workdir / "snap/tiny_iter_8.caffemodel").write_bytes(other.read_bytes())
    with pytest.raises(RapaError, match="tiny_iter_8.solverstate: snap/tiny_iter_8.caffemodel is "
                                        "not the weights file written with it"):
        Solver(path, say=lambda m: None, progress=False).solve(resume="auto")


@pytest.mark.parametrize("gap", [0.0, 0.02, 0.2])
def test_a_second_ctrl_c_stops_at_once_and_quietly(workdir, gap):
    """Two Ctrl-Cs (at once, or apart): exit 130 (or death by SIGINT when the second comes
    while Python shuts down: what a shell reports as 130 too), no traceback, no abort, no
    temporary left for good, and the newest snapshot, if any, resumes."""
    setup_files(workdir, max_iter=400)
    proc = _start_training(workdir)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "terminate called" not in err, err
    newest = latest_snapshot("snap/tiny")
    done = int(newest.stem.rsplit("_", 1)[1]) if newest else 0
    resumed = Solver("solver.prototxt", max_iter=done + 2, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    assert resumed.iter == done + 2 and not list((workdir / "snap").glob(".*.tmp*"))


@pytest.mark.parametrize("scheme", ["random_fixed", "random"])
def test_a_signal_during_a_test_stops_before_the_step_and_the_resume_tests_again(workdir,
                                                                                 scheme):
    """Caffe's "Test interrupted": the test stops at its next batch, the snapshot is of the
    test's iteration (no step taken), its lines are not logged, and the resumed run tests
    that iteration again and ends as an uninterrupted run does. With random tiling the test
    draws its own partitions, from the generator the training draws from."""
    path = setup_files(workdir, max_iter=12, scheme=scheme)
    pathlib.Path(path).write_text(pathlib.Path(path).read_text().replace("snapshot: 4",
                                                                         "snapshot: 100"))
    whole = Solver(path, say=lambda m: None, progress=False)
    whole.solve()
    final, log = weights(whole), read_log_lines(workdir / "snap/tiny_log.jsonl")
    for f in (workdir / "snap").iterdir():
        f.unlink()

    solver = Solver(path, say=lambda m: None, progress=False)
    from rapa import evaluate
    calls = []
    run_test = solver_module.test_net

    def test_with_a_signal(net, iterations, *args, stop, **kw):
        calls.append(solver.iter)
        batches = []

        def signal_after_a_batch():
            # The signal comes while the second test reads its second batch, after the
            # first has drawn (random tiling) from the training's generator.
            batches.append(1)
            if solver.iter == 5 and len(batches) == 2:
                solver._interrupted = "SIGINT"
            return stop()
        return run_test(net, iterations, *args, stop=signal_after_a_batch, **kw)
    solver_module.test_net = test_with_a_signal
    try:
        with pytest.raises(Stop, match="SIGINT at iteration 5: stopped after writing "
                           "snap/tiny_iter_5.solverstate"):
            solver.solve()
    finally:
        solver_module.test_net = run_test
    assert calls == [0, 5] and evaluate.test_net is run_test
    cut = read_log_lines(workdir / "snap/tiny_log.jsonl")
    assert [e["iter"] for e in cut if e["phase"] == "test"] == [0]
    resumed = Solver(path, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    assert all(torch.equal(final[k], v) for k, v in weights(resumed).items())
    again = read_log_lines(workdir / "snap/tiny_log.jsonl")
    strip = lambda entries: [{k: v for k, v in e.items() if k != "images_per_s"}  # noqa: E731
                             for e in entries]
    assert strip(again) == strip(log)


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".solverstate", ".caffemodel"))


def test_a_start_that_would_overwrite_an_earlier_run_is_refused_and_overwrite_removes_it(workdir):
    """A fresh start, a resume from another prefix's snapshot, or a resume from one of the
    prefix's own snapshots before its newest would overwrite the earlier run's snapshots and
    log: refused in one line that names them, nothing touched; --overwrite removes them."""
    path = setup_files(workdir, max_iter=8)  # snapshots at 4 and 8, tests at 0 and 5
    Solver(path, say=lambda m: None, progress=False).solve()
    snap, log = workdir / "snap", workdir / "snap/tiny_log.jsonl"
    before, lines = _files(snap), log.read_text()
    assert before == ["tiny_iter_4.caffemodel", "tiny_iter_4.solverstate",
                      "tiny_iter_8.caffemodel", "tiny_iter_8.solverstate"]
    last_log_iter = max(e["iter"] for e in read_log_lines(log))
    with pytest.raises(RapaError) as fresh:
        Solver(path, say=lambda m: None, progress=False).solve()
    assert str(fresh.value) == (
        f"{path}: snapshot_prefix snap/tiny holds an earlier run (2 snapshots, iterations 4 "
        f"to 8 and a log to iteration {last_log_iter} in snap/tiny_log.jsonl), which starting "
        f"afresh would overwrite: resume its newest with --snapshot auto, give the solver "
        f"another snapshot_prefix, or pass --overwrite to remove it")
    said = []  # (with another max_iter: the resume's notice only once the start is sure)
    with pytest.raises(RapaError, match="holds an earlier run \\(a snapshot of iteration 8\\), "
                       "which resuming from its iteration 4 would overwrite: resume its newest"):
        Solver(path, say=said.append, progress=False, max_iter=20).solve(
            resume="snap/tiny_iter_4.solverstate")
    assert not [m for m in said if "another solver" in m], said
    shutil.copytree(snap, workdir / "other")
    with pytest.raises(RapaError, match="which resuming from other/tiny_iter_8.solverstate "
                       "would overwrite"):
        Solver(path, say=lambda m: None, progress=False).solve(
            resume="other/tiny_iter_8.solverstate")
    assert _files(snap) == before and log.read_text() == lines  # nothing touched
    # The newest of its own: resumed (max_iter 8: nothing to do), nothing removed.
    Solver(path, say=lambda m: None, progress=False).solve(resume="auto")
    assert _files(snap) == before

    said = []
    Solver(path, say=said.append, progress=False).solve(resume="snap/tiny_iter_4.solverstate",
                                                        overwrite=True)
    assert "Removed an earlier run under snap/tiny: a snapshot of iteration 8" in said
    assert _files(snap) == before  # iteration 8 removed, then written again by this run
    assert [e["iter"] for e in read_log_lines(log)] == \
        [e["iter"] for e in read_log_lines(workdir / "other/tiny_log.jsonl")]

    with pytest.raises(RapaError, match=re.escape(
            "--weights snap/tiny_iter_8.caffemodel is one of the earlier run's snapshots that "
            "--overwrite would remove: copy it elsewhere first")):
        Solver(path, say=lambda m: None, progress=False).solve(
            weights="snap/tiny_iter_8.caffemodel", overwrite=True)
    assert _files(snap) == before
    said.clear()
    Solver(setup_files(workdir, max_iter=3), say=said.append, progress=False).solve(
        overwrite=True)
    assert said[0].startswith("Removed an earlier run under snap/tiny: 2 snapshots, iterations "
                              "4 to 8 and a log to iteration")
    assert _files(snap) == ["tiny_iter_3.caffemodel", "tiny_iter_3.solverstate"]
    assert max(e["iter"] for e in read_log_lines(log)) <= 3

    # Another prefix's snapshot into an empty prefix: allowed; the log starts empty there.
    for f in snap.iterdir():
        f.unlink()
    Solver(setup_files(workdir, max_iter=10), say=lambda m: None, progress=False).solve(
        resume="other/tiny_iter_8.solverstate")
    assert [(e["iter"], e["phase"]) for e in read_log_lines(log)] == [(10, "train"),
                                                                       (10, "test")]
    assert _files(snap) == ["tiny_iter_10.caffemodel", "tiny_iter_10.solverstate"]


def test_auto_without_a_snapshot_replaces_a_log_there_is_nothing_to_resume_with(workdir):
    path = setup_files(workdir, max_iter=2)
    (workdir / "snap").mkdir()
    (workdir / "snap/tiny_log.jsonl").write_text('{"iter": 1, "phase": "train", "loss": 1.0}\n')
    with pytest.raises(RapaError, match="a log to iteration 1 in snap/tiny_log.jsonl\\), which "
                       "starting afresh would overwrite: give the solver another"):
        Solver(path, say=lambda m: None, progress=False).solve()
    said = []
    Solver(path, say=said.append, progress=False).solve(resume="auto")
    assert "Replacing snap/tiny_log.jsonl, the log of a run with no snapshot to resume" in said
    assert [e["iter"] for e in read_log_lines(workdir / "snap/tiny_log.jsonl")][0] == 0


def test_a_resume_says_how_its_solver_and_net_differ_from_the_snapshot_s(workdir):
    """Caffe resumes with whatever solver it is given; the snapshot keeps the run's solver and
    training net, and a resume with others says what changed, in one line (nothing when they
    are the same)."""
    path = setup_files(workdir, max_iter=4)
    Solver(path, say=lambda m: None, progress=False).solve()
    said = []
    Solver(path, max_iter=4, say=said.append, progress=False).solve(resume="auto")
    assert not [m for m in said if "another solver" in m]
    solver = workdir / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.05", "base_lr: 0.01")
                      .replace("random_seed: 3", "random_seed: 7"))
    net = workdir / "net.prototxt"
    text = net.read_text()
    net.write_text(text.replace("batch_size: 5", "batch_size: 6")  # the TEST Data layer
                   .replace('top: "conv" }', 'top: "conv" }\nlayer { name: "drop" type: '
                            '"Dropout" bottom: "conv" top: "conv" }', 1))
    assert net.read_text() != text
    said.clear()
    Solver(path, max_iter=6, say=said.append, progress=False).solve(resume="auto")
    assert said[0] == (f"note: {path}: test_iter 2 of test net #0: 2 batches of 6 read 12 "
                       f"images, the database of layer 'data' holds 10: 2 are read again (they "
                       f"count twice)")
    assert said[1] == (
        "snap/tiny_iter_4.solverstate was written with another solver or net; now: base_lr "
        "0.05 -> 0.01; max_iter 4 -> 6; random_seed 3 -> 7 (the run keeps its seed, 3); "
        "net: layer data #2 changed: data_param; net: layer drop added")
    assert "seed 3)" in said[3]  # the run goes on with the snapshot's seed, as it says


def test_a_finished_run_resumed_trains_nothing_and_writes_no_snapshot_again(workdir):
    path = setup_files(workdir, max_iter=3)  # snapshot: 4, so iteration 3's is the final one
    Solver(path, say=lambda m: None, progress=False).solve()
    state = workdir / "snap/tiny_iter_3.solverstate"
    written = state.stat().st_mtime_ns
    said = []
    Solver(path, say=said.append, progress=False).solve(resume="auto")
    assert "Nothing to train: the run is at iteration 3, max_iter is 3" in said
    assert not [m for m in said if m.startswith("Snapshot:")]
    assert state.stat().st_mtime_ns == written


@pytest.mark.parametrize("batch,start,again", [(8, 2, 0), (6, 2, 4)])
def test_a_resume_with_another_batch_size_reads_on_from_the_same_record(workdir, batch, start,
                                                                        again):
    """The snapshot keeps its batch size with its position: 4 batches of 4 are 16 records, so
    a batch of 8 starts at batch 2 (record 16) and a batch of 6 at batch 2 (record 12, 4 read
    again); the epoch counts the images seen."""
    path = setup_files(workdir, max_iter=4)
    Solver(path, say=lambda m: None, progress=False).solve()
    net = workdir / "net.prototxt"
    assert net.read_text().count("batch_size: 4") == 1  # the TRAIN Data layer's
    net.write_text(net.read_text().replace("batch_size: 4", f"batch_size: {batch}"))
    said = []
    solver = Solver(path, max_iter=5, say=said.append, progress=False)
    solver.solve(resume="auto")
    assert (f"layer 'data': batch_size 4 -> {batch}: reads on from record {start * batch}"
            + (f" ({again} read again)" if again else "")) in said
    assert solver.net.data_layers()[0].position == start + 1
    assert solver.epoch() == round((start + 1) * batch / 40, 4)


def _first_layers(net, count):
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[count:]
    return out


def test_the_changes_of_a_resume_show_repeated_values_and_several_layers():
    from rapa.resume_changes import message_changes, net_changes
    a = pb.SolverParameter(test_iter=[5], base_lr=0.1)
    b = pb.SolverParameter(test_iter=[100, 2], base_lr=0.1, lr_policy="step")
    assert message_changes(a, b) == ["test_iter [5] -> [100, 2]", 'lr_policy "" -> "step"']
    before = parse_text('name: "n" layer { name: "a" type: "ReLU" } layer { name: "b" type: '
                        '"ReLU" } layer { name: "c" type: "ReLU" }', pb.NetParameter())
    after = parse_text('name: "m" layer { name: "a" type: "TanH" } layer { name: "b" type: '
                       '"Sigmoid" }', pb.NetParameter())
    assert net_changes(before, after) == ["layers a, b changed", "layer c removed",
                                          'name "n" -> "m"']
    assert message_changes(pb.SolverParameter(solver_mode=pb.SolverParameter.CPU),
                           pb.SolverParameter(solver_mode=pb.SolverParameter.GPU)) == \
        ["solver_mode CPU -> GPU"]
    many = pb.NetParameter()
    for i in range(8):
        many.layer.add(name=f"l{i}", type="ReLU")
    renamed = pb.NetParameter()
    renamed.CopyFrom(many)
    for layer in renamed.layer:
        layer.type = "TanH"
    assert net_changes(many, renamed) == ["layers l0, l1, l2, l3, l4, l5 and 2 more changed"]
    # float32 neighbours shown with the digits that tell them apart; NaN kept is no change; a
    # default written out is named as such.
    near = pb.SolverParameter(base_lr=0.1, momentum=float("nan"))
    near.base_lr = 0.10000000894069672  # the next float32 after 0.1
    assert message_changes(pb.SolverParameter(base_lr=0.1, momentum=float("nan")), near) == \
        ["base_lr 0.100000001 -> 0.100000009"]
    plain = parse_text('layer { name: "r" type: "ReLU" }', pb.NetParameter())
    explicit = parse_text('layer { name: "r" type: "ReLU" relu_param { } }', pb.NetParameter())
    assert net_changes(plain, explicit) == ["layer r changed: a field's default written out or "
                                            "left out"]
    # Exactly _SHOWN (6) names are all listed; one more is "and 1 more".
    for count, tail in ((6, "l5 changed"), (7, "l5 and 1 more changed")):
        assert net_changes(_first_layers(many, count), _first_layers(renamed, count)) == \
            [f"layers l0, l1, l2, l3, l4, {tail}"]
    # Two layers added: plural; booleans as in prototxt; a layer's changed fields, listed.
    two = _first_layers(many, 2)
    assert net_changes(_first_layers(many, 0), two) == ["layers l0, l1 added"]
    after_one = pb.NetParameter()
    after_one.CopyFrom(two)
    after_one.layer[0].type, after_one.layer[0].bottom[:] = "TanH", ["x"]
    after_one.force_backward = True
    assert net_changes(two, after_one) == ["layer l0 changed: type \"ReLU\" -> \"TanH\", "
                                           "bottom [] -> [\"x\"]", "force_backward false -> true"]
    # A net embedded in the solver: its changes said once, layer by layer.
    from rapa.resume_changes import resume_changes
    state = pb.SolverState(solver=pb.SolverParameter(net_param=many, base_lr=0.1),
                           train_net=many)
    assert resume_changes(state, pb.SolverParameter(net_param=renamed, base_lr=0.2), renamed) \
        == ["base_lr 0.1 -> 0.2", "net: layers l0, l1, l2, l3, l4, l5 and 2 more changed"]
    state.solver.train_net_param.CopyFrom(many)  # the other field that embeds a net
    assert resume_changes(state, pb.SolverParameter(train_net_param=renamed), renamed) == \
        ["base_lr 0.1 -> 0", "net: layers l0, l1, l2, l3, l4, l5 and 2 more changed"]
    state.solver.ClearField("train_net_param")
    state.ClearField("train_net")  # a state of before the net was kept: the solver's field
    assert resume_changes(state, pb.SolverParameter(net_param=renamed), renamed) == \
        ["net_param", "base_lr 0.1 -> 0"]


def test_the_earlier_run_check_reads_prefixes_and_logs_as_they_are(workdir, monkeypatch):
    """A prefix ending in / or holding pattern characters finds its snapshots; a solver's own
    log_file shared with another prefix's run, or a file that is no rapa log, is never
    replaced without --overwrite; --overwrite writes the new log before it removes anything;
    a snapshot of iteration 0 counts; resuming one's own newest by an absolute path is one's
    own; another prefix's snapshot under --overwrite starts an empty log."""
    def with_prefix(prefix, extra=""):
        path = setup_files(workdir, max_iter=4, solver_extra=extra)
        text = (workdir / "solver.prototxt").read_text()
        (workdir / "solver.prototxt").write_text(
            text.replace('snapshot_prefix: "snap/tiny"', f'snapshot_prefix: "{prefix}"'))
        return path

    for prefix, files in (("snap/", "_iter_4"), ("snap/t[1]", "t[1]_iter_4")):
        path = with_prefix(prefix)
        Solver(path, say=lambda m: None, progress=False).solve()
        assert (workdir / f"snap/{files}.solverstate").is_file()
        with pytest.raises(RapaError, match=re.escape(f"holds an earlier run (a snapshot of "
                                                      f"iteration 4 and a log to iteration 4")):
            Solver(path, say=lambda m: None, progress=False).solve()
        said = []
        Solver(path, say=said.append, progress=False).solve(resume="auto")
        assert f"Resuming from snap/{files}.solverstate at iteration 4" in said

    shared = 'log_file: "shared.jsonl"\n'
    a = with_prefix("a/run", shared)
    Solver(a, say=lambda m: None, progress=False).solve()
    lines = (workdir / "shared.jsonl").read_text()
    b = workdir / "b_solver.prototxt"
    b.write_text((workdir / "solver.prototxt").read_text().replace('"a/run"', '"b/run"'))
    with pytest.raises(RapaError, match="give the solver another snapshot_prefix and log_file, "
                                        "or pass --overwrite"):
        Solver(str(b), say=lambda m: None, progress=False).solve(resume="auto")
    assert (workdir / "shared.jsonl").read_text() == lines

    path = setup_files(workdir, max_iter=4, solver_extra='log_file: "notes.log"\n')
    (workdir / "notes.log").write_text("epoch 1 loss 2.3\nepoch 2 loss 2.1\n")
    with pytest.raises(RapaError, match=r"a log_file that is no rapa log \(notes.log:1: not a "
                                        r"JSON line"):
        Solver(path, say=lambda m: None, progress=False).solve()
    Solver(path, say=lambda m: None, progress=False).solve(overwrite=True)
    assert read_log_lines(workdir / "notes.log")[-1]["iter"] == 4

    path = setup_files(workdir, max_iter=4)
    Solver(path, say=lambda m: None, progress=False).solve(overwrite=True)
    import rapa.solver

    def unwritable(*args):
        raise OSError(30, "Read-only file system", "snap/tiny_log.jsonl")
    with monkeypatch.context() as m:
        m.setattr(rapa.solver, "TrainLog", unwritable)
        with pytest.raises(OSError):
            Solver(path, say=lambda m: None, progress=False).solve(overwrite=True)
    assert (workdir / "snap/tiny_iter_4.solverstate").is_file()  # nothing removed

    # Iteration 0's snapshot (Ctrl-C before the first step) is an earlier run's too.
    for f in (workdir / "snap").iterdir():
        f.unlink()
    Solver(path, max_iter=4, say=lambda m: None, progress=False).solve()
    for suffix in (".caffemodel", ".solverstate"):
        (workdir / f"snap/tiny_iter_4{suffix}").rename(workdir / f"snap/tiny_iter_0{suffix}")
    (workdir / "snap/tiny_log.jsonl").unlink()
    with pytest.raises(RapaError, match=r"\(a snapshot of iteration 0\)"):
        Solver(path, say=lambda m: None, progress=False).solve()

    for f in (workdir / "snap").iterdir():
        f.unlink()
    Solver(path, say=lambda m: None, progress=False).solve()
    Solver(path, say=lambda m: None, progress=False).solve(
        resume=str(workdir / "snap/tiny_iter_4.solverstate"))  # its own newest: no refusal
    shutil.copytree(workdir / "snap", workdir / "elsewhere")
    Solver(path, max_iter=5, say=lambda m: None, progress=False).solve(
        resume="elsewhere/tiny_iter_4.solverstate", overwrite=True)
    # The earlier run's lines (iterations 0 to 4) are gone: only this run's test at 5.
    assert [(e["iter"], e["phase"]) for e in read_log_lines(workdir / "snap/tiny_log.jsonl")] \
        == [(5, "test")]


def test_auto_says_a_damaged_newest_snapshot_even_without_a_complete_one(workdir):
    path = setup_files(workdir, max_iter=2)
    (workdir / "snap").mkdir()
    (workdir / "snap/tiny_iter_98.solverstate").write_bytes(b"\x08\x62\x12\x05nope!")
    said = []
    Solver(path, say=said.append, progress=False).solve(resume="auto")
    assert ("Skipped snap/tiny_iter_98.solverstate: not a complete snapshot (it does not "
            "parse, or its weights file is missing)") in said


def test_snapshots_of_another_prefix_that_starts_like_this_one_are_not_this_one_s(tmp_path):
    from rapa.snapshot import snapshots_under
    for name in ("tiny_iter_4", "tiny_iter_4_iter_8", "tinyx_iter_2"):
        (tmp_path / f"{name}.solverstate").write_bytes(b"")
        (tmp_path / f"{name}.caffemodel").write_bytes(b"")
    assert [i for i, _ in snapshots_under(str(tmp_path / "tiny"))] == [4]
    assert [i for i, _ in snapshots_under(str(tmp_path / "tiny_iter_4"))] == [8]
    # Nor are they by the states' listing (damaged ones, --snapshot auto's): tinyx_iter_2 has
    # no weights as tiny_iter_2 and would count as damaged. A name with a leading zero (or
    # other digits than ASCII's) is no snapshot: snapshot_paths would not name it.
    from rapa.snapshot import damaged_snapshots
    for name in ("tiny_iter_007", "tiny_iter_\u0663"):
        (tmp_path / f"{name}.solverstate").write_bytes(b"")
        (tmp_path / f"{name}.caffemodel").write_bytes(b"")
    assert damaged_snapshots(str(tmp_path / "tiny"), None) == [tmp_path / "tiny_iter_4.solverstate"]
    assert snapshots_under(str(tmp_path / "tiny")) == [(4, tmp_path / "tiny_iter_4.solverstate")]


def test_snapshot_listing_in_the_working_folder_damaged_states_and_partial_removal(
        tmp_path, monkeypatch):
    """A prefix without a folder lists the working folder; a state that does not parse is not
    complete; with no complete snapshot every state counts as damaged, iteration 0 included;
    removing a snapshot whose weights are already gone removes its state."""
    from rapa.snapshot import (damaged_snapshots, latest_snapshot, remove_snapshot,
                               snapshots_under)
    monkeypatch.chdir(tmp_path)
    for i in (0, 1):
        pathlib.Path(f"run_iter_{i}.solverstate").write_bytes(b"\xff\xff garbage")
        pathlib.Path(f"run_iter_{i}.caffemodel").write_bytes(b"")
    assert [i for i, _ in snapshots_under("run")] == [0, 1]
    assert latest_snapshot("run") is None  # neither parses
    assert [f.name for f in damaged_snapshots("run", None)] == \
        ["run_iter_0.solverstate", "run_iter_1.solverstate"]
    pathlib.Path("run_iter_1.caffemodel").unlink()
    remove_snapshot("run", 1)
    assert not pathlib.Path("run_iter_1.solverstate").exists()
    assert pathlib.Path("run_iter_0.caffemodel").exists()


def test_weights_files_keep_the_net_s_name_and_each_layer_s_type(workdir):
    """A .caffemodel as Caffe writes it: the net's name, and per layer with blobs its name and
    type (Caffe's tools, e.g. net surgery scripts, read them); here the fixed partition and the
    mixed pooling's parameter are blobs too."""
    from rapa.snapshot import net_to_proto
    setup_files(workdir)
    net = Net.from_file(workdir / "net.prototxt", pb.TRAIN)
    try:
        proto = net_to_proto(net)
    finally:
        net.close()
    assert proto.name == "tiny"
    assert [(lp.name, lp.type, len(lp.blobs)) for lp in proto.layer] == [
        ("conv", "Convolution", 3), ("pool", "Pooling", 1), ("ip", "InnerProduct", 2)]
