"""The training step as the GPU runs it: its numbers (loss, hits) kept on the device and read
back only at a display, test, snapshot, stop or every 100 iterations; and on CUDA the whole
step recorded once as a CUDA graph and replayed. Both must train exactly the run that reads
every number at once and launches every kernel."""
import shutil

import pytest
import torch

from conftest import CUDA_READY
from rapa import evaluate
from rapa.net import Net
from rapa.prototxt import read_binary
from rapa.proto import pb
from rapa.solver import Solver, Stop
from rapa.trainlog import read_log_lines
from test_solver import setup_files, weights, workdir  # noqa: F401 - the fixture

needs_cuda = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and a CUDA build of the "
                                "operator library")


def quiet(path, **kwargs):
    return Solver(path, say=lambda m: None, progress=False, **kwargs)


def run_log(workdir):
    """The log without the measured speeds."""
    log = [{k: v for k, v in e.items() if k != "images_per_s"}
           for e in read_log_lines(workdir / "snap/tiny_log.jsonl")]
    return log


def clear(workdir):
    shutil.rmtree(workdir / "snap")


def deferred(solver):
    """Keeps the numbers on the device (as on CUDA) and records how many were pending at
    each read-back."""
    solver.defer_results = True
    solver.pending_sizes = []
    settle = solver._settle

    def counting(bar):
        solver.pending_sizes.append(len(solver._pending))
        settle(bar)
    solver._settle = counting
    return solver


@pytest.mark.parametrize("scheme", ["random", "perforated"])
@pytest.mark.parametrize("extra", ["", "iter_size: 2\nclip_gradients: 0.5\n"])
def test_numbers_read_back_later_train_the_same_run(workdir, scheme, extra):
    path = setup_files(workdir, max_iter=12, scheme=scheme, solver_extra=extra)
    straight = quiet(path)
    straight.solve()
    want_weights, want_log = weights(straight), run_log(workdir)
    clear(workdir)
    later = deferred(quiet(path))
    later.solve()
    # display 2, snapshot 4, test 5: at most 2 iterations wait, and some do
    assert max(later.pending_sizes) == 2 and later._pending == []
    for name, w in weights(later).items():
        torch.testing.assert_close(w, want_weights[name], rtol=0, atol=0)
    assert run_log(workdir) == want_log
    assert len(want_log) > 6 and any("train_accuracy" in e for e in want_log)


def test_a_run_read_back_later_resumes_exactly(workdir):
    path = setup_files(workdir, max_iter=12, scheme="random", solver_extra="average_loss: 3\n")
    straight = deferred(quiet(path))
    straight.solve()
    want = weights(straight)
    clear(workdir)
    deferred(quiet(path, max_iter=7)).solve()  # 7: a snapshot of unread numbers settles first
    state = read_binary(workdir / "snap/tiny_iter_7.solverstate", pb.SolverState())
    assert state.iter == 7 and len(state.loss_window) == 3
    resumed = deferred(quiet(path))
    resumed.solve(resume="auto")
    for name, w in weights(resumed).items():
        torch.testing.assert_close(w, want[name], rtol=0, atol=0)


def test_a_nan_loss_read_back_later_names_its_own_iteration(workdir):
    setup_files(workdir, max_iter=12)
    text = (workdir / "solver.prototxt").read_text().replace(
        'lr_policy: "step"\ngamma: 0.5\nstepsize: 7', 'lr_policy: "multistep"\ngamma: 1e30\n'
        'stepvalue: 5\ndisplay: 0\ntest_interval: 100\nsnapshot: 3')
    text = text.replace("display: 2\n", "").replace("test_interval: 5\n", "").replace(
        "snapshot: 4\n", "")
    (workdir / "solver.prototxt").write_text(text)
    messages = []
    for defer in (False, True):
        solver = quiet(str(workdir / "solver.prototxt"))
        solver.defer_results = defer
        with pytest.raises(Stop) as stop:
            solver.solve()
        messages.append(str(stop.value))
        # the rate of 5e28 from iteration 5 on: the loss of 6 is the first that is not finite;
        # read back later (at the snapshot of 9), it still stops before writing that snapshot
        assert sorted(f.name for f in (workdir / "snap").glob("*.solverstate")) == [
            "tiny_iter_3.solverstate", "tiny_iter_6.solverstate"]
        assert solver.iter == (9 if defer else 7)
        clear(workdir)
    assert messages[0] == messages[1]
    assert messages[0].startswith("loss is nan at iteration 6 (lr 5e+28): training stopped; "
                                  "the last good snapshot is snap/tiny_iter_6.solverstate")


@needs_cuda
@pytest.mark.parametrize("scheme", ["random", "perforated", "alternate"])
def test_the_step_as_a_cuda_graph_trains_the_eager_run_cuda(workdir, scheme):
    """Recorded at iteration 3 and replayed from 4 on, across tests and snapshots, with a rate
    that changes (warm-up to 2, steps at 7): the weights and the log of the run that launches
    every kernel, and a resume from a snapshot taken between replays."""
    path = setup_files(workdir, max_iter=12, scheme=scheme)
    eager = quiet(path, device="cuda", no_cuda_graph=True)
    eager.solve()
    assert eager._graph is None
    want_weights, want_log = weights(eager), run_log(workdir)
    clear(workdir)
    said = []
    graphed = Solver(path, device="cuda", say=said.append, progress=False)
    graphed.solve()
    assert graphed._graph.graph is not None and graphed._graph.failed is None
    assert any("recorded at iteration 3" in m for m in said)
    for name, w in weights(graphed).items():
        torch.testing.assert_close(w, want_weights[name], rtol=1e-5, atol=1e-6)
    got_log = run_log(workdir)
    assert [e["iter"] for e in got_log] == [e["iter"] for e in want_log]
    for got, want in zip(got_log, want_log):
        for key in ("loss", "lr", "accuracy", "train_accuracy"):
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (key, got)
    clear(workdir)
    quiet(path, device="cuda", max_iter=8).solve()
    resumed = quiet(path, device="cuda")
    resumed.solve(resume="auto")
    assert resumed._graph.graph is not None
    for name, w in weights(resumed).items():
        torch.testing.assert_close(w, want_weights[name], rtol=1e-5, atol=1e-6)


@needs_cuda
def test_an_analog_net_trains_the_eager_run_as_a_cuda_graph_cuda(workdir):
    """RPU arrays in conv (random tiling) and ip: their products (bound management included)
    and pulsed updates recorded with the rest of the step, the pulses' seeds drawn afresh at
    each replay from the solver's own generator, the rate read on the device; the weights and
    losses of the run that launches every kernel, and a resume between replays."""
    from test_analog_layers import ANALOG_NET, SOLVER
    (workdir / "net.prototxt").write_text(ANALOG_NET % "random")
    (workdir / "solver.prototxt").write_text(SOLVER % 12)
    path = str(workdir / "solver.prototxt")
    eager = quiet(path, device="cuda", no_cuda_graph=True)
    eager.solve()
    want_weights, want_log = weights(eager), run_log(workdir)
    clear(workdir)
    said = []
    graphed = Solver(path, device="cuda", say=said.append, progress=False)
    graphed.solve()
    assert graphed._graph.graph is not None and graphed._graph.failed is None, said
    assert graphed._graph.generators == (graphed.pulses,)
    for name, w in weights(graphed).items():
        torch.testing.assert_close(w, want_weights[name], rtol=1e-5, atol=1e-6)
    for got, want in zip(run_log(workdir), want_log):
        if "loss" in want:
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), got
    clear(workdir)
    quiet(path, device="cuda", max_iter=8).solve()
    resumed = quiet(path, device="cuda")
    resumed.solve(resume="auto")
    for name, w in weights(resumed).items():
        torch.testing.assert_close(w, want_weights[name], rtol=1e-5, atol=1e-6)


@needs_cuda
def test_no_graph_where_the_user_says_so_cuda(workdir):
    path = setup_files(workdir, max_iter=5, scheme="random", solver_extra="cuda_graph: false\n")
    said = []
    solver = Solver(path, device="cuda", say=said.append, progress=False)
    solver.solve()
    assert solver._graph is None and not any("CUDA graph" in m for m in said)


def test_cuda_graph_field_and_flag_are_taken_on_the_cpu(workdir):
    path = setup_files(workdir, max_iter=3, scheme="random", solver_extra="cuda_graph: false\n")
    said = []
    solver = Solver(path, say=said.append, progress=False, no_cuda_graph=True)
    solver.solve()
    assert solver._graph is None and not any("CUDA graph" in m for m in said)
    assert solver.defer_results is False


@needs_cuda
@pytest.mark.parametrize("votes", [1, 3])
def test_a_test_replayed_as_a_cuda_graph_gives_the_eager_numbers_cuda(workdir, votes):
    """12 batches (3 warm-up, 1 recorded, 8 replayed), random tiling drawing anew each pass:
    the outputs and vote accuracies of the same test launched kernel by kernel."""
    setup_files(workdir, scheme="random")
    net = Net.from_file(workdir / "net.prototxt", pb.TEST, seed=3).to_device(torch.device("cuda"))
    results = []
    for graph in (False, True, True):  # the third: the graph kept with the net, replayed
        torch.manual_seed(5)
        results.append(evaluate.test_net(net, 12, votes, progress=False, graph=graph))
    assert net.test_graphs[votes].graph is not None and net.test_graphs[votes].failed is None
    for got in results[1:]:
        assert got.outputs == pytest.approx(results[0].outputs, rel=1e-5, abs=1e-6)
        assert got.vote_accuracy == pytest.approx(results[0].vote_accuracy, rel=1e-5, abs=1e-6)
        assert got.images == 60
    assert (votes > 1) == bool(results[0].vote_accuracy)
    net.close()


def test_the_resume_command_keeps_no_cuda_graph(workdir):
    path = setup_files(workdir, max_iter=12, scheme="random")
    solver = quiet(path, no_cuda_graph=True, max_iter=10)
    settle = solver._settle

    def settle_then_a_signal(bar):
        settle(bar)
        if solver.iter == 2:
            solver._interrupted = "SIGINT"
    solver._settle = settle_then_a_signal
    with pytest.raises(Stop, match=r"SIGINT at iteration 3: .*resume with: rapa train --solver "
                                   r"\S+ --snapshot snap/tiny_iter_3.solverstate --max-iter 10 "
                                   r"--no-cuda-graph$"):
        solver.solve()


def test_the_logged_loss_is_the_mean_of_the_passes(workdir):
    """iter_size 3: the loss the log and the window hold is the mean of the three passes'
    losses (summed on the device, divided once)."""
    path = setup_files(workdir, max_iter=4, scheme="random",
                       solver_extra="iter_size: 3\naverage_loss: 1\n")  # display: 2
    solver = deferred(quiet(path))
    seen, hits = [], []
    loss = solver.net.loss

    def recording(blobs):
        value = loss(blobs)
        seen.append(float(value.detach()))
        hits.append(int((blobs["ip"].argmax(1) == blobs["label"].long()).sum()))
        return value
    solver.net.loss = recording
    solver.solve()
    logged = [e["loss"] for e in read_log_lines(workdir / "snap/tiny_log.jsonl")
              if e["phase"] == "train"]
    assert len(seen) == 12 and len(set(seen)) == 12
    assert logged == pytest.approx([sum(seen[3:6]) / 3, sum(seen[9:]) / 3], rel=1e-12)
    # every pass's predictions counted (no test after iteration 0 cleared them)
    assert solver.train_predictions == 12 * 4 and solver.train_hits == sum(hits)
    assert 0 < sum(hits) < 48


def test_what_keeps_the_graph_off_is_said_on_cuda_alone(workdir):
    """Decided before any CUDA call (the graph's streams are made at its first step): the
    notices and the device the graph is given, checked here by naming the device cuda."""
    path = setup_files(workdir, max_iter=2, scheme="random")
    said = []
    solver = Solver(path, say=said.append, progress=False)
    assert solver._graphed_step() is None and said == []  # the CPU: nothing to say
    solver.device = torch.device("cuda", 1)
    graph = solver._graphed_step()
    assert graph.device == torch.device("cuda", 1) and graph.warmup == 3
    assert said[-1].startswith("CUDA graph: the training step is recorded at iteration 3 "
                               "(after 3 steps without) and replayed after it")
    solver.iter = 7
    assert "recorded at iteration 10" in (solver._graphed_step(), said[-1])[1]
    solver.group.world = 2
    assert solver._graphed_step() is None
    assert said[-1] == ("CUDA graph: off (the processes exchange gradients between the passes "
                        "and the update): training without one")
    solver.group.world = 1
    assert graph.step == solver._step and graph.say is solver.say

    class Arrays:  # as analog layers' weights hold their arrays
        def __init__(self, capturable):
            self.capturable = capturable

    def hold(kinds):  # layer -> whether its arrays are capturable (RPU) or not (HIC)
        for b in solver.params:
            layer = b.name.rsplit("/", 1)[0]
            b.arrays = Arrays(kinds[layer]) if layer in kinds and b.name.endswith("/0") else None
    hold({"conv": False, "ip": False})
    assert solver._graphed_step() is None
    assert said[-1] == ("CUDA graph: off (layer(s) conv, ip hold HIC arrays, whose updates "
                        "decide on the host): training without one")
    hold({"conv": True, "ip": False})
    assert solver._graphed_step() is None
    assert said[-1].startswith("CUDA graph: off (layer(s) ip hold HIC arrays")
    hold({"conv": True, "ip": True})  # RPU arrays only: on, the pulses' seeds drawn in it
    graph = solver._graphed_step()
    assert graph is not None and graph.generators == (solver.pulses,)
    hold({})
    assert solver._graphed_step().generators == ()
    for off in ("no_cuda_graph", "cuda_graph"):
        said.clear()
        if off == "no_cuda_graph":
            solver.no_cuda_graph = True
        else:
            solver.no_cuda_graph, solver.sp.cuda_graph = False, False
        assert solver._graphed_step() is None and said == []
    solver.close()


def test_rpu_nets_are_recorded_and_hic_nets_not(workdir):
    """The real arrays: RPU arrays run every product and update on the device (capturable),
    HIC ones decide on the host; `rapa test` follows the same rule (graph_kept_off)."""
    from rapa.analog import AnalogArrays, HICArrays
    from rapa.cli.test import graphed
    from rapa.cuda_graph import graph_kept_off
    from test_analog_layers import ANALOG_NET, SOLVER
    from test_hic import HIC_NET
    assert AnalogArrays.capturable and not HICArrays.capturable
    (workdir / "solver.prototxt").write_text(SOLVER % 2)
    for net, off in ((ANALOG_NET, []), (HIC_NET, ["conv", "ip"])):
        (workdir / "net.prototxt").write_text(net % "random")
        said = []
        solver = Solver(str(workdir / "solver.prototxt"), say=said.append, progress=False)
        assert graph_kept_off(solver.params) == off
        for device, no_graph, want in (("cuda", False, not off), ("cuda", True, False),
                                       ("cpu", False, False)):  # rapa test's rule
            told = []
            assert graphed(solver.net, torch.device(device), no_graph, told.append) == want
            assert told == (["CUDA graph: off (layer(s) conv, ip hold HIC arrays): testing "
                             "without one"] if off and device == "cuda" and not no_graph else [])
        solver.device = torch.device("cuda")  # decided before any CUDA call
        graph = solver._graphed_step()
        if off:
            assert graph is None and said[-1] == (
                "CUDA graph: off (layer(s) conv, ip hold HIC arrays, whose updates decide on "
                "the host): training without one")
        else:
            assert graph.generators == (solver.pulses,)
        solver.close()


def test_a_test_graph_is_kept_with_the_net_per_number_of_votes(workdir, monkeypatch):
    """The wiring of test_net(graph=True), with a stand-in for the graph (no GPU here): one
    per number of votes, made once, given the notice's `say`, running the batch's passes."""
    import rapa.cuda_graph
    made = []

    class StandIn:
        def __init__(self, step, say):
            made.append(say)
            self.step = step

        def __call__(self, batches):
            return self.step(batches)
    monkeypatch.setattr(rapa.cuda_graph, "GraphedStep", StandIn)
    setup_files(workdir, scheme="random")
    net = Net.from_file(workdir / "net.prototxt", pb.TEST, seed=3)
    say = []
    results = {}
    for votes, graph in ((3, False), (3, True), (1, True), (3, True)):
        torch.manual_seed(5)
        results[(votes, graph)] = evaluate.test_net(net, 4, votes, progress=False, graph=graph,
                                                    say=say.append)
    assert made == [say.append, say.append] and sorted(net.test_graphs) == [1, 3]
    assert results[(3, True)].outputs == results[(3, False)].outputs
    assert results[(3, True)].vote_accuracy == results[(3, False)].vote_accuracy
    assert results[(1, True)].vote_accuracy == {} and results[(3, True)].vote_accuracy
    net.close()


def test_hits_leave_out_the_ignored_label_and_a_net_without_labels_counts_none(workdir):
    path = setup_files(workdir, max_iter=3, scheme="random")
    net = (workdir / "net.prototxt").read_text()
    (workdir / "net.prototxt").write_text(net.replace(
        'top: "loss" }', 'top: "loss" loss_param { ignore_label: 1 } }'))
    solver = deferred(quiet(path))
    counted, right = [], []
    loss = solver.net.loss

    def recording(blobs):
        labels = blobs["label"].long()
        counted.append(int((labels != 1).sum()))
        right.append(int(((blobs["ip"].argmax(1) == labels) & (labels != 1)).sum()))
        return loss(blobs)
    solver.net.loss = recording
    solver.solve()
    assert solver.train_predictions == sum(counted) and 0 < sum(counted) < 12
    assert solver.train_hits == sum(right)
    # The loss is the InnerProduct's top itself (loss_weight): nothing reads labels.
    (workdir / "net.prototxt").write_text(net.replace(
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }',
        'layer { name: "sq" type: "Eltwise" bottom: "ip" bottom: "ip" top: "sq" loss_weight: 1 '
        'eltwise_param { operation: PROD } }'))
    clear(workdir)
    solver = deferred(quiet(path))
    assert solver.scored is None
    solver.solve()
    assert solver.train_predictions == 0 and solver.train_hits == 0 and len(solver.losses) == 1
