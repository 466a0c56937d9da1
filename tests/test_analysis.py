"""The paper's analyses as commands (rapa similarity, filters, reduce, fgsm, table, sweep), on
nets and data the tests make, against direct computations."""
import json
import math
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rapa.analysis.fgsm import FgsmPoint, FgsmResult, gap_reduction, loss_sign, snr_db
from rapa.analysis.filters import filter_images
from rapa.analysis.reduce import chosen_tiles, reduce_kernel
from rapa.analysis.similarity import filter_similarity, net_similarity
from rapa.analysis.table import TableRow, best_window, format_table, table_row
from rapa.cli import main
from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.snapshot import latest_snapshot, load_weights, save_weights
from test_solver import NET, SOLVER, workdir  # noqa: F401  (the fixture)

F64 = torch.float64


def test_similarity_of_identical_and_of_random_replicas():
    w = torch.randn(1, 4, 3, 3, 3).expand(5, 4, 3, 3, 3)
    torch.testing.assert_close(filter_similarity(w), torch.ones(4, dtype=F64))
    w = torch.randn(4, 3, 2, 3, 3)
    got = filter_similarity(w)
    for o in range(3):
        c = np.corrcoef(w[:, o].reshape(4, -1).numpy())
        expected = c[np.triu_indices(4, 1)].mean()
        assert got[o].item() == pytest.approx(expected, abs=1e-12)
    anti = torch.stack([w[0], -w[0]])
    torch.testing.assert_close(filter_similarity(anti), torch.full((3,), -1.0, dtype=F64))
    # Replicas without spread: equal ones count as 1, others as 0 (filter 0: two equal
    # constants and a random replica; filter 1: constants 2, 3, 3; both (1 + 0 + 0) / 3).
    flat = torch.randn(3, 2, 4)
    flat[:2, 0], flat[0, 1], flat[1, 1], flat[2, 1] = 0.5, 2.0, 3.0, 3.0
    torch.testing.assert_close(filter_similarity(flat),
                               torch.tensor([1 / 3, 1 / 3], dtype=F64))


def test_reductions_choose_replicas_per_filter():
    w = torch.randn(3, 4, 2, 3, 3)
    b = torch.randn(3, 4)
    w[2, 0] *= 10  # filter 0's largest replica: tile 2
    w[1, 3] *= 10  # filter 3's: tile 1
    gen = torch.Generator().manual_seed(0)
    norm = chosen_tiles(w, "norm", gen)
    assert norm[0] == 2 and norm[3] == 1
    assert chosen_tiles(w, "first_tile", gen).tolist() == [0, 0, 0, 0]
    tile = chosen_tiles(w, "random_tile", gen)
    assert len(set(tile.tolist())) == 1
    draws = torch.stack([chosen_tiles(w, "random_filter", gen) for _ in range(50)])
    assert len(set(draws.flatten().tolist())) == 3 and (draws != draws[:, :1]).any()
    kernel, bias = reduce_kernel(w, b, "norm", gen)
    assert torch.equal(kernel[0], w[2, 0]) and torch.equal(kernel[3], w[1, 3])
    assert bias[0] == b[2, 0] and bias[3] == b[1, 3]


def test_filter_images_one_scale_per_row():
    w = torch.zeros(2, 3, 3, 2, 2)
    w[0, 1, 0, 0, 0], w[1, 1, 0, 0, 0] = 2.0, -1.0
    images = filter_images(w, [1, 2])
    assert images.shape == (2, 2, 2, 2, 3)
    assert images[0, 0, 0, 0, 0] == 1.0 and images[0, 1, 0, 0, 0] == 0.25  # (-1/2 + 1) / 2
    assert torch.all(images[1] == 0.5)  # an all-zero filter is mid-gray
    gray = filter_images(torch.randn(2, 3, 5, 2, 2), [0])
    assert torch.equal(gray[..., 0], gray[..., 1])


def test_snr_and_gap_reduction():
    x = torch.full((1, 3, 2, 2), 100.0)
    moved = x + torch.tensor([1.0, -1.0, 1.0, 1.0] * 3).view(1, 3, 2, 2)
    assert snr_db(x, moved).item() == pytest.approx(20 * math.log10(100 * 12 ** 0.5 / 12 ** 0.5))
    assert math.isinf(snr_db(x, x).item())
    base = FgsmResult(10, 10, 1.0, 1, [FgsmPoint(1, 40.0, 0.9), FgsmPoint(4, 30.0, 0.5)])
    ours = FgsmResult(10, 10, 1.0, 1, [FgsmPoint(2, 35.0, 0.85), FgsmPoint(8, 20.0, 0.1)])
    gaps = gap_reduction(ours, base)
    assert gaps[0] == pytest.approx((0.85 - 0.7) / 0.3)  # baseline interpolated: 0.7 at 35 dB
    assert math.isnan(gaps[1])                           # outside the baseline's range


def test_table_rows_read_test_net_0_and_refuse_what_is_no_accuracy(tmp_path):
    log = tmp_path / "r_log.jsonl"

    def write(*entries):
        log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    # Accuracies 0 and 1 are accuracies; a second test net's lines are not the table's.
    write({"iter": 1, "phase": "test", "net": 0, "accuracy": 1.0, "train_accuracy": 0.0,
           "accuracy_vote": 1.0},
          {"iter": 1, "phase": "test", "net": 1, "accuracy": 0.5},
          {"iter": 2, "phase": "test", "accuracy": 0.0, "train_accuracy": 1.0})
    row = table_row(log, window=1)
    assert (row.test_error, row.train_error, row.vote_error, row.tests) == (0.0, 100.0, 0.0, 2)
    write({"iter": 1, "phase": "test", "accuracy": 0.25})
    assert table_row(log).vote_error is None  # no votes logged
    for field, value in (("accuracy", 1.5), ("accuracy_vote", 1.01), ("accuracy_vote", -0.1),
                         ("train_accuracy", 2.0), ("train_accuracy", -1e-9)):
        entry = {"iter": 3, "phase": "test", "accuracy": 0.5, field: value}
        write({"iter": 1, "phase": "test", "accuracy": 0.5}, entry)
        with pytest.raises(RapaError, match=f"{log}: 'accuracy' at iteration 3 is not an "
                                            r"accuracy in \[0, 1\]"):
            table_row(log)


def test_table_format_plain_and_markdown():
    rows = [TableRow("none_max", 26.71, 24.84, None, 5, 10.0, 11),
            TableRow("random_max_long_name", 32.95, None, 30.79, 3, None, 4)]
    assert format_table(rows) == (
        "net                   test (train) error %  vote error %  window  best by epoch  tests\n"
        "none_max              26.7 (24.8)           -             5       10             11\n"
        "random_max_long_name  33.0                  30.8          3       -              4")
    assert format_table(rows, markdown=True) == (
        "| net | test (train) error % | vote error % | window | best by epoch | tests |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| none_max | 26.7 (24.8) | - | 5 | 10 | 11 |\n"
        "| random_max_long_name | 33.0 | 30.8 | 3 | - | 4 |")


def test_net_similarity_per_layer_with_notes():
    """Layer by layer: a perforated conv (one replica: no pairs), a 2-tile random conv (its
    per-filter similarities), an untiled InnerProduct (skipped); scale does not matter."""
    net = Net(parse_text("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }
layer { name: "p" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 2
  kernel_size: 3 pad: 1 tiling_param { scheme: "perforated" num_tiles: 4 } } }
layer { name: "r" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 3
  kernel_size: 3 weight_filler { type: "gaussian" std: 0.001 }
  tiling_param { scheme: "random" num_tiles: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "b" top: "c" inner_product_param {
  num_output: 2 } }""", pb.NetParameter()), pb.TEST, source="n")
    layers, notes = net_similarity(net)
    weight = net.layer("r").kernel_replicas()[0]
    expected = filter_similarity(weight)
    assert [(x.layer, x.tiles, x.similarity, x.per_filter) for x in layers] == [
        ("p", 1, None, []), ("r", 2, float(expected.mean()), expected.tolist())]
    assert notes == ["p: one kernel replica, no pairs to compare", "ip: untiled, skipped"]
    torch.testing.assert_close(filter_similarity(weight * 1000), expected)  # norms below 1


def test_table_takes_the_best_window_with_its_training_error(tmp_path):
    assert best_window([5, 4, 3, 9, 1, 1], 2) == (1.0, 4)
    assert best_window([5, 4], 5) == (4.5, 0)
    log = tmp_path / "run_log.jsonl"
    acc = [0.5, 0.6, 0.7, 0.65, 0.8, 0.79, 0.78]
    lines = [{"iter": 10 * i, "phase": "test", "net": 0, "epoch": i + 1, "accuracy": a,
              "accuracy_vote": a + 0.02, "train_accuracy": 0.9 + i / 100}
             for i, a in enumerate(acc)]
    lines.insert(0, {"iter": 5, "phase": "train", "loss": 2.0})
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    row = table_row(log, window=3)
    assert row.test_error == pytest.approx(100 * (1 - (0.8 + 0.79 + 0.78) / 3))
    assert row.train_error == pytest.approx(100 * (1 - (0.94 + 0.95 + 0.96) / 3))
    assert row.vote_error == pytest.approx(100 * (1 - (0.82 + 0.81 + 0.80) / 3))
    assert (row.window, row.epochs, row.tests, row.name) == (3, 7, 7, "run")


@pytest.fixture
def trained(workdir):  # noqa: F811
    """The tests' tiny net with random tiling, trained a few iterations: its files."""
    net = NET % "random"
    (workdir / "net.prototxt").write_text(net)
    (workdir / "solver.prototxt").write_text(SOLVER % 8)
    assert main(["train", "--solver", "solver.prototxt", "--no-progress"]) == 0
    return workdir


def test_similarity_and_filters_commands(trained, capsys):
    code = main(["similarity", "--model", "net.prototxt", "--weights",
                 "snap/tiny_iter_8.caffemodel", "--json", "sim.json"])
    out = capsys.readouterr().out
    assert code == 0 and re.search(r"conv\s+4\s+-?0\.\d{4}", out) and "mean" in out
    result = json.loads((trained / "sim.json").read_text())
    net = Net.from_file("net.prototxt", pb.TEST)
    load_weights(net, "snap/tiny_iter_8.caffemodel")
    net.close()
    expected = float(filter_similarity(net.layer("conv").module.weight).mean())
    assert result["mean"] == pytest.approx(expected, abs=1e-9)
    assert main(["filters", "--model", "net.prototxt", "--weights", "snap/tiny_iter_8.caffemodel",
                 "--layer", "conv", "--out", "f.png", "--filters", "3"]) == 0
    assert (trained / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reduce_of_identical_replicas_is_the_tiled_net(trained, capsys):
    tiled = Net.from_file("net.prototxt", pb.TEST)
    load_weights(tiled, "snap/tiny_iter_8.caffemodel")
    conv = tiled.layer("conv").module
    with torch.no_grad():
        conv.weight.copy_(conv.weight[:1].expand_as(conv.weight))
        conv.bias.copy_(conv.bias[:1].expand_as(conv.bias))
    save_weights(tiled, "same.caffemodel")
    feed = tiled.read_data()
    tiled.close()
    for method in ("norm", "random_tile", "first_tile", "random_filter"):
        assert main(["reduce", "--model", "net.prototxt", "--weights", "same.caffemodel",
                     "--method", method, "--out-model", "r.prototxt",
                     "--out-weights", "r.caffemodel"]) == 0
        assert "tiling_param" not in (trained / "r.prototxt").read_text()
        reduced = Net.from_file("r.prototxt", pb.TEST)
        load_weights(reduced, "r.caffemodel")
        reduced.close()
        assert reduced.layer("conv").module.weight.shape == (4, 3, 3, 3)
        torch.testing.assert_close(reduced(dict(feed))["ip"], tiled(dict(feed))["ip"])
    assert main(["test", "--model", "r.prototxt", "--weights", "r.caffemodel",
                 "--iterations", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["reduce", "--model", "net.prototxt", "--weights",
                 "snap/tiny_iter_8.caffemodel", "--method", "best", "--holdout-images", "20",
                 "--out-model", "b.prototxt", "--out-weights", "b.caffemodel"]) == 0
    out = capsys.readouterr().out
    scores = {m: float(v) for m, v in re.findall(r"(\w+)\s+held-out accuracy (\S+)", out)}
    best = re.search(r"best: (\w+)", out).group(1)
    assert len(scores) == 4 and scores[best] == max(scores.values())
    assert f"--method {best}" in (trained / "b.prototxt").read_text()


def test_fgsm_at_zero_changes_nothing_and_follows_the_gradient_sign(trained, capsys):
    plain = NET.replace('    tiling_param { scheme: "%s" num_tiles: 4 } ', "")
    (trained / "plain.prototxt").write_text(plain)
    (trained / "plain_solver.prototxt").write_text(
        (SOLVER % 6).replace('net: "net.prototxt"', 'net: "plain.prototxt"').replace(
            'snapshot_prefix: "snap/tiny"', 'snapshot_prefix: "snap/plain"'))
    assert main(["train", "--solver", "plain_solver.prototxt", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["fgsm", "--model", "plain.prototxt", "--weights", "snap/plain_iter_6.caffemodel",
                 "--iterations", "2", "--epsilon", "0", "2", "50", "--json", "a.json",
                 "--plot", "a.png", "--no-progress"]) == 0
    def strict(text):  # JSON without Infinity and NaN, which strict parsers refuse
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    result = strict((trained / "a.json").read_text())
    points = result["points"]
    assert result["attacked"] > 0 and points[0]["accuracy"] == 1.0
    assert points[0]["snr_db"] is None and points[1]["snr_db"] > points[2]["snr_db"]
    for args, message in ((["--pixel-range", "0", "1", "--iterations", "1"],
                           "--pixel-range 0 1: the test images' "
                           "pixels (before mean subtraction and scale) span [0"),
                          (["--iterations", "3"], "--iterations 3: the test database holds 10 "
                           "images, 2 batches of 5")):
        assert main(["fgsm", "--model", "plain.prototxt", "--weights",
                     "snap/plain_iter_6.caffemodel", "--epsilon", "1", *args]) == 2
        assert message in capsys.readouterr().err
    # A baseline (as --json writes it, null SNR included) at 0.5 from 10 to 50 dB: the gap
    # reduction (acc - 0.5) / 0.5 at each finite SNR.
    base = dict(result, points=[{"epsilon": 0.0, "snr_db": None, "accuracy": 1.0},
                                {"epsilon": 9.0, "snr_db": 10.0, "accuracy": 0.5},
                                {"epsilon": 1.0, "snr_db": 50.0, "accuracy": 0.5}])
    (trained / "base.json").write_text(json.dumps(base))
    assert main(["fgsm", "--model", "plain.prototxt", "--weights", "snap/plain_iter_6.caffemodel",
                 "--iterations", "2", "--epsilon", "0", "2", "50", "--json", "b.json",
                 "--baseline", "base.json", "--no-progress"]) == 0
    gaps = strict((trained / "b.json").read_text())["gap_reduction"]
    assert gaps == [None] + [(p["accuracy"] - 0.5) / 0.5 for p in points[1:]]
    # Baselines that are not --json results: one line, before the attack.
    for bad, why in (({"points": [5]}, "points[0] is not an object of epsilon, snr_db, "
                      "accuracy"),
                     (dict(base, points=[{"epsilon": 0, "snr_db": "abc", "accuracy": 2}]),
                      'points[0].snr_db is "abc", not a number'),
                     (dict(base, images=1.5), "images is 1.5, not an integer"),
                     (dict(base, images=True), "images is true, not an integer"),
                     (dict(base, points=[dict(base["points"][1], x=1)]),
                      "points[0] is not an object of epsilon, snr_db, accuracy"),
                     ([1, 2], "not an object with a list of 'points'"),
                     (dict(base, points=base["points"][:2]),
                      "the baseline needs at least two points with a finite SNR")):
        (trained / "bad.json").write_text(json.dumps(bad))
        assert main(["fgsm", "--model", "plain.prototxt", "--weights", "missing.caffemodel",
                     "--epsilon", "1", "--baseline", "bad.json"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rapa fgsm: error: bad.json: ") and why in err, err
    # Without --iterations: the whole test database, each image once.
    assert main(["fgsm", "--model", "plain.prototxt", "--weights", "snap/plain_iter_6.caffemodel",
                 "--epsilon", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("10 images, ")
    assert points[2]["accuracy"] <= points[1]["accuracy"] <= 1.0
    assert (trained / "a.png").read_bytes()[:4] == b"\x89PNG"
    # One image by hand: the perturbation is epsilon times the sign of the input gradient,
    # in pixel units (input = pixels * 0.01 here, crop 6), clipped to [0, 255].
    net = Net.from_file("plain.prototxt", pb.TEST)
    load_weights(net, "snap/plain_iter_6.caffemodel")
    net.eval()
    feed = {k: v[:1] for k, v in net.read_data().items()}
    net.close()
    x = feed["data"].clone().requires_grad_()
    loss = F.cross_entropy(net({**feed, "data": x})["ip"], feed["label"].long(), reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(loss_sign(net, feed, "data", "ip", "label"), g.sign())
    mean, scale = net.data_layers()[0].input_normalization()
    assert scale == pytest.approx(0.01) and not mean.any()


def test_plot_draws_several_logs_against_epochs(trained, tmp_path, capsys):
    log = trained / "snap/tiny_log.jsonl"
    other = trained / "other_log.jsonl"
    other.write_text(log.read_text())
    png = tmp_path / "sweep.png"
    assert main(["plot", str(log), str(other), "--epochs", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = trained / "old_log.jsonl"  # a log of an older rapa: no epochs
    old.write_text('{"iter": 5, "phase": "test", "net": 0, "accuracy": 0.5}\n')
    assert main(["plot", str(old), "--epochs", "--out", str(png)]) == 2
    assert "old_log.jsonl: has no epochs" in capsys.readouterr().err
    assert main(["plot", str(old), "--out", str(png)]) == 0


def test_sweep_continues_unfinished_runs_then_prints_the_table(trained, capsys):
    for name in ("a", "b"):
        (trained / f"{name}.prototxt").write_text(
            (SOLVER % 10).replace('snapshot_prefix: "snap/tiny"',
                                  f'snapshot_prefix: "snap/{name}"'))
    assert main(["train", "--solver", "a.prototxt", "--max-iter", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sweep", "a.prototxt", "b.prototxt", "--jobs", "2", "--window", "2"]) == 0
    out = capsys.readouterr().out
    assert "a.prototxt: finished" in out and "b.prototxt: finished" in out
    assert "Resuming from snap/a_iter_4.solverstate" in (trained / "snap/a_train.out").read_text()
    assert re.search(r"\na\s+\d+\.\d \(\d+\.\d\)\s+\d+\.\d\s+2", out)  # the table's row for a
    assert main(["sweep", "a.prototxt", "b.prototxt"]) == 0
    assert "a.prototxt: finished already" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_sweep_alone_stops_its_runs_with_their_snapshots(trained, sig):
    """The runs lead process groups of their own: a signal to the sweep's process (a
    terminal's Ctrl-C reaches it alone then; a scheduler's SIGTERM) is passed on to each run
    once, which stops with its snapshot; the third run never starts; nothing is left running."""
    for name in ("a", "b", "c"):
        (trained / f"{name}.prototxt").write_text(
            (SOLVER % 100000).replace('snapshot_prefix: "snap/tiny"',
                                      f'snapshot_prefix: "snap/{name}"'))
    sweep = subprocess.Popen([sys.executable, "-m", "rapa", "sweep", "a.prototxt",
                              "b.prototxt", "c.prototxt", "--jobs", "2"], cwd=trained,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [trained / f"snap/{name}_log.jsonl" for name in ("a", "b")]
    deadline = time.time() + 120
    while time.time() < deadline and not all(
            log.exists() and len(log.read_text().splitlines()) >= 3 for log in logs):
        time.sleep(0.1)
    sweep.send_signal(sig)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, out + err
    assert (f"rapa sweep: {sig.name}: the runs stopped with their snapshots; rerun the same "
            f"command to continue them") in err
    for name in ("a", "b"):
        assert latest_snapshot(f"snap/{name}") is not None, name
        assert f"{sig.name} at iteration" in (trained / f"snap/{name}_train.out").read_text()
    assert "c.prototxt: started" not in out and not (trained / "snap/c_train.out").exists()
    left = subprocess.run(["pgrep", "-f", "rapa train --solver [ab].prototxt"],
                          capture_output=True, text=True).stdout
    assert not left.strip(), left


def test_sweep_runs_its_own_rapa_and_names_why_a_run_stopped(trained, capsys):
    """A ./rapa folder in the working directory (a source checkout) does not shadow the rapa
    that runs the sweep; a run that stops is reported with its error line."""
    (trained / "rapa").mkdir()
    (trained / "rapa/__init__.py").write_text("raise ImportError('the shadowing ./rapa')\n")
    (trained / "good.prototxt").write_text(
        (SOLVER % 2).replace('snapshot_prefix: "snap/tiny"', 'snapshot_prefix: "snap/good"'))
    (trained / "bad.prototxt").write_text(
        (SOLVER % 2).replace('net: "net.prototxt"', 'net: "missing.prototxt"')
        .replace('snapshot_prefix: "snap/tiny"', 'snapshot_prefix: "snap/bad"'))
    assert main(["sweep", "good.prototxt", "bad.prototxt"]) == 2
    out, err = capsys.readouterr()
    assert "good.prototxt: finished after" in out
    assert re.search(r"bad.prototxt: stopped with exit code 2 after \d+ s: .*missing.prototxt",
                     out), out
    assert "1 run(s) did not finish: bad.prototxt" in err


@pytest.mark.parametrize("args,files,message", [
    (["similarity", "--model", "n.prototxt", "--weights", "w.caffemodel"],
     {"n.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                    'dim: 1 dim: 4 dim: 4 } } }\nlayer { name: "c" type: "Convolution" '
                    'bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 3 } }'},
     "n.prototxt: no tiled layer with two or more tiles"),
    (["reduce", "--model", "n.prototxt", "--weights", "w", "--method", "mean", "--out-model",
      "a", "--out-weights", "b"], {}, "--method mean: unknown; known: norm, random_tile"),
    (["fgsm", "--model", "n.prototxt", "--weights", "w", "--epsilon", "1", "-1"],
     {"n.prototxt": ""}, "argument --epsilon: -1 must be >= 0"),
    (["fgsm", "--model", "n", "--weights", "w", "--epsilon", "nan"], {},
     "argument --epsilon: nan is not a finite float32 number"),
    (["fgsm", "--model", "n", "--weights", "w", "--epsilon", "1e39"], {},
     "argument --epsilon: 1e39 is not a finite float32 number"),
    (["fgsm", "--model", "n", "--weights", "w", "--epsilon", "1", "--seed",
      "99999999999999999999"], {},
     "argument --seed: 99999999999999999999 is outside [0, 9223372036854775807]"),
    (["fgsm", "--model", "n", "--weights", "w", "--epsilon", "1", "--plot", "f.xyz"], {},
     "argument --plot: f.xyz: cannot draw '.xyz' files; use one of .eps"),
    (["filters", "--model", "n", "--weights", "w", "--layer", "c", "--out", "no/f.png"], {},
     "argument --out: no/f.png: no does not exist"),
    (["reduce", "--model", "n", "--weights", "w", "--method", "norm", "--out-model", "m",
      "--out-weights", "n.prototxt/w"], {"n.prototxt": ""},
     "argument --out-weights: n.prototxt/w: n.prototxt is not a folder"),
    (["sweep", "s.prototxt", "--window", "0"], {}, "argument --window: 0 is outside [1, "),
    (["sweep", "a.prototxt", "b.prototxt"],
     {"a.prototxt": 'net: "n"\nsnapshot_prefix: "snap/x"',
      "b.prototxt": 'net: "n"\nsnapshot_prefix: "snap/../snap/x"'},
     "a.prototxt and b.prototxt have the same snapshot_prefix (snap/../snap/x)"),
    (["sweep", "a.prototxt", "b.prototxt"],
     {"a.prototxt": 'net: "n"\nsnapshot_prefix: "a"\nlog_file: "l.jsonl"',
      "b.prototxt": 'net: "n"\nsnapshot_prefix: "b"\nlog_file: "./l.jsonl"'},
     "a.prototxt and b.prototxt have the same log_file (l.jsonl)"),
    (["table", "log.jsonl"], {"log.jsonl": '{"iter": 1, "phase": "test", "accuracy": "0.5"}\n'},
     "log.jsonl:1: 'accuracy' is \"0.5\", not a number"),
    (["table", "log.jsonl"], {"log.jsonl": '{"iter": 1, "phase": "test", "accuracy": 0.5}\n'
                                           '{"iter": 2, "pha\n{"iter": 3, "phase": "test", '
                                           '"accuracy": 0.6}\n'},
     "log.jsonl:2: not a JSON line (only the last line of a log can be cut short)"),
    (["table", "log.jsonl", "--key", "loss"],
     {"log.jsonl": '{"iter": 1, "phase": "test", "accuracy": 0.5, "loss": 1.2}\n'},
     "log.jsonl: 'loss' at iteration 1 is not an accuracy in [0, 1] (choose the accuracy "),
    (["table", "log.jsonl"], {"log.jsonl": '{"iter": 1, "phase": "test", "accuracy": NaN}\n'},
     "log.jsonl: 'accuracy' at iteration 1 is not an accuracy in [0, 1]"),
    (["table", "log.jsonl"], {"log.jsonl": '{"iter": 1, "phase": "train", "loss": 2}\n'},
     "log.jsonl: no test lines"),
    (["table", "log.jsonl"], {"log.jsonl": b"\xff\xfe\x00binary"},
     "log.jsonl: not a training log (not text)"),
    (["table", "notes.txt"], {"notes.txt": "a plain text file\n"},
     "notes.txt:1: not a JSON line"),
    (["sweep", "a.prototxt", "./a.prototxt"], {}, "./a.prototxt is named twice (also as "
                                                   "a.prototxt)"),
    (["sweep", "a.prototxt", "b.prototxt", "a.prototxt"], {}, "a.prototxt is named twice"),
    (["plot", "log.jsonl"], {"log.jsonl": b"\xff\xfe\x00binary"},
     "log.jsonl: not a training log (not text)"),
    (["plot", "log.jsonl"], {"log.jsonl": '{"iter": 1, "phase": "train", "loss": 2}\n[1, 2]\n'},
     "log.jsonl:2: not a training log line (a JSON object with 'iter')"),
])
def test_analysis_errors_are_one_line(tmp_path, args, files, message):
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    if "similarity" in args:
        net = Net.from_file(tmp_path / "n.prototxt", pb.TEST)
        save_weights(net, tmp_path / "w.caffemodel")
    proc = subprocess.run([sys.executable, "-m", "rapa", *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1
