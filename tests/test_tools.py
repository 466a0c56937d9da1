"""The rapa command end to end: Caffe's own files, test with votes, time, plot, generated nets,
and the errors a user sees (one line, no traceback)."""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from datasets import cifar_python_archive, cifar_tree
from rapa.cli import main
from rapa.nn import vote
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text, read_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "nets"))
import generate  # noqa: E402


def test_caffe_cifar10_full_example_runs_unchanged(tmp_path, monkeypatch, capsys):
    """Caffe's cifar10_full_train_test.prototxt and cifar10_full_solver.prototxt, as a Caffe
    user has them, against databases written by our convert-cifar, from Caffe's root folder."""
    cifar_python_archive(tmp_path / "cifar-10-python.tar.gz", train_per_batch=40, test=50)
    ex = tmp_path / "examples/cifar10"
    assert main(["convert-cifar", str(tmp_path / "cifar-10-python.tar.gz"), str(ex)]) == 0
    for f in ("cifar10_full_train_test.prototxt", "cifar10_full_solver.prototxt"):
        shutil.copy(ROOT / "tests/caffe" / f, ex / f)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--solver", "examples/cifar10/cifar10_full_solver.prototxt",
                 "--max-iter", "3", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Iteration 0, test net #0: accuracy = " in out.out
    assert "solver_mode GPU, but no CUDA device" in out.out or torch.cuda.is_available()
    assert (ex / "cifar10_full_iter_3.caffemodel").is_file()
    code = main(["test", "--model", "examples/cifar10/cifar10_full_train_test.prototxt",
                 "--weights", "examples/cifar10/cifar10_full_iter_3.caffemodel",
                 "--iterations", "1", "--no-progress"])
    assert code == 0 and "accuracy = " in capsys.readouterr().out


def test_vote_majority_and_ties():
    a = torch.tensor([[3.0, 0, 0], [0, 2, 0]])
    b = torch.tensor([[0.0, 3, 0], [0, 2, 0]])
    c = torch.tensor([[2.0, 0, 0], [0, 0, 5]])
    assert vote([a, b, c]).tolist() == [0, 1]
    # A tie of counts goes to the larger mean probability.
    assert vote([torch.tensor([[5.0, 0]]), torch.tensor([[0.0, 1]])]).tolist() == [0]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    cifar_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_committed_nets_are_the_generators(tmp_path):
    """prototxt/ holds exactly the generator's committed set, as the generator writes it now
    (its solvers name their nets as from the repository root, prototxt/...)."""
    out = tmp_path / "prototxt"
    ours = {p.relative_to(out): p.read_text()
            for p in generate.generate(out, only_committed=True, root=tmp_path)}
    committed = {p.relative_to(ROOT / "prototxt"): p
                 for p in (ROOT / "prototxt").rglob("*") if p.is_file()}
    missing = sorted(str(r) for r in set(ours) - set(committed))
    extra = sorted(str(r) for r in set(committed) - set(ours))
    assert not missing, f"prototxt/ lacks {missing}: run python nets/generate.py --committed"
    assert not extra, f"prototxt/ has {extra}, which nets/generate.py --committed does not " \
        "write: git rm them, or add them to the committed set in nets/generate.py"
    for rel, text in ours.items():
        assert committed[rel].read_text() == text, \
            f"prototxt/{rel} is stale: run python nets/generate.py --committed"


def test_generator_needs_only_protobuf(tmp_path):
    """nets/generate.py --out writes the whole family with torch unimportable and without the
    rapa package; its solvers name nets outside the repository by their absolute path."""
    out = tmp_path / "nets"
    code = ("import sys\n"
            "sys.modules['torch'] = None  # import torch raises ImportError\n"
            f"sys.path.insert(0, {str(ROOT / 'nets')!r})\n"
            "import generate\n"
            f"generate.main(['--out', {str(out)!r}])\n"
            "assert 'rapa' not in sys.modules and 'rapa.proto' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = list(out.rglob("*.prototxt"))
    # CIFAR-10: 8 tilings x 4 poolings (net, solver), the short solver, 2 analog nets (net,
    # 2 solvers); CIFAR-100 and SVHN: 8 tilings with max pooling (net, solver); residual nets
    # for CIFAR-10 and -100: 3 depths x 3 widths x 2 tilings (net, 2 solvers); the HIC nets
    # (the Full net, ResNet-32 at widths 1 and 2: net, 2 solvers; the Full net with pulsed
    # programming: net, short solver) and two 1-epoch solvers of the floating-point ResNet-32
    # (plain SGD, momentum).
    assert len(files) == (8 * 4 * 2 + 1 + 2 * 3 + 2 * 8 * 2 + 2 * 3 * 3 * 2 * 3
                          + 3 * 3 + 2 + 2)  # 224
    net = re.search(r'net: "(.*)"', (out / "cifar10/random_max_short_solver.prototxt")
                    .read_text()).group(1)
    assert (ROOT / net).resolve() == (out / "cifar10/random_max.prototxt").resolve()


def test_every_generated_net_sets_up(tree):
    """Every net of the whole family, all datasets, builds in both phases (running them is
    test_every_committed_net_builds_and_runs's, on the committed ones)."""
    paths = [p for p in generate.generate(tree / "nets")
             if not p.name.endswith("_solver.prototxt")]
    assert len(paths) == 50 + 36 + 4  # the Full nets, the residual nets, the HIC nets
    for path in paths:
        param = read_text(path, pb.NetParameter())
        for phase in (pb.TRAIN, pb.TEST):
            Net(param, phase, source=str(path)).close()  # close: the Data layers' threads


def test_tile_sweep_and_the_paper_s_rates(tree, capsys):
    """Fig. 5's family: tiles times 1 ... 64, its schedule shortened in proportion, 9 votes;
    --paper-rates: section 2.2's rates without momentum on an input scaled by 1/256 with
    conv1's filler widened to match; ours are the paper's times 0.02 with momentum 0.9. Files
    written with --out name the command that wrote them; what --epochs and --paper-rates leave
    alone is said."""
    generate.main(["--out", str(tree / "s"), "--family", "sweep", "--dataset", "cifar10",
                   "--epochs", "14"])
    assert "keep their own schedules" not in capsys.readouterr().out  # the sweep takes them all
    header = (tree / "s/cifar10/random_max_x4_e14_solver.prototxt").read_text().splitlines()[0]
    assert header.startswith("# Generated by nets/generate.py (Fig. 5 schedule, shortened to 14 ")
    assert header.endswith(f") with: python nets/generate.py --out {tree / 's'} --dataset "
                           "cifar10 --family sweep --epochs 14")
    solvers = {p.stem: read_text(p, pb.SolverParameter())
               for p in (tree / "s/cifar10").glob("*_solver.prototxt")}
    assert sorted(solvers) == sorted(f"random_max_x{k}_e14_solver"
                                     for k in (1, 2, 4, 8, 16, 32, 64))
    sp = solvers["random_max_x64_e14_solver"]
    assert (sp.base_lr, sp.momentum, sp.gamma, sp.weight_decay) == (
        pytest.approx(0.05 * 0.02), pytest.approx(0.9), 0.5, 0.0)
    assert (sp.stepsize, sp.max_iter, sp.test_votes) == (2 * 5000, 14 * 5000, 9)
    assert sp.snapshot_prefix == "snapshots/cifar10/random_max_x64_e14"
    for k, tiles in ((1, [16, 4, 1]), (64, [1024, 256, 64])):
        param = read_text(tree / f"s/cifar10/random_max_x{k}.prototxt", pb.NetParameter())
        assert [lp.convolution_param.tiling_param.num_tiles for lp in param.layer
                if lp.type == "Convolution"] == tiles
    net = Net(param, pb.TRAIN, source="x64")  # 1024 tiles of conv1: one patch each per image
    assert net()["ip1"].shape == (10, 10)
    net.close()

    generate.main(["--out", str(tree / "p"), "--family", "full", "--dataset", "cifar10",
                   "--paper-rates"])
    assert "--paper-rates" not in capsys.readouterr().out  # (no other solvers written)
    names = {p.name for p in (tree / "p/cifar10").iterdir()}
    assert all("_paper_rates" in n for n in names) and len(names) == 64  # 8 tilings x 4 pools
    for tiling, rate in (("none", 0.005), ("random", 0.025)):
        sp = read_text(tree / f"p/cifar10/{tiling}_max_paper_rates_solver.prototxt",
                       pb.SolverParameter())
        assert (sp.base_lr, sp.momentum) == (pytest.approx(rate), 0.0)
        assert sp.snapshot_prefix == f"snapshots/cifar10/{tiling}_max_paper_rates"
        assert sp.net.endswith(f"p/cifar10/{tiling}_max_paper_rates.prototxt")
        ours = read_text(ROOT / f"prototxt/cifar10/{tiling}_max_solver.prototxt",
                         pb.SolverParameter())
        assert (ours.base_lr, ours.momentum) == (pytest.approx(rate * 0.02), pytest.approx(0.9))
    # Analog solvers: momentum SGD's steady-state step, rate x 0.02 / (1 - 0.9), without
    # momentum, written as the float nearest it (computed in double, then stored).
    for name, rate in (("random_max_rpu", "0.005"), ("none_max_rpu", "0.001"),
                       ("none_max_hic", "0.001")):
        text = (ROOT / f"prototxt/cifar10/{name}_solver.prototxt").read_text()
        assert f"base_lr: {rate}\n" in text and "momentum: 0.0\n" in text, name
    param = read_text(tree / "p/cifar10/random_max_paper_rates.prototxt", pb.NetParameter())
    data = [lp for lp in param.layer if lp.type == "Data"]
    assert [lp.transform_param.scale for lp in data] == [1 / 256] * 2
    conv1 = next(lp for lp in param.layer if lp.name == "conv1")
    assert conv1.convolution_param.weight_filler.std == pytest.approx(1e-4 * 256)
    # Shortened: the one step at 80% (10 epochs: 8); never inside the 1-epoch warm-up (2: 2).
    for epochs, step in ((10, 8), (2, 2)):
        generate.main(["--out", str(tree / f"e{epochs}"), "--family", "full", "--dataset",
                       "cifar10", "--epochs", str(epochs)])
        assert (f"--epochs: the Full nets' and the sweep's solvers; the 12 other solvers "
                f"written (such as random_max_short_solver.prototxt) keep their own "
                f"schedules") in capsys.readouterr().out
        sp = read_text(tree / f"e{epochs}/cifar10/none_max_e{epochs}_solver.prototxt",
                       pb.SolverParameter())
        assert (sp.stepsize, sp.warmup_iter, sp.max_iter) == (step * 5000, 5000, epochs * 5000)
        assert sp.snapshot_prefix == f"snapshots/cifar10/none_max_e{epochs}"


@pytest.mark.parametrize("options", [
    ["--family", "full"], ["--family", "full", "--epochs", "3"], ["--family", "full", "resnet",
    "--resnet-tilings", "random"], ["--family", "full", "resnet", "--shortcut", "B"],
    ["--family", "sweep", "--tiles", "32,8,2", "--paper-rates"]])
def test_every_generated_solver_finds_its_net_and_a_written_file_can_be_written_again(
        tmp_path, capsys, options):
    """Whatever the options, each solver names a net written beside it (the HIC family's
    floating-point baselines need the residual family's untiled ResNet-32 with shortcut A),
    no net has more tiles than patches (Fig. 5's sweep of 32,8,2 stops at x32), and the
    command in a file's header, run again from the repository root, writes the same files."""
    out = tmp_path / "a b"
    generate.main(["--out", str(out), "--dataset", "cifar10", *options])
    files = {p: p.read_text() for p in out.rglob("*.prototxt")}
    for path, text in files.items():
        if path.name.endswith("_solver.prototxt"):
            net = read_text(path, pb.SolverParameter()).net
            assert (ROOT / net).resolve().is_file(), (path.name, net)
        else:
            tiles = [lp.convolution_param.tiling_param.num_tiles
                     for lp in read_text(path, pb.NetParameter()).layer
                     if lp.type == "Convolution" and lp.convolution_param.tiling_param.num_tiles]
            assert max(tiles, default=0) <= 1024, path.name
    if "sweep" in options:
        assert {p.name for p in files if p.name.startswith("random_max_x")} == {
            f"random_max_x{k}_paper_rates{s}.prototxt" for k in (1, 2, 4, 8, 16, 32)
            for s in ("", "_solver")}
        assert "--tiles 32,8,2: the sweep's factor 64 left out (more tiles than patches)" in \
            capsys.readouterr().out
    command = next(iter(files.values())).splitlines()[0].split(" with: ", 1)[1]
    shutil.rmtree(out)
    args = shlex.split(command)
    assert args[:2] == ["python", "nets/generate.py"]
    generate.main(args[2:])
    assert {p: p.read_text() for p in out.rglob("*.prototxt")} == files


def test_a_generated_file_s_header_stays_one_comment_line_for_any_folder_name(tmp_path):
    """A newline or a line separator in --out is escaped in the header's command: every file
    still parses. A folder name that is no UTF-8 cannot be a solver's net path: refused."""
    with pytest.raises(SystemExit):
        generate.main(["--out", str(tmp_path / os.fsdecode(b"lat\xe9in"))])
    assert not list(tmp_path.iterdir())
    for name in ("a\nb", "it's \u2028 \u00e9"):
        out = tmp_path / name
        generate.main(["--out", str(out), "--family", "sweep", "--dataset", "cifar10",
                       "--tiles", "1024,256,64"])
        path = out / "cifar10/random_max_x1_solver.prototxt"
        header = path.read_text().splitlines()[0]
        assert header.endswith(" --tiles 1024,256,64 --dataset cifar10 --family sweep") and \
            "\\" in header, header
        read_text(path, pb.SolverParameter())
        read_text(out / "cifar10/random_max_x1.prototxt", pb.NetParameter())


@pytest.mark.parametrize("options,message", [
    (["--tiles", "4,a,1"], "--tiles takes three counts >= 1, e.g. 16,4,1"),
    (["--tiles", "2048,4,1"], "--tiles 2048,4,1: more tiles than patches; conv1, conv2 and "
                              "conv3 have 1024, 256, 64 patches per image"),
    (["--family", "resnet", "--epochs", "3"], "--epochs: for the Full nets (--family full) and "
                                              "the sweep (--family sweep)"),
    (["--family", "sweep", "--strong"], "--strong: for the Full nets (--family full)"),
    (["--out", "FILE"], "--out FILE: not a folder"),
    (["--out", "ROOT/prototxt"], "the committed nets' folder; --committed rewrites them"),
])
def test_generate_refuses_options_that_would_write_nothing_or_broken_nets(tmp_path, capsys,
                                                                          options, message):
    (tmp_path / "FILE").write_text("")
    options = [o.replace("FILE", str(tmp_path / "FILE")).replace("ROOT", str(ROOT))
               for o in options]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        generate.main(options)
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("nets/generate.py: error: ") and err.endswith(message.replace(
        "FILE", str(tmp_path / "FILE"))), err
    assert not (tmp_path / "out").exists()


def test_a_variant_family_has_prefixes_of_its_own_and_only_tilings_its_tiles_allow(tmp_path,
                                                                                   capsys):
    """--tiles other than 16,4,1 (and --shortcut B): same file names, snapshot prefixes that end
    in the variant, so that its runs stay apart from the committed nets'; counts that are not
    squares leave out the tilings that need squares (they would not load)."""
    generate.main(["--out", str(tmp_path / "v"), "--dataset", "cifar10", "--tiles", "32,8,2",
                   "--shortcut", "B"])
    assert "not all square" in capsys.readouterr().out
    names = {p.stem for p in (tmp_path / "v/cifar10").iterdir()}
    assert "random_max" in names and "resnet20_random" in names
    assert not {n for n in names if n.startswith(("image_", "alternate"))}
    for name, prefix in (("random_max_short", "random_max_short_t32-8-2_shortcutB"),
                         ("resnet20_random", "resnet20_random_t32-8-2_shortcutB")):
        sp = read_text(tmp_path / f"v/cifar10/{name}_solver.prototxt", pb.SolverParameter())
        assert sp.snapshot_prefix == f"snapshots/cifar10/{prefix}"
    param = read_text(tmp_path / "v/cifar10/random_max.prototxt", pb.NetParameter())
    assert [lp.convolution_param.tiling_param.num_tiles for lp in param.layer
            if lp.type == "Convolution"] == [32, 8, 2]
    generate.main(["--out", str(tmp_path / "s"), "--dataset", "cifar10", "--tiles", "36,9,4",
                   "--family", "full"])
    assert (tmp_path / "s/cifar10/alternate_max.prototxt").is_file()
    assert read_text(tmp_path / "s/cifar10/alternate_max_solver.prototxt",
                     pb.SolverParameter()).snapshot_prefix == \
        "snapshots/cifar10/alternate_max_t36-9-4"


def test_every_committed_net_builds_and_runs(tree):
    for path in sorted((ROOT / "prototxt").rglob("*.prototxt")):
        if path.name.endswith("_solver.prototxt"):
            continue
        param = read_text(path, pb.NetParameter())
        train = None
        for phase in (pb.TRAIN, pb.TEST):
            net = Net(param, phase, source=str(path))
            if train is None:
                train = net
            else:  # as the solver's test net: the train net's weights and statistics
                net.share_from(train)
            net.train(phase == pb.TRAIN)
            blobs = net()
            scores = next(e.bottoms[0] for e in net.entries if e.layer.default_loss_weight)
            assert blobs[scores].shape[1] == 10
            assert torch.isfinite(net.loss(blobs))
            for name, value in blobs.items():  # the shapes set-up computed are the real ones
                assert net.blob_shapes[name] == tuple(value.shape), (path.name, name)
            net.close()


def test_short_schedule_trains_then_tests_with_votes(tree, capsys):
    solver = ROOT / "prototxt/cifar10/random_max_short_solver.prototxt"
    text = re.sub(r"max_iter: \d+", "max_iter: 6", solver.read_text())
    text = re.sub(r"test_interval: \d+", "test_interval: 3", text)
    text = re.sub(r"test_iter: \d+", "test_iter: 1", text)
    text = re.sub(r"test_votes: \d+", "test_votes: 2", text)
    text = text.replace('net: "prototxt/', f'net: "{ROOT}/prototxt/')
    (tree / "short.prototxt").write_text(text)
    assert main(["train", "--solver", "short.prototxt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Iteration 6, test net #0: accuracy = " in out
    assert "accuracy (majority of 2 votes) = " in out  # the words rapa test uses
    weights = tree / "snapshots/cifar10/random_max_short_iter_6.caffemodel"
    assert main(["test", "--model", str(ROOT / "prototxt/cifar10/random_max.prototxt"),
                 "--weights", str(weights), "--iterations", "1", "--votes", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy = " in out and "accuracy (majority of 3 votes) = " in out
    assert ("note: --iterations 1: 1 batch of 100 read 100 images, the database of layer "
            "'data' holds 40: 60 are read again (they count twice)") in out
    png = tree / "curves.png"
    assert main(["plot", str(tree / "snapshots/cifar10/random_max_short_log.jsonl"),
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_prints_layers_and_the_analog_model(tree, capsys):
    assert main(["time", "--model", str(ROOT / "prototxt/cifar10/random_max.prototxt"),
                 "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("conv1", "pool1", "norm1", "ip1", "loss"):
        assert f"\n{name} " in out
    assert "forward ms  backward ms" in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    batch = int(out.split(", batch ")[1].split(",")[0])
    # images/s from both columns' totals (as printed, to 3 decimals: rounding aside)
    assert int(total[3].strip("(")) == pytest.approx(
        batch / (float(total[1]) + float(total[2])) * 1e3, rel=0.01)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["conv1"][1:6] == ["1024", "2457600", "16", "64", "16.0"]
    assert rows["conv2"][1:6] == ["256", "6553600", "4", "64", "4.0"]
    assert rows["conv3"][1:6] == ["64", "3276800", "1", "64", "1.0"]


def test_time_gives_a_residual_sum_its_own_backward_only(tree):
    """The Eltwise of a residual block ends its backward when its own input gradients are
    made, not when its shortcut input's gradient is complete (after the whole branch)."""
    from rapa.timing import time_layers
    text = """
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "data/cifar10/cifar10_train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "conv0" type: "Convolution" bottom: "data" top: "x"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "a" type: "Convolution" bottom: "x" top: "a"
  convolution_param { num_output: 96 kernel_size: 5 pad: 2 weight_filler { type: "xavier" } } }
layer { name: "b" type: "Convolution" bottom: "a" top: "b"
  convolution_param { num_output: 16 kernel_size: 5 pad: 2 weight_filler { type: "xavier" } } }
layer { name: "sum" type: "Eltwise" bottom: "b" bottom: "x" top: "y" }
layer { name: "ip" type: "InnerProduct" bottom: "y" top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    net = Net(parse_text(text, pb.NetParameter()), pb.TRAIN, source="residual")
    try:
        times = {t.name: t for t in time_layers(net, 3, torch.device("cpu"))}
    finally:
        net.close()
    branch = times["a"].backward_ms + times["b"].backward_ms
    assert times["a"].backward_ms > 0 and times["sum"].backward_ms < 0.2 * branch, times


def test_time_times_a_deploy_net_forward_only(tmp_path, capsys):
    """A net without a loss layer (Input, InnerProduct, Softmax): its forward times, as
    Caffe's `caffe time` gives them, with a note (a loss to differentiate there is none)."""
    net = tmp_path / "deploy.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 '
                   'dim: 6 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" '
                   'top: "y" inner_product_param { num_output: 3 } }\nlayer { name: "prob" '
                   'type: "Softmax" bottom: "y" top: "p" }\n')
    assert main(["time", "--model", str(net), "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"note: {net} has no loss in its TRAIN phase (no layer with a loss "
                          f"weight: a deploy net?): forward times only")
    lines = out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[3:lines.index(next(
        line for line in lines if line.startswith("total")))]}
    assert set(rows) == {"in", "ip", "prob"}
    assert float(rows["ip"][2]) > 0 and len(rows["ip"]) == 3  # forward ms, no backward column
    assert "backward" not in out
    assert main(["time", "--model", str(net), "--iterations", "1", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out and "backward" not in out  # asked for: nothing to say


def test_time_of_a_net_with_nothing_to_time_or_differentiate_is_one_line(tmp_path, capsys):
    """An empty net, and a loss that depends on no learning weight (an Input straight into the
    loss): a one-line error, not a division by zero or autograd's traceback."""
    empty = tmp_path / "empty.prototxt"
    empty.write_text('name: "e"\n')
    assert main(["time", "--model", str(empty), "--iterations", "1"]) == 2
    assert capsys.readouterr().err == (f"rapa time: error: {empty}: no layers to time in the "
                                       f"TRAIN phase\n")
    frozen = tmp_path / "frozen.prototxt"
    frozen.write_text('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape '
                      '{ dim: 4 dim: 3 } shape { dim: 4 } } }\nlayer { name: "loss" type: '
                      '"SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }\n')
    assert main(["time", "--model", str(frozen), "--iterations", "1"]) == 2
    assert capsys.readouterr().err == (
        "rapa time: error: the loss depends on no weight that learns (lr_mult 0 everywhere, or "
        "no layer with weights before it): no backward pass to time; use --forward-only\n")
    assert main(["time", "--model", str(frozen), "--iterations", "1", "--forward-only"]) == 0


def test_time_feeds_input_labels_with_valid_classes():
    """Blobs an Input layer feeds to a loss's label bottom get classes in [0, num_output):
    random normal values would include negative labels, which the loss refuses."""
    from rapa.timing import time_layers
    text = """
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 64 dim: 3 } shape { dim: 64 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    net = Net(parse_text(text, pb.NetParameter()), pb.TRAIN, source="input")
    times = {t.name: t for t in time_layers(net, 1, torch.device("cpu"), warmup=0)}
    assert set(times) == {"in", "ip", "loss"}


@pytest.mark.parametrize("args,files,message", [
    (["train", "--solver", "s.prototxt"], {"s.prototxt": 'net: "n.prototxt"\nbase_lr: 0.1\n'
                                           'max_iter: 2\nlr_policy: "fixed"\nsnapshot: -'},
     "s.prototxt:5:11: "),
    (["train", "--solver", "s.prototxt"], {"s.prototxt": 'net: "n.prototxt"\nbase_lr: 0.1\n'
                                           'max_iter: 2', "n.prototxt": 'layer {\n  name: "a"\n'
                                           '  typ: "ReLU"\n}'},
     'n.prototxt:3:3: Message type "rapa.LayerParameter" has no field named "typ"'),
    (["train", "--solver", "s.prototxt"], {"s.prototxt": 'net: "n.prototxt"\nbase_lr: 0.1\n'
                                           'max_iter: 2', "n.prototxt": 'layer { name: "d" '
                                           'type: "Data" top: "x" data_param { source: '
                                           '"no_such_lmdb" batch_size: 2 } }'},
     "layer 'd' data_param.source: no_such_lmdb not found (looked in"),
    (["train", "--solver", "s.prototxt"], {"s.prototxt": 'net: "n.prototxt"\nbase_lr: 0.1\n'
                                           'max_iter: 2\nlr_policy: "cosine"'},
     "s.prototxt: unknown lr_policy 'cosine'; known: fixed, step"),
    (["test", "--model", "missing.prototxt", "--weights", "w"], {}, "missing.prototxt: no such"),
    (["time", "--model", "n.prototxt"],
     {"n.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                    'dim: 3 dim: 64 dim: 64 } } }\nlayer { name: "c" type: "InnerProduct" bottom: '
                    '"x" top: "y" inner_product_param { num_output: 2147483647 } }'},
     "layer 'c' (InnerProduct): cannot allocate 98304.0 GiB for its blobs (num_output, kernel"),
    (["time", "--model", "n.prototxt"],
     {"n.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                    'dim: 3 dim: 8 dim: 8 } } }\nlayer { name: "c" type: "Convolution" bottom: '
                    '"x" top: "y" convolution_param { num_output: 4 kernel_size: 3 '
                    'pad: 2000000000 } }'},
     "layer 'c' (Convolution): an output of 1x4x4000000006x4000000006 is too large"),
    (["test", "--model", "n.prototxt", "--weights", "w", "--votes", "3"],
     {"n.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                    'dim: 2 } } }'},
     "--votes 3: n.prototxt has no layer that scores votes (an Accuracy layer in the TEST"),
    (["convert-svhn", "train_32x32.mat", "out"], {}, "train_32x32.mat: No such file or directory"),
    (["test", "--model", "n.prototxt", "--weights", "."],
     {"n.prototxt": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                    'dim: 2 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                    'inner_product_param { num_output: 2 } }'},
     "error: .: is a folder, not a file"),
    (["train", "--solver", "s.prototxt", "--weights", "w.caffemodel,"],
     {"s.prototxt": 'net: "n.prototxt"\nbase_lr: 0.1\nmax_iter: 2\nsnapshot_prefix: "snap"',
      "n.prototxt": 'layer { name: "in" type: "Input" top: "x" top: "l" input_param { shape { '
                    'dim: 1 dim: 2 } shape { dim: 1 } } }\nlayer { name: "ip" type: "InnerProduct" '
                    'bottom: "x" top: "y" inner_product_param { num_output: 2 } }\nlayer { name: '
                    '"loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "l" top: "loss" }'},
     "--weights 'w.caffemodel,': an empty file name in the list"),
    (["plot", "run_log.jsonl", "--out", "curves.foo"],
     {"run_log.jsonl": '{"iter": 1, "phase": "train", "loss": 2.3}\n'},
     "argument --out: curves.foo: cannot draw '.foo' files; use one of"),
    (["plot", "run_log.jsonl", "--out", "run_log.jsonl/curves.png"],
     {"run_log.jsonl": '{"iter": 1, "phase": "train", "loss": 2.3}\n'},
     "argument --out: run_log.jsonl/curves.png: run_log.jsonl is not a folder"),
])
def test_user_errors_are_one_line(tmp_path, monkeypatch, args, files, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run([sys.executable, "-m", "rapa", *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


def test_a_file_of_the_other_kind_is_named_as_such(tmp_path, capsys):
    """A net given as the solver, a solver as the net, a .solverstate as --weights: the error
    says which kind of file it looks like."""
    net = ROOT / "prototxt/cifar10/random_max.prototxt"
    solver = ROOT / "prototxt/cifar10/random_max_solver.prototxt"
    assert main(["train", "--solver", str(net)]) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        '(in a SolverParameter): a net file? it is read as a solver here')
    assert main(["test", "--model", str(solver), "--weights", "w.caffemodel"]) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        '(in a NetParameter): a solver file? it is read as a net here')
    state = tmp_path / "x_iter_4.solverstate"
    state.write_bytes(pb.SolverState(iter=4, learned_net="x_iter_4.caffemodel")
                      .SerializeToString())
    net_file = tmp_path / "n.prototxt"
    net_file.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                        'dim: 3 } } }\nlayer { name: "ip" type: "InnerProduct" bottom: "x" '
                        'top: "y" inner_product_param { num_output: 2 } }\n')
    assert main(["test", "--model", str(net_file), "--weights", str(state)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rapa test: error: {state}: a solver state, not weights: --weights takes a .caffemodel "
        f"(this state's is x_iter_4.caffemodel), --snapshot a .solverstate")


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, monkeypatch, capsys):
    """The same file under another name (relative, absolute, a hard link, a folder reached
    through a link, two outputs neither of which exists yet) or a file inside an input
    folder: refused before any work, naming both arguments."""
    from datasets import write_lmdb, random_images
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"iter": 1, "phase": "test", "accuracy": 0.5}\n')
    os.link(tmp_path / "log.jsonl", tmp_path / "hard.jsonl")
    (tmp_path / "D").mkdir()
    os.symlink(tmp_path / "D", tmp_path / "L")
    write_lmdb(tmp_path / "db", *random_images(4, h=4, w=4))
    cases = ((["table", "log.jsonl", "--json", str(tmp_path / "log.jsonl")],
              f"--json {tmp_path / 'log.jsonl'} would overwrite LOGS (log.jsonl); name another "
              f"file"),
             (["table", "log.jsonl", "--json", "hard.jsonl"],
              "--json hard.jsonl would overwrite LOGS (log.jsonl)"),
             (["fgsm", "--model", "m", "--weights", "w", "--epsilon", "1", "--json", "L/r.png",
               "--plot", "D/r.png"], "--json L/r.png would overwrite --plot (D/r.png)"),
             (["compute-mean", "db", "db/data.mdb"],
              "OUT db/data.mdb would overwrite DB (db)"))
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "log.jsonl").read_text().startswith('{"iter": 1')
    assert main(["table", "log.jsonl", "--json", "rows.json"]) == 0  # another file: written
