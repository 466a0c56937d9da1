"""One update per learnable blob (rapa.sgd.SGD): Caffe's SGD for digital blobs, the arrays'
pulsed update for analog ones; and how the solver saves and restores it."""
import pytest
import torch

from rapa.layers import Learnable
from rapa.proto import pb
from rapa.prototxt import read_binary, write_binary
from rapa.sgd import SGD
from rapa.snapshot import tensor_to_blob
from rapa.solver import Solver
from test_analog_layers import ANALOG_NET
from test_solver import SOLVER, weights, workdir  # noqa: F401  (the fixture)


class RecordingArrays:
    """Stands in for AnalogArrays: records the update it is asked for."""

    def __init__(self):
        self.calls = []

    def apply_update(self, weight, lr, generator=None):
        self.calls.append((weight, lr))
        self.generator = generator


def blob(value, lr_mult=1.0, decay_mult=1.0, grad=None, arrays=None, name="b"):
    p = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))
    p.grad = None if grad is None else torch.tensor(grad, dtype=torch.float64)
    return Learnable(name, p, pb.ParamSpec(lr_mult=lr_mult, decay_mult=decay_mult), arrays)


@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_digital_blobs_take_caffes_step_with_momentum(regularization):
    w = blob([1.0, -2.0], lr_mult=2, decay_mult=0.5, grad=[0.5, 0.25])
    sgd = SGD([w], momentum=0.9, weight_decay=0.1, regularization=regularization)
    w0 = w.blob.detach().clone()
    sgd.step(0.01)
    decay = w0.sign() if regularization == "L1" else w0
    h1 = 0.01 * 2 * (torch.tensor([0.5, 0.25], dtype=torch.float64) + 0.05 * decay)
    torch.testing.assert_close(w.blob.detach(), w0 - h1, rtol=0, atol=1e-15)
    assert w.blob.grad is None
    w1 = w.blob.detach().clone()
    w.blob.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sgd.step(0.02)
    decay = w1.sign() if regularization == "L1" else w1
    h2 = 0.9 * h1 + 0.02 * 2 * (torch.tensor([0.0, 1.0], dtype=torch.float64) + 0.05 * decay)
    torch.testing.assert_close(w.blob.detach(), w1 - h2, rtol=0, atol=1e-15)


def test_analog_blobs_get_the_arrays_update_and_no_history():
    arrays = RecordingArrays()
    analog = blob([0.5, 0.5], lr_mult=3, arrays=arrays, name="conv/0")
    frozen = blob([1.0], lr_mult=0, grad=[5.0], name="conv/1")
    digital = blob([1.0], grad=[1.0], name="ip/0")
    pulses = torch.Generator()
    sgd = SGD([analog, frozen, digital], momentum=0.5, weight_decay=0.1, generator=pulses)
    assert len(sgd.history) == 2  # frozen and digital: none for the analog weight
    sgd.step(0.2, passes=4)
    assert len(arrays.calls) == 1
    assert arrays.generator is pulses  # the solver's generator of the pulses' seeds
    weight, lr = arrays.calls[0]
    assert weight is analog.blob and float(lr) == 0.2 * 3 / 4
    assert torch.equal(analog.blob.detach(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.equal(frozen.blob.detach(), torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(digital.blob.detach(),
                               torch.tensor([1.0 - 0.2 * (1.0 + 0.1)], dtype=torch.float64))


def test_a_rate_on_the_device_updates_as_the_number():
    """The solver's rate as a 0-dim tensor (what a CUDA graph reads at each replay): digital
    blobs take the same step; analog arrays get it as a tensor on the device (not read back:
    the pulsed update reads it there), times lr_mult, divided by the passes (1 by default); a
    blob without a gradient is skipped, not the end."""
    runs = []
    for rate in (0.2, torch.tensor(0.2, dtype=torch.float64)):
        arrays = RecordingArrays()
        analog = blob([0.5], lr_mult=3, arrays=arrays, name="conv/0")
        unused = blob([2.0], grad=None, name="conv/1")  # no gradient this step
        digital = blob([1.0, 3.0], lr_mult=0.5, grad=[1.0, -2.0], name="ip/0")
        sgd = SGD([analog, unused, digital], momentum=0.5, weight_decay=0.1)
        sgd.step(rate)
        runs.append((arrays.calls[0][1], unused.blob.detach().clone(), digital.blob.detach()))
    for lr, unused, digital in runs:
        assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float64 and lr.dim() == 0
        assert lr.item() == 0.2 * 3
        assert torch.equal(unused, torch.tensor([2.0], dtype=torch.float64))
        want = torch.tensor([1.0, 3.0], dtype=torch.float64) - 0.2 * 0.5 * (
            torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.1 * torch.tensor([1.0, 3.0],
                                                                              dtype=torch.float64))
        torch.testing.assert_close(digital, want, rtol=0, atol=1e-15)


def _analog_files(workdir, max_iter):  # noqa: F811  (a path, not the fixture)
    (workdir / "net.prototxt").write_text(ANALOG_NET % "random")
    (workdir / "solver.prototxt").write_text(SOLVER % max_iter)
    return str(workdir / "solver.prototxt")


def test_solverstate_of_an_analog_net_keeps_digital_momentum_only(workdir):  # noqa: F811
    solver = Solver(_analog_files(workdir, 4), say=lambda m: None, progress=False)
    solver.solve()
    digital = [b for b in solver.params if b.arrays is None]
    assert len(solver.params) == 5 and len(digital) == 3   # conv and ip weights are analog
    state = read_binary(workdir / "snap/tiny_iter_4.solverstate", pb.SolverState())
    assert [tuple(h.shape.dim) for h in state.history] == [tuple(b.blob.shape) for b in digital]
    # The test net computes with the train net's weights and the same arrays' device draws.
    train, test = solver.net.layer("conv").module, solver.test_nets[0].layer("conv").module
    assert test.weight is train.weight and test.arrays.dw_up is train.arrays.dw_up
    assert test.arrays.out_scale is train.arrays.out_scale


def test_older_solverstates_with_analog_momentum_resume_exactly(workdir):  # noqa: F811
    path = _analog_files(workdir, 8)
    straight = Solver(path, say=lambda m: None, progress=False)
    straight.solve()
    final = weights(straight)
    for f in (workdir / "snap").glob("tiny_iter_8.*"):
        f.unlink()
    # The format of earlier versions: one (zero, unused) momentum blob per analog weight too.
    state_path = workdir / "snap/tiny_iter_4.solverstate"
    state = read_binary(state_path, pb.SolverState())
    digital = iter(list(state.history))
    old = [tensor_to_blob(torch.zeros_like(b.blob)) if b.arrays is not None else next(digital)
           for b in straight.params]
    del state.history[:]
    state.history.extend(old)
    write_binary(state_path, state)
    resumed = Solver(path, say=lambda m: None, progress=False)
    resumed.solve(resume=str(state_path))
    for name, w in weights(resumed).items():
        torch.testing.assert_close(w, final[name], rtol=0, atol=0)
    # A count that fits neither layout names the file.
    del state.history[-1]
    write_binary(state_path, state)
    from rapa.errors import RapaError
    with pytest.raises(RapaError, match="tiny_iter_4.solverstate: holds 4 momentum blobs, the "
                                        "net has 3 digital learnable blobs"):
        Solver(path, say=lambda m: None, progress=False).restore(state_path)


def test_defaults_are_plain_sgd():
    w = blob([1.0, 2.0], grad=[0.5, -1.0])
    sgd = SGD([w])
    sgd.step(0.1)
    torch.testing.assert_close(w.blob.detach(), torch.tensor([0.95, 2.1], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    w.blob.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    sgd.step(0.1)  # no momentum: the first step leaves nothing behind
    torch.testing.assert_close(w.blob.detach(), torch.tensor([0.85, 2.0], dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_frozen_blobs_lose_any_gradient():
    frozen = blob([1.0], lr_mult=0, grad=[3.0])
    SGD([frozen], momentum=0.9).step(0.1)
    assert frozen.blob.grad is None and float(frozen.blob.detach()) == 1.0


def test_the_solver_divides_the_analog_rate_by_its_passes(workdir):  # noqa: F811
    """iter_size 2: the arrays get rate x lr_mult / 2 (their pending rows are both passes')."""
    (workdir / "net.prototxt").write_text(ANALOG_NET % "random")
    (workdir / "solver.prototxt").write_text(SOLVER % 1 + "iter_size: 2\n")
    solver = Solver(str(workdir / "solver.prototxt"), say=lambda m: None, progress=False)
    asked = []
    for b in solver.params:
        if b.arrays is not None:
            update = b.arrays.apply_update
            b.arrays.apply_update = lambda w, lr, generator=None, _u=update: (
                asked.append(lr), _u(w, lr, generator=generator))
    solver.solve()
    rate = 0.05 * 0.1  # base_lr in warm-up (warmup_factor 0.1)
    assert asked == [pytest.approx(rate / 2), pytest.approx(rate / 2)]
