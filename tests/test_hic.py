"""Hybrid in-memory computing arrays (rapa.analog.hic): the fixed-point representation with
ideal devices, the accumulator's transfers, carries, refresh, saturation and counts, the
products and the update against float64 references, the devices' statistics, drift, snapshots
and configuration errors."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import rapa  # noqa: F401
from rapa.analog import HICArrays, HICConfig, hic_from_proto
from rapa.analog.drift import ProgrammedNet
from rapa.analog.hic import encode
from rapa.analog.pcm import PCMLikeNoiseModel
from rapa.analog.pcm_pulses import PCMPresetDevice
from rapa.errors import RapaError
from rapa.layers.base import make_layer
from rapa.net import Net
from rapa.nn import Linear, TiledConv2d
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.snapshot import load_weights, save_weights
from rapa.solver import Solver
from test_solver import NET, SOLVER, weights, workdir  # noqa: F401  (the fixture)


def ideal(**fields) -> HICConfig:
    """No programming noise, exact products; g_max 24 uS so that every level's conductance
    (8 uS apart with 4 levels) is exact in float32."""
    cfg = HICConfig(pcm=PCMLikeNoiseModel(prog_noise_scale=0.0, g_max=24.0), **fields)
    cfg.forward = dataclasses.replace(cfg.forward, is_perfect=True)
    cfg.backward = dataclasses.replace(cfg.backward, is_perfect=True)
    return cfg


def arrays_holding(v, cfg=None) -> HICArrays:
    """Arrays of v's shape (T, O, K) whose weights are v LSBs (delta 1)."""
    cfg = cfg or ideal()
    a = HICArrays(cfg, tuple(v.shape))
    w = v.double() * 1.0
    w.view(-1)[0] = cfg.span  # one weight at the range's top: delta = 1 LSB exactly
    a.map_(w)
    a._hold(v.float().reshape(-1), None, None, fresh=True)
    return a


def test_ideal_devices_hold_exactly_the_fixed_point_weight():
    cfg = ideal()  # 4 binary cells (1, 2, 4, 8), U = 16, 4 levels: v in [-48, 63]
    assert (cfg.capacity, cfg.span, cfg.device_bits()) == (16, 48, 8.0)
    v = torch.tensor([[[37.0, -37.0, 0.0, 63.0, -48.0, 15.0, -1.0, 16.0]]])
    a = arrays_holding(v, cfg)
    assert a.bits[:, 0, 0, 0].tolist() == [1, 0, 1, 0]          # 37 = 2 * 16 + 5
    assert a.levels[:, 0, 0, 0].tolist() == [2, 0]
    assert a.bits[:, 0, 0, 1].tolist() == [1, 1, 0, 1]          # -37 = -3 * 16 + 11
    assert a.levels[:, 0, 0, 1].tolist() == [0, 3]
    assert a.levels[:, 0, 0, 6].tolist() == [0, 1] and a.bits[:, 0, 0, 6].tolist() == [1] * 4
    assert torch.equal(a.value(), v)
    assert torch.equal(a.read(), (v.double() / cfg.span).float())  # w = v / span exactly
    # Through a layer: its weight times the scale is delta v, in the layer's units.
    torch.manual_seed(0)
    lin = Linear(8, 3, rpu_config=cfg)
    assert torch.equal(lin.weight, (lin.arrays.value()[0].double() / cfg.span).float())
    assert lin.arrays.value().abs().max() == cfg.span  # the largest weight maps to the span


def test_bit_weights_other_than_powers_of_two_encode_greedily():
    weights = (1, 1, 2, 3)  # every value up to 7 held
    for value in range(8):
        cells = encode(torch.tensor([float(value)]), weights)
        assert sum(c * w for c, w in zip(cells[:, 0].tolist(), weights)) == value
    cfg = ideal(binary_cells=4, bit_weights=(1, 1, 2, 3))
    assert cfg.capacity == 8
    a = arrays_holding(torch.tensor([[[-9.0, 7.0, 8.0, 23.0]]]), cfg)
    assert torch.equal(a.value(), torch.tensor([[[-9.0, 7.0, 8.0, 23.0]]]))


def _update(a, weight, step_lsb, lr=0.5, generator=None):
    """One recorded pass whose SGD step is step_lsb LSBs on every weight of array 0."""
    t, o, k = a.shape
    alpha = float(a.out_scale[0])
    # dL/dw = d^T x = c on every weight; the step is -lr c span / alpha^2 LSBs.
    c = -step_lsb * alpha ** 2 / (lr * a.config.span)
    x = torch.ones(1, k, dtype=torch.float64)
    d = torch.full((1, o), c, dtype=torch.float64)
    a.pending.append((x, d, torch.zeros(1, dtype=torch.long)))
    a.apply_update(weight, lr, generator)


def test_updates_transfer_exactly_when_they_cross_one_step_and_not_before():
    cfg = ideal(stochastic_rounding=False)
    v = torch.tensor([[[5.0, -5.0, 15.0, 0.0]]])
    a = arrays_holding(v, cfg)
    w = a.read().clone()
    counts = a.set_count.clone(), a.reset_count.clone()
    for i in range(3):
        _update(a, w, 0.3125)  # 5/16 LSB: on the accumulator's grid
        assert torch.equal(a.value(), v)  # 0.3125, 0.625, 0.9375: nothing transferred
        assert torch.equal(a.accumulator, torch.full_like(a.accumulator, 0.3125 * (i + 1)))
    assert torch.equal(a.set_count, counts[0]) and torch.equal(a.reset_count, counts[1])
    _update(a, w, 0.3125)  # 1.25: one LSB moves, 0.25 stays
    assert torch.equal(a.value(), v + 1)
    assert torch.equal(a.accumulator, torch.full_like(a.accumulator, 0.25))
    assert torch.equal(w, a.read())
    # 5 -> 6: bits 0101 -> 0110, one SET (bit 1) and one RESET (bit 0); 15 -> 16 carries into
    # the pair: 4 RESETs of the binary cells and one SET of G+.
    sets, resets = a.set_count - counts[0], a.reset_count - counts[1]
    assert sets[:, 0, 0, 0].tolist() == [0, 1, 0, 0, 0, 0]
    assert resets[:, 0, 0, 0].tolist() == [1, 0, 0, 0, 0, 0]
    assert sets[:, 0, 0, 2].tolist() == [0, 0, 0, 0, 1, 0]
    assert resets[:, 0, 0, 2].tolist() == [1, 1, 1, 1, 0, 0]
    assert a.levels[:, 0, 0, 2].tolist() == [1, 0]
    # Negative steps borrow: -5 + 1 = -4 changes bits only; 0 - 2 borrows from the pair (G-).
    _update(a, w, -2.25)  # accumulator 0.25 - 2.25 = -2: two LSBs down
    assert torch.equal(a.value(), v + 1 - 2)
    assert a.levels[:, 0, 0, 3].tolist() == [0, 1]  # -1 = -16 + 15


def test_the_accumulator_saturates_and_rounds_to_its_grid():
    cfg = ideal(stochastic_rounding=False, accumulator_bits=6, accumulator_frac_bits=2)
    top, res = cfg.limits()
    assert (top, res) == (7.75, 0.25)
    a = arrays_holding(torch.zeros(1, 1, 2), cfg)
    w = a.read().clone()
    _update(a, w, 100.0)  # saturates at 7.75: 7 LSBs move, 0.75 stays
    assert a.value().tolist() == [[[7.0, 7.0]]]
    assert a.accumulator.tolist() == [[[0.75, 0.75]]]
    _update(a, w, 0.1)  # rounds to 0 on a grid of 0.25
    assert a.accumulator.tolist() == [[[0.75, 0.75]]]
    _update(a, w, 0.13)  # rounds to 0.25: 1.0 moves one LSB
    assert a.value().tolist() == [[[8.0, 8.0]]] and a.accumulator.abs().max() == 0


def test_stochastic_rounding_is_unbiased_where_nearest_loses_small_steps():
    torch.manual_seed(0)
    v = torch.zeros(1, 50, 40)
    cfg = ideal(accumulator_bits=16, accumulator_frac_bits=2)
    a, b = arrays_holding(v, cfg), arrays_holding(v, dataclasses.replace(
        cfg, stochastic_rounding=False))
    wa, wb = a.read().clone(), b.read().clone()
    g = torch.Generator().manual_seed(3)
    for _ in range(40):
        _update(a, wa, 0.05, generator=g)  # a fifth of the grid's step
        _update(b, wb, 0.05)
    total = a.value() + a.accumulator
    # 40 x 0.05 = 2 LSBs on average; each step's rounding error has std <= 0.125.
    assert abs(total.mean().item() - 2.0) < 4 * 0.125 * math.sqrt(40 / 2000)
    assert total.std().item() > 0.1
    assert (b.value() + b.accumulator).abs().max() == 0  # nearest rounds every step away


def test_refresh_resets_the_pair_when_a_device_would_pass_its_top_level():
    cfg = ideal(accumulator_bits=12)  # levels 0..3; 16 LSBs within the accumulator
    a = arrays_holding(torch.tensor([[[0.0]]]), cfg)
    w = a.read().clone()
    a.levels[:, 0, 0, 0] = torch.tensor([3.0, 3.0])  # M = 0 held as 3 - 3
    a.g_pair[:, 0, 0, 0] = 24.0
    before = a.set_count.clone(), a.reset_count.clone()
    _update(a, w, 16.0)  # +16 LSB: M 0 -> 1, but G+ is at its top
    assert a.levels[:, 0, 0, 0].tolist() == [1, 0]  # refreshed: both RESET, 1 on G+
    assert a.value().item() == 16
    assert (a.reset_count - before[1])[4:, 0, 0, 0].tolist() == [1, 1]
    assert (a.set_count - before[0])[4:, 0, 0, 0].tolist() == [1, 0]
    assert a.g_pair[:, 0, 0, 0].tolist() == [8.0, 0.0]  # level 1 of 24 uS / 3
    _update(a, w, 16.0)  # no refresh now: G+ one level up
    assert a.levels[:, 0, 0, 0].tolist() == [2, 0]
    assert (a.reset_count - before[1])[4:, 0, 0, 0].tolist() == [1, 1]


def test_saturation_keeps_the_weight_in_range_and_is_counted():
    cfg = ideal(stochastic_rounding=False)
    a = arrays_holding(torch.tensor([[[62.0, -47.0, 0.0]]]), cfg)
    w = a.read().clone()
    _update(a, w, 5.0)
    assert a.value().tolist() == [[[63.0, -42.0, 5.0]]] and a.saturations.item() == 1
    for _ in range(3):
        _update(a, w, -7.0)
    assert a.value().tolist() == [[[42.0, -48.0, -16.0]]]
    assert a.saturations.item() == 4  # 1 + 3, of 12 transfers
    assert w.abs().max() <= (cfg.span + cfg.capacity - 1) / cfg.span


def test_write_counts_equal_the_switching_attempts():
    torch.manual_seed(1)
    cfg = ideal(set_probability=0.25, reset_probability=0.5, stochastic_rounding=False)
    a = arrays_holding(torch.zeros(1, 100, 100), cfg)  # every cell 0
    w = a.read().clone()
    before = a.set_count.clone(), a.reset_count.clone()
    _update(a, w, 1.0)  # bit 0 of every weight SET: geometric attempts, mean 1 / 0.25
    sets = (a.set_count - before[0])[0]
    assert sets.min() >= 1 and abs(sets.mean().item() - 4.0) < 4 * math.sqrt(12 / 1e4)
    assert (a.set_count - before[0])[1:].abs().max() == 0
    _update(a, w, -1.0)  # and RESET again: mean 2
    resets = (a.reset_count - before[1])[0]
    assert resets.min() >= 1 and abs(resets.mean().item() - 2.0) < 4 * math.sqrt(2 / 1e4)
    assert (a.bits == 0).all() and torch.equal(a.value(), torch.zeros(1, 100, 100))


def test_programming_noise_of_the_devices_follows_the_pcm_model():
    torch.manual_seed(2)
    cfg = HICConfig()  # aihwkit's programming noise
    n = 20000
    v = torch.full((1, 1, n), 3.0 * 16)  # M = 3: G+ at the top level, binary cells 0
    v[0, 0, n // 2:] = -16.0             # M = -1: G- at level 1
    a = HICArrays(cfg, (1, 1, n))
    a._hold(v.reshape(-1), None, None, fresh=True)
    model = cfg.pcm
    for g, target in ((a.g_pair[0, 0, 0, :n // 2], 25.0),
                      (a.g_pair[1, 0, 0, n // 2:], 25.0 / 3)):
        sigma = model.prog_sigma(torch.tensor(target)).item()
        assert abs(g.mean().item() - target) < 4 * sigma / math.sqrt(n / 2)
        assert abs(g.std().item() / sigma - 1) < 4 / math.sqrt(n)
    # The value meant is exact; what is read carries the noise.
    assert torch.equal(a.value(), v)
    assert not torch.equal(a.read() * cfg.span, v)


@pytest.mark.parametrize("out,tiles", [(4, 2), (2, 4), (1, 4)])  # more tiles than outputs too
def test_forward_and_update_match_a_float64_convolution(out, tiles):
    torch.manual_seed(3)
    cfg = ideal(accumulator_bits=32, accumulator_frac_bits=24, stochastic_rounding=False,
                weight_range=1.0)
    conv = TiledConv2d(3, out, 3, padding=1, tiling="random", num_tiles=tiles,
                       rpu_config=cfg).double()
    a = conv.arrays
    a.clip_(conv.weight3())  # in float64 now: the weight read from the devices again
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    # Perfect products: the tiled conv of delta v; the update: SGD's step on it, in LSBs.
    gen = torch.Generator().manual_seed(9)
    y = conv(x, generator=gen)
    assign = conv.scheme.assign(2, 5, 5, training=True,
                                device=x.device, generator=torch.Generator().manual_seed(9))
    w_layer = (conv.weight3() * a.out_scale.view(-1, 1, 1)).detach().requires_grad_()
    rows = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    per_tile = torch.einsum("mk,tok->mto", rows, w_layer)
    ref = per_tile[torch.arange(len(rows)), assign.reshape(-1)] + conv.bias[assign.reshape(-1)]
    ref = ref.view(2, 5, 5, out).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    target = torch.randn_like(ref)
    ((y - target) ** 2).sum().backward()
    ((ref - target) ** 2).sum().backward()
    before = a.value() + a.accumulator.double()
    a.apply_update(conv.weight, 0.01)
    delta = (a.out_scale.double() / cfg.span).view(-1, 1, 1)
    moved = a.value() + a.accumulator.double() - before
    torch.testing.assert_close(moved, -0.01 * w_layer.grad / delta, rtol=0, atol=2 ** -24)
    assert moved.abs().max() > 1  # the step crosses LSBs: devices moved
    torch.testing.assert_close(conv.weight3().detach(), a.read(), rtol=0, atol=0)


@pytest.mark.parametrize("stride,padding", [((1, 1), (2, 2)), ((2, 1), (0, 1))])
def test_untiled_exact_products_are_the_dense_convolution_and_record_its_gradient(
        stride, padding):
    """One array, exact products: analog_conv's dense path (_ExactConv) against a float64
    convolution and against the row-by-row path it replaces (records_gradient off)."""
    torch.manual_seed(5)
    cfg = ideal(weight_range=0.5)
    conv = TiledConv2d(3, 4, (3, 5), stride=stride, padding=padding, rpu_config=cfg)
    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    target = torch.randn_like(conv(x))
    layer_w = (conv.weight3() * conv.arrays.out_scale.view(-1, 1, 1)).detach()
    ref = F.conv2d(x.detach().double(), layer_w.double().view(4, 3, 3, 5), conv.bias.double(),
                   stride, padding)
    results = []
    for dense in (True, False):
        conv.arrays.records_gradient = dense  # the instance's: off takes the rows' path
        x.grad = None
        y = conv(x)
        ((y - target) ** 2).sum().backward()
        pending = conv.arrays.pending
        assert len(pending) == 1 and isinstance(pending[0], torch.Tensor) == dense
        results.append((y.detach(), x.grad.clone(), conv.arrays.gradient()))
        pending.clear()
    torch.testing.assert_close(results[0][0].double(), ref, rtol=1e-5, atol=1e-5)
    # The input's gradient and dL/dw (d x^T, d = alpha dL/dy) against float64 autograd.
    xr = x.detach().double().requires_grad_()
    wr = layer_w.double().view(4, 3, 3, 5).requires_grad_()
    out = F.conv2d(xr, wr, conv.bias.double(), stride, padding)
    ((out - target.double()) ** 2).sum().backward()
    alpha = float(conv.arrays.out_scale[0])
    torch.testing.assert_close(results[0][1].double(), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][2].double(), alpha * wr.grad.view(1, 4, 45),
                               rtol=1e-5, atol=1e-5)
    for dense, rows in zip(results[0], results[1]):
        torch.testing.assert_close(dense, rows, rtol=1e-5, atol=1e-5)
    # A channels-last input (as a rows-path layer hands on): the same numbers.
    conv.arrays.records_gradient = True
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    ((conv(x_cl) - target) ** 2).sum().backward()
    torch.testing.assert_close(conv.arrays.gradient(), results[0][2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_cl.grad, results[0][1], rtol=1e-6, atol=1e-6)
    conv.arrays.pending.clear()
    # Two passes before an update: both gradients count.
    conv.arrays.records_gradient = True
    for _ in range(2):
        ((conv(x) - target) ** 2).sum().backward()
    assert len(conv.arrays.pending) == 2
    torch.testing.assert_close(conv.arrays.gradient(), 2 * results[0][2], rtol=1e-6, atol=1e-6)
    conv.arrays.pending.clear()
    # Exact products one way only: that direction's periphery applies (its results leave the
    # dense convolution's), the other's products stay exact, the gradient is recorded summed.
    for direction in ("forward", "backward"):
        half = dataclasses.replace(cfg, **{direction: dataclasses.replace(
            getattr(cfg, direction), is_perfect=False)})
        other = TiledConv2d(3, 4, (3, 5), stride=stride, padding=padding, rpu_config=half)
        other.load_state_dict(conv.state_dict())
        x.grad = None
        y = other(x)
        ((y - target) ** 2).sum().backward()
        assert isinstance(other.arrays.pending[0], torch.Tensor), direction
        moved = (y.detach() if direction == "forward" else x.grad) - \
            (results[0][0] if direction == "forward" else results[0][1])
        assert moved.abs().max() > 1e-3, direction
        if direction == "backward":
            torch.testing.assert_close(y.detach(), results[0][0], rtol=1e-5, atol=1e-5)


def test_drift_reads_the_hic_devices_from_t0_on():
    torch.manual_seed(4)
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 6 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
            'hic_param { pcm { prog_noise_scale: 0 g_max: 50 } } } }')
    net = Net(parse_text(text, pb.NetParameter()), pb.TEST)
    a = net.layer("ip").module.arrays
    w = net.layer("ip").module.weight
    trained = w.detach().clone()
    quiet = PCMLikeNoiseModel(read_noise_scale=0.0)
    programmed = ProgrammedNet(net, quiet, "n", torch.Generator().manual_seed(1))
    # The devices' own conductance scale, the test's drift and read noise.
    assert programmed.layers[0].model == dataclasses.replace(quiet, g_max=50.0)
    assert a.g_pair.max() > 40  # programmed at g_max 50
    programmed.read_at(0.0, "none")
    torch.testing.assert_close(w.detach(), trained, rtol=0, atol=1e-7)  # t = t0: the identity
    t = 3.15e7
    programmed.read_at(t, "none")
    expect = sum(coef * g * ((t + 20.0) / 20.0) ** -nu
                 for g, nu, coef in programmed.layers[0].terms)
    torch.testing.assert_close(w.detach(), expect.float().view(w.shape), rtol=1e-6, atol=1e-7)
    assert (w.detach().abs() < trained.abs() + 1e-7).all() and not torch.equal(w, trained)
    # The drift exponents follow each device's target: the pair's and the cells' (SET: g_max).
    nus = [nu for _, nu, _ in programmed.layers[0].terms]
    assert len(nus) == 2 + a.config.binary_cells
    programmed.restore()
    assert torch.equal(w.detach(), trained)


HIC_NET = NET.replace(
    'tiling_param { scheme: "%s" num_tiles: 4 } } }',
    'tiling_param { scheme: "%s" num_tiles: 4 } hic_param { weight_range: 1 } } }').replace(
    'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }',
    'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } '
    'hic_param { set_probability: 0.5 } } }')


@pytest.mark.parametrize("programming", ["statistical", "pulsed"])
def test_hic_net_trains_saves_and_resumes_bit_for_bit(workdir, programming):  # noqa: F811
    assert HIC_NET.count("hic_param") == 2
    net = HIC_NET.replace("hic_param {", f'hic_param {{ programming: "{programming}"')
    (workdir / "net.prototxt").write_text(net % "random")
    (workdir / "solver.prototxt").write_text(SOLVER % 12)
    path = str(workdir / "solver.prototxt")
    said = []
    straight = Solver(path, say=said.append, progress=False)
    start = {n: w.clone() for n, w in weights(straight).items()}
    pair_sets = [straight.net.layer(n).module.arrays.set_count[-2:].sum() for n in ("conv", "ip")]
    straight.solve()
    assert ("HIC weights of conv, ip: SGD steps into their accumulators at the rate times "
            "lr_mult, without momentum or weight decay (their biases have momentum and weight "
            "decay)") in said
    final = weights(straight)
    assert not torch.equal(final["ip/0"], start["ip/0"])
    arrays = {n: straight.net.layer(n).module.arrays for n in ("conv", "ip")}
    # Carries reached the multi-level pairs (SET events, pulses when pulsed) during the run.
    assert sum(a.set_count[-2:].sum() for a in arrays.values()) > sum(pair_sets)
    state = {n: [b.clone() for b in a.state_blobs()] for n, a in arrays.items()}
    assert state["conv"][5].sum() > 0  # set counts
    assert len(state["conv"]) == 9 + (programming == "pulsed")  # + the pulse draws
    for f in (workdir / "snap").iterdir():
        f.unlink()
    Solver(path, max_iter=8, say=lambda m: None, progress=False).solve()
    resumed = Solver(path, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    for n, w in weights(resumed).items():
        torch.testing.assert_close(w, final[n], rtol=0, atol=0)
    for n in ("conv", "ip"):
        for mine, theirs in zip(resumed.net.layer(n).module.arrays.state_blobs(), state[n]):
            assert torch.equal(mine, theirs)


def test_a_digital_model_loads_onto_hic_devices_and_a_hic_model_keeps_them(tmp_path):
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 6 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 3 %s } }')
    torch.manual_seed(5)
    digital = Net(parse_text(text % "", pb.NetParameter()), pb.TRAIN)
    save_weights(digital, tmp_path / "d.caffemodel")
    hic = Net(parse_text(text % "hic_param { pcm { prog_noise_scale: 0 } }", pb.NetParameter()),
              pb.TRAIN)
    load_weights(hic, tmp_path / "d.caffemodel")
    a, w = hic.layer("ip").module.arrays, digital.layer("ip").module.weight.detach()
    delta = a.out_scale / a.config.span
    assert torch.equal(a.value()[0], (w / delta).round())
    assert (a.reset_count[:, 0] == 1).all()  # the load's programming counts, not the fillers'
    assert torch.equal(a.set_count[:4, 0], a.bits[:, 0])
    save_weights(hic, tmp_path / "h.caffemodel")
    torch.manual_seed(6)
    other = Net(parse_text(text % "hic_param { }", pb.NetParameter()), pb.TRAIN)
    load_weights(other, tmp_path / "h.caffemodel")
    b = other.layer("ip").module.arrays
    for mine, theirs in zip(b.state_blobs(), a.state_blobs()):
        assert torch.equal(mine, theirs)
    assert torch.equal(other.layer("ip").module.weight, hic.layer("ip").module.weight)


LAYER = ('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
         'num_output: 3 hic_param { %s } }')


@pytest.mark.parametrize("field,message", [
    ("levels: 1", "hic_param: levels must be in [2, 1024], got 1"),
    ("binary_cells: 17", "hic_param: binary_cells must be in [0, 16], got 17"),
    ("binary_cells: 4 bit_weights: 1 bit_weights: 2", "hic_param: bit_weights gives 2 "
                                                      "weights for 4 binary_cells"),
    ("binary_cells: 2 bit_weights: 1 bit_weights: 3",
     "hic_param: bit_weights[1] = 3 must be in [1, 2]"),
    ("accumulator_bits: 1", "hic_param: accumulator_bits must be in [2, 32], got 1"),
    ("accumulator_frac_bits: 7", "hic_param: accumulator_frac_bits must be in [0, "
                                 "accumulator_bits - 2 = 6]"),
    ("set_probability: 0", "hic_param: set_probability must be finite and in [0.01, 1], got 0"),
    ("endurance: 0.5", "hic_param: endurance must be finite and >= 1, got 0.5"),
    ("weight_range: -1", "hic_param: weight_range must be finite and in [0, 1e6], got -1"),
    ("pcm { g_max: 0 }", "hic_param: pcm: g_max must be finite and in (0, 1e6] uS, got 0"),
    ('forward { noise_management: "x" }', "hic_param: forward: noise_management must be one of"),
    ("levels: 1025", "hic_param: levels must be in [2, 1024], got 1025"),
])
def test_bad_hic_values_name_the_layer_and_field(field, message):
    with pytest.raises(RapaError) as e:
        make_layer(parse_text(LAYER % field, pb.LayerParameter()), [(2, 6)], pb.TRAIN)
    assert str(e.value).startswith("layer 'ip' (InnerProduct): ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_rpu_and_hic_param_together_are_refused_and_a_model_size_beyond_float32_too():
    text = LAYER.replace("hic_param { %s }", "hic_param { } rpu_param { }")
    with pytest.raises(RapaError, match="give rpu_param .* or hic_param .*, not both"):
        make_layer(parse_text(text, pb.LayerParameter()), [(2, 6)], pb.TRAIN)
    with pytest.raises(ValueError, match="2\\^24"):
        hic_from_proto(parse_text("binary_cells: 16 levels: 1024", pb.HICParameter()))
    cfg = hic_from_proto(parse_text("levels: 16 bit_weights: [1, 1, 2, 4]", pb.HICParameter()))
    assert cfg.bit_weights == (1, 1, 2, 4) and cfg.levels == 16 and cfg.device_bits() == 12
    cfg = hic_from_proto(parse_text("bit_weights: [1, 2]", pb.HICParameter()))
    assert cfg.binary_cells == 2 and cfg.capacity == 4  # the weights given set the count
    cfg = hic_from_proto(parse_text("forward { out_noise: 0.1 } backward { out_noise: 0.2 } "
                                    "pcm { g_max: 30 prog_noise_scale: 0.5 } endurance: 1e6",
                                    pb.HICParameter()))
    assert (cfg.forward.out_noise, cfg.backward.out_noise) == (0.1, 0.2)
    assert cfg.backward.bound_management == "none"  # the rest keeps the defaults
    assert (cfg.pcm.g_max, cfg.pcm.prog_noise_scale, cfg.endurance) == (30.0, 0.5, 1e6)
    with pytest.raises(ValueError, match="^hic_param: levels"):
        hic_from_proto(parse_text("levels: 1", pb.HICParameter()))


def test_model_size_counts_device_bits_and_write_erase_cycles(tmp_path, capsys):
    from rapa.cli import main
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 100 } } } layer { name: "hic/ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 300 hic_param { levels: 16 endurance: 1000 } } } '
            'layer { name: "ip2" type: "InnerProduct" bottom: "y" top: "z" '
            'inner_product_param { num_output: 20 } } '
            'layer { name: "big" type: "InnerProduct" bottom: "x" top: "b" include { phase: '
            'TRAIN } inner_product_param { num_output: 9 } }')  # not in the inference model
    (tmp_path / "n.prototxt").write_text(text)
    assert main(["model-size", "--model", str(tmp_path / "n.prototxt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "n: inference model size (bits held per value)"
    assert out[1] == "layer            values bits/value        KiB   FP32 KiB"
    # ip: 30,000 weights at 4 + 2 x 4 = 12 bits, 300 biases at 32; ip2: 6,020 values at 32.
    ip_bits = 30000 * 12 + 300 * 32
    assert out[2].split() == ["hic/ip", "30300", f"{ip_bits / 30300:.2f}", f"{ip_bits / 8192:.1f}",
                              f"{30300 * 32 / 8192:.1f}"]
    assert out[3].split() == ["ip2", "6020", "32.00", f"{6020 * 32 / 8192:.1f}",
                              f"{6020 * 32 / 8192:.1f}"]
    total = ip_bits + 6020 * 32
    assert out[4].split() == ["total", "36320", f"{total / 36320:.2f}", f"{total / 8192:.1f}",
                              f"{36320 * 32 / 8192:.1f}", f"({total / (36320 * 32):.3f}", "of",
                              "FP32)"]
    torch.manual_seed(0)
    net = Net(parse_text(text, pb.NetParameter()), pb.TEST)
    a = net.layer("hic/ip").module.arrays
    a.reset_count[0, 0, 0, :30] = 7  # 30 of 120,000 binary cells RESET 6 times more
    a.reset_count[4, 0, 1, 1] = 3
    a.set_count[5, 0, 2, 3] = 40  # G- of one weight: 40 SET pulses
    a.saturations += 4
    save_weights(net, tmp_path / "n.caffemodel")
    assert main(["model-size", "--model", str(tmp_path / "n.prototxt"), "--weights",
                 str(tmp_path / "n.caffemodel")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[6] == "write-erase cycles (RESETs) per device, against endurance:"
    assert out[7].split() == ["layer", "devices", "max", "mean", "99.9%", "max/endurance",
                              "saturations"]
    rows = [line.split() for line in out[8:10]]
    # 30 of 120,000 cells at 7: above the 99.9th percentile (120 cells), which stays 1.
    assert rows[0] == ["hic/ip", "binary", "7", f"{(120000 + 180) / 120000:.2f}", "1", "7.00e-03",
                       "4"]
    assert rows[1] == ["hic/ip", "multi-level", "3", f"{(60000 + 2) / 60000:.2f}", "1", "3.00e-03"]
    # The SET events, after it (one layer: no rows for the whole net in either table).
    assert out[10:13] == ["", "SET events per device:",
                          "layer        devices           max      mean    99.9%"]
    for line, counts in zip(out[13:], (a.set_count[:4], a.set_count[4:])):
        flat = counts.double().flatten()
        assert line.split()[2:] == [f"{flat.max():.0f}", f"{flat.mean():.2f}",
                                    f"{torch.quantile(flat, 0.999):.0f}"]
    assert len(out) == 15 and out[14].split()[2] == "40"
    # With pulsed programming the heading says which layers count SET pulses.
    pulsed = text.replace("levels: 16 endurance: 1000", 'programming: "pulsed"')
    (tmp_path / "p.prototxt").write_text(pulsed)
    save_weights(Net(parse_text(pulsed, pb.NetParameter()), pb.TEST), tmp_path / "p.caffemodel")
    assert main(["model-size", "--model", str(tmp_path / "p.prototxt"), "--weights",
                 str(tmp_path / "p.caffemodel")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert 'SET events per device (SET pulses in hic/ip: programming "pulsed"):' in out
    with pytest.raises(SystemExit) as e:  # argparse: --model is required
        main(["model-size"])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err


def test_model_size_counts_statistics_not_constants_and_saturations_without_binary_cells(
        tmp_path, capsys):
    from rapa.cli import main
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 6 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 3 bias_term: false hic_param { binary_cells: 0 '
            'levels: 2 } } } layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" } '
            'layer { name: "fixed" type: "Scale" bottom: "y" top: "z" param { lr_mult: 0 } '
            'scale_param { bias_term: false } } '
            'layer { name: "frozen" type: "InnerProduct" bottom: "x" top: "f" param { lr_mult: 0 '
            '} param { lr_mult: 1 } inner_product_param { num_output: 4 } } '
            'layer { name: "wide" type: "InnerProduct" bottom: "x" top: "w" '
            'inner_product_param { num_output: 200000 bias_term: false } }')
    (tmp_path / "n.prototxt").write_text(text)
    torch.manual_seed(0)
    net = Net(parse_text(text, pb.NetParameter()), pb.TEST)
    net.layer("ip").module.arrays.saturations += 5
    save_weights(net, tmp_path / "n.caffemodel")
    assert main(["model-size", "--model", str(tmp_path / "n.prototxt"), "--weights",
                 str(tmp_path / "n.caffemodel")]) == 0
    out = capsys.readouterr().out.splitlines()
    # ip: 18 weights at 2 x log2(2) = 2 bits; bn: mean, variance (3 each) and the factor at
    # 32; the fixed Scale (lr_mult 0) holds no learned value.
    assert out[2].split()[:3] == ["ip", "18", "2.00"]
    assert out[3].split()[:3] == ["bn", "7", "32.00"]
    assert out[4].split()[:3] == ["frozen", "4", "32.00"]  # its bias; the weights are fixed
    # 1.2 million values: the KiB columns show the divisor's every unit.
    assert out[5].split() == ["wide", "1200000", "32.00", "4687.5", "4687.5"]
    assert out[6].split()[:2] == ["total", "1200029"] and not any("fixed" in o for o in out)
    row = next(o.split() for o in out if o.startswith("ip ") and "multi-level" in o)
    assert row[-1] == "5"  # saturations, on the layer's first row


def test_state_blobs_from_a_model_file_are_checked_field_by_field():
    a = arrays_holding(torch.tensor([[[5.0, -20.0]]]))
    good = {n: b.clone() for n, b in zip(a.state_names(), a.state_blobs())}
    for i, name in enumerate(a.state_names()):
        assert a.state_problem(i, good[name]) is None, name
    top, res = a.config.limits()
    grid = "accumulator must be on the accumulator's grid of 0.0625 LSB within +-7.9375"
    levels = "levels must be whole levels in [0, 3]"
    counts = "must be whole counts >= 0"
    bad = {
        "accumulator": [(torch.tensor([[[0.03, 0.0]]]), grid), (torch.tensor([[[8.0, 0.0]]]),
                                                                 grid)],
        "bits": [(torch.full((4, 1, 1, 2), 0.5), "bits must be 0 or 1")],
        "g_binary": [(torch.full((4, 1, 1, 2), -0.1), "g_binary must be >= 0 uS")],
        "levels": [(torch.full((2, 1, 1, 2), 4.0), levels),
                   (torch.full((2, 1, 1, 2), 1.5), levels),
                   (torch.full((2, 1, 1, 2), -1.0), levels)],
        "g_pair": [(torch.full((2, 1, 1, 2), -1.0), "g_pair must be >= 0 uS")],
        "set_count": [(torch.full((6, 1, 1, 2), 0.5), "set_count " + counts),
                      (torch.full((6, 1, 1, 2), -1.0), "set_count " + counts)],
        "reset_count": [(torch.full((6, 1, 1, 2), -2.0), "reset_count " + counts),
                        (torch.full((6, 1, 1, 2), 2.5), "reset_count " + counts)],
        "out_scale": [(torch.zeros(1), "out_scale must be > 0 (the arrays' digital scales)")],
        "saturations": [(torch.tensor([-1.0]), "saturations " + counts),
                        (torch.tensor([0.5]), "saturations " + counts)],
    }
    assert set(bad) == set(a.state_names())
    for name, cases in bad.items():
        i = a.state_names().index(name)
        for value, message in cases:
            assert a.state_problem(i, value) == message, (name, value)
        if name.endswith("count") or name in ("saturations", "bits", "levels", "g_pair"):
            assert a.state_problem(i, torch.zeros_like(good[name])) is None, name
        nan = good[name].clone()
        nan.view(-1)[0] = float("nan")
        assert a.state_problem(i, nan) == f"{name} must be finite"
    # The edges are allowed: the accumulator's saturation, the top level, a 1 bit.
    assert a.state_problem(0, torch.tensor([[[top, -top]]])) is None
    assert a.state_problem(3, torch.full((2, 1, 1, 2), 3.0)) is None


@pytest.mark.parametrize("fields,ok", [
    (dict(binary_cells=16), True), (dict(binary_cells=0), True), (dict(levels=2), True),
    (dict(accumulator_bits=32, accumulator_frac_bits=30), True),
    (dict(accumulator_bits=33), False), (dict(accumulator_bits=8, accumulator_frac_bits=6), True),
    (dict(accumulator_frac_bits=-1), False), (dict(set_probability=0.01), True),
    (dict(set_probability=1.01), False), (dict(reset_probability=0.009), False),
    (dict(weight_range=1e6), True), (dict(weight_range=1.1e6), False),
    (dict(endurance=1.0), True), (dict(endurance=float("inf")), False),
    (dict(binary_cells=2, bit_weights=(1, 2)), True), (dict(binary_cells=2, bit_weights=(2, 1)),
                                                       False),
    (dict(binary_cells=3, bit_weights=(1, 2, 4)), True),
    (dict(binary_cells=3, bit_weights=(1, 2, 5)), False),
    (dict(binary_cells=16, levels=257), True),   # (L - 1) U = 2^24 exactly
    (dict(binary_cells=16, levels=258), False),
    (dict(accumulator_bits=2, accumulator_frac_bits=0), True),
])
def test_configuration_edges(fields, ok):
    cfg = HICConfig(**fields)
    if ok:
        cfg.check()
    else:
        with pytest.raises(ValueError, match="^hic_param: "):
            cfg.check()


def test_the_devices_targets_and_coefficients_for_drift():
    cfg = ideal()
    a = arrays_holding(torch.tensor([[[37.0, -37.0]]]), cfg)
    terms = a.pcm_terms()
    assert len(terms) == 6
    (gp, tp, cp), (gm, tm, cm) = terms[:2]
    assert tp.tolist() == [[[16.0, 0.0]]] and tm.tolist() == [[[0.0, 24.0]]]  # levels x 8 uS
    assert cp == 16 * 3 / 48 / 24 and cm == -cp
    for i, (g, target, coef) in enumerate(terms[2:]):
        assert torch.equal(target, a.bits[i] * 24.0) and coef == 2 ** i / 48 / 24
        assert g.data_ptr() == a.g_binary[i].data_ptr()  # the devices themselves
    total = sum(coef * g.double() for g, _, coef in terms)
    assert torch.equal(total, torch.tensor([[[37.0, -37.0]]], dtype=torch.float64) / 48)


def test_model_size_sums_the_devices_of_every_layer(tmp_path, capsys):
    from rapa.cli import main
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 10 } } } layer { name: "a" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 10 hic_param { endurance: 100 } } } '
            'layer { name: "b" type: "InnerProduct" bottom: "y" top: "z" '
            'inner_product_param { num_output: 5 hic_param { endurance: 10 } } }')
    (tmp_path / "n.prototxt").write_text(text)
    torch.manual_seed(0)
    net = Net(parse_text(text, pb.NetParameter()), pb.TEST)
    a, b = net.layer("a").module.arrays, net.layer("b").module.arrays
    a.reset_count[0, 0, 0, 0] = 9   # a's worst: 9 of 100; b's: 3 of 10
    b.reset_count[5, 0, 0, 0] = 3
    a.saturations += 2
    b.saturations += 5
    save_weights(net, tmp_path / "n.caffemodel")
    assert main(["model-size", "--model", str(tmp_path / "n.prototxt"), "--weights",
                 str(tmp_path / "n.caffemodel")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("all layers")]
    # 4 x 100 + 4 x 50 binary cells, 2 x 100 + 2 x 50 multi-level devices, each 1 RESET but
    # the two above.
    # The 99.9th percentiles interpolate: 1 + 0.4 x 8 of 600, 1 + 0.7 x 2 of 300.
    assert rows[0] == ["all", "layers", "binary", "9", f"{(600 + 8) / 600:.2f}", "4",
                       "1.00e-01", "7"]  # b's 1 of 10 is more than a's 9 of 100
    assert rows[1] == ["all", "layers", "multi-level", "3", f"{(300 + 2) / 300:.2f}", "2",
                       "3.00e-01"]


def test_transfers_draw_from_the_given_generator_and_touch_only_what_they_change():
    cfg = HICConfig(set_probability=0.5, reset_probability=0.5)  # noisy programming too
    results = []
    for seed in (1, 2):
        torch.manual_seed(7)
        a = arrays_holding(torch.tensor([[[5.0, -20.0, 30.0, 0.0, 7.0, -2.0]]]), cfg)
        w = a.read().clone()
        before = [b.clone() for b in a.state_blobs()]
        torch.manual_seed(seed)  # the default generator differs, the given one does not
        g = torch.Generator().manual_seed(11)
        _update(a, w, 0.7, generator=g)
        _update(a, w, 0.7, generator=g)  # 1.4 in all: one LSB for every weight
        results.append([b.clone() for b in a.state_blobs()] + [w.clone()])
    for mine, theirs in zip(*results):
        assert torch.equal(mine, theirs)
    # Devices that did not change keep their conductances: 5 -> 6 changes bits 0 and 1 only,
    # and no weight carries into its pair (30 -> 31 = 16 + 15, -2 -> -1 = -16 + 15, ...).
    g_binary_before, g_pair_before = before[2], before[4]
    assert torch.equal(a.g_pair, g_pair_before)
    assert torch.equal(a.g_binary[2:, 0, 0, 0], g_binary_before[2:, 0, 0, 0])
    assert not torch.equal(a.g_binary[:2, 0, 0, 0], g_binary_before[:2, 0, 0, 0])
    assert a.apply_update(w, 0.1) == 0  # nothing recorded: nothing done


def test_pair_moves_refreshes_and_counts_weight_by_weight():
    cfg = ideal(accumulator_bits=12, stochastic_rounding=False)
    v = torch.tensor([[[37.0, 31.0, 0.0, 0.0, 16.0]]])
    a = arrays_holding(v, cfg)
    assert (a.reset_count == 2).all()  # map_ and the fresh hold each programmed every device
    w = a.read().clone()
    a.levels[:, 0, 0, 2] = torch.tensor([3.0, 3.0])  # weight 2: M = 0 as 3 - 3
    a.levels[:, 0, 0, 3] = torch.tensor([1.0, 1.0])  # weight 3: M = 0 as 1 - 1
    sets, resets = a.set_count.clone(), a.reset_count.clone()
    t, o, k = a.shape
    # Per weight: 37 -> 31 (M 2 -> 1: G- one level up), 31 -> 63 (M 1 -> 3: G+ to its top
    # level, no refresh), 0 -> -16 (M 0 -> -1 with G- at its top: refresh to [0, 1]), 0 -> 16 (M 0
    # -> 1, G+ one up: [2, 1]), 16 -> 16.
    alpha = float(a.out_scale[0])
    steps = torch.tensor([-6.0, 32.0, -16.0, 16.0, 0.0])
    x = torch.eye(k, dtype=torch.float64)
    d = torch.ones(k, o, dtype=torch.float64) * (-steps.double().view(-1, 1) * alpha ** 2
                                                 / (0.5 * cfg.span))
    a.pending.append((x, d, torch.zeros(k, dtype=torch.long)))
    a.apply_update(w, 0.5)
    assert a.value().tolist() == [[[31.0, 63.0, -16.0, 16.0, 16.0]]]
    assert a.levels[:, 0, 0].t().tolist() == [[2, 1], [3, 0], [0, 1], [2, 1], [1, 0]]
    moved_sets = (a.set_count - sets)[4:, 0, 0].t().tolist()
    moved_resets = (a.reset_count - resets)[4:, 0, 0].t().tolist()
    assert moved_sets == [[0, 1], [1, 0], [0, 1], [1, 0], [0, 0]]
    assert moved_resets == [[0, 0], [0, 0], [1, 1], [0, 0], [0, 0]]  # one refresh only
    assert a.saturations.item() == 0
    # Counts add up over transfers: 31 -> 25 (bits only), 63 saturates, -16 -> -32 (G- up),
    # 16 -> 32 (G+ up).
    a.pending.append((x, d, torch.zeros(k, dtype=torch.long)))
    a.apply_update(w, 0.5)
    assert a.value().tolist() == [[[25.0, 63.0, -32.0, 32.0, 16.0]]]
    assert (a.set_count - sets)[4:, 0, 0].t().tolist() == [[0, 1], [1, 0], [0, 2], [2, 0],
                                                            [0, 0]]
    assert a.saturations.item() == 1


def test_dropped_patches_add_no_gradient_and_the_accumulator_saturates_both_ways():
    cfg = ideal(stochastic_rounding=False)
    a = arrays_holding(torch.zeros(1, 1, 2), cfg)
    w = a.read().clone()
    alpha = float(a.out_scale[0])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = torch.full((2, 1), -0.5 * alpha ** 2 / (0.5 * cfg.span), dtype=torch.float64)
    a.pending.append((x, d, torch.tensor([0, -1])))  # row 1 (weight 1's) dropped
    a.apply_update(w, 0.5)
    assert a.accumulator.tolist() == [[[0.5, 0.0]]]
    _update(a, w, -100.0)  # saturates at -7.9375: 7 LSBs down from 0.5 - 7.9375
    assert a.value().tolist() == [[[-7.0, -7.0]]]
    assert a.accumulator.tolist() == [[[-0.9375, -0.9375]]]  # both clamped at -7.9375


def test_a_model_of_other_arrays_does_not_load_and_the_message_names_both_kinds(tmp_path):
    text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 '
            'dim: 6 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 3 %s } }')
    torch.manual_seed(0)
    pulsed = 'hic_param { programming: "pulsed" }'
    for saved, loaded in (("rpu_param { }", "hic_param { }"), ("hic_param { }", ""),
                          ("hic_param { }", "rpu_param { }"), ("hic_param { }", pulsed),
                          (pulsed, "hic_param { }")):
        save_weights(Net(parse_text(text % saved, pb.NetParameter()), pb.TRAIN),
                     tmp_path / "m.caffemodel")
        with pytest.raises(RapaError, match="an RPU model loads only into a layer with "
                                            "rpu_param .*, a HIC model only into one with "
                                            "hic_param and the same programming: \"pulsed\" "
                                            "adds the blob pulse_draws"):
            load_weights(Net(parse_text(text % loaded, pb.NetParameter()), pb.TRAIN),
                         tmp_path / "m.caffemodel")


def test_no_binary_cells_and_one_scale_per_array():
    cfg = ideal(binary_cells=0, levels=5)  # U = 1: v = M in [-4, 4]
    a = arrays_holding(torch.tensor([[[3.0, -4.0, 0.0]]]), cfg)
    assert a.value().tolist() == [[[3.0, -4.0, 0.0]]]
    assert torch.equal(a.read(), (a.value().double() / 4).float())
    arrays = HICArrays(ideal(), (2, 1, 2))
    w = torch.tensor([[[1.0, 0.5]], [[-4.0, 2.0]]])
    assert arrays.map_(w) == 0  # the range covers every written weight
    assert arrays.out_scale.tolist() == [1.0, 4.0]  # each array its own largest |W|
    assert arrays.value().tolist() == [[[48.0, 24.0]], [[-48.0, 24.0]]]


@pytest.mark.parametrize("programming", ["statistical", "pulsed"])
def test_hic_arrays_on_the_device_do_what_they_do_on_the_cpu(device, programming):
    """The representation, the accumulator, the transfers and the counts on `device` (CUDA
    where present) against the CPU, with draws-free settings: ideal devices (pulses without
    noise), nearest rounding, integer rows in float64 (exact sums in any order)."""
    cfg = ideal(stochastic_rounding=False, weight_range=3.0)
    if programming == "pulsed":
        cfg = dataclasses.replace(cfg, programming="pulsed", pulse=PCMPresetDevice(
            dw_min_std=0.0, reset_std=0.0))
    torch.manual_seed(2)
    cpu = HICArrays(cfg, (2, 3, 5)).double()
    weight = torch.randn(2, 3, 5, dtype=torch.float64)
    cpu.map_(weight)  # weight becomes what the devices read
    v0 = cpu.value().clone()
    there = HICArrays(cfg, (2, 3, 5)).double()
    there.load_state_dict(cpu.state_dict())
    there = there.to(device)
    weights = [weight, weight.to(device).clone()]
    for step in range(3):
        x = torch.randint(-3, 4, (7, 5), dtype=torch.float64)
        d = torch.randint(-3, 4, (7, 3), dtype=torch.float64)
        tile = torch.tensor([0, 1, 1, 0, -1, 1, 0])
        for a, w in zip((cpu, there), weights):
            a.pending.append((x.to(w.device), d.to(w.device), tile.to(w.device)))
            a.apply_update(w, 0.02)
    for name, mine in cpu.state_dict().items():
        torch.testing.assert_close(getattr(there, name).cpu(), mine, rtol=1e-6, atol=1e-6,
                                   msg=name)
    torch.testing.assert_close(weights[1].cpu(), weights[0], rtol=1e-6, atol=1e-7)
    assert (cpu.value() != v0).sum() > 5  # transfers happened


def test_the_exact_convolution_on_the_device(device):
    """_ExactConv on `device` (cuDNN on CUDA) against a float64 convolution on the CPU."""
    torch.manual_seed(6)
    conv = TiledConv2d(3, 4, 3, stride=2, padding=1, rpu_config=ideal(weight_range=0.5))
    layer_w = (conv.weight3() * conv.arrays.out_scale.view(-1, 1, 1)).detach().double()
    conv = conv.to(device)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    xd = x.float().to(device).requires_grad_()
    y = conv(xd)
    y.square().sum().backward()
    xr = x.clone().requires_grad_()
    wr = layer_w.view(4, 3, 3, 3).requires_grad_()
    ref = torch.nn.functional.conv2d(xr, wr, conv.bias.detach().double().cpu(), 2, 1)
    ref.square().sum().backward()
    tol = 1e-4  # cuDNN in full float32 (no TF32) too
    torch.testing.assert_close(y.detach().cpu().double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(xd.grad.cpu().double(), xr.grad, rtol=tol, atol=tol)
    alpha = float(conv.arrays.out_scale[0])
    assert isinstance(conv.arrays.pending[0], torch.Tensor)
    torch.testing.assert_close(conv.arrays.gradient().cpu().double(),
                               alpha * wr.grad.view(1, 4, 27), rtol=tol, atol=tol)


def test_a_data_parallel_exchange_sends_the_summed_gradient_not_the_rows():
    """HICArrays.exchanged: one (T, O, K) gradient, the sum of every recorded pass; RPU arrays
    hand their rows as recorded."""
    a = HICArrays(ideal(), (2, 3, 4))
    assert a.exchanged() == []
    passes = [(torch.randn(5, 4), torch.randn(5, 3), torch.tensor([0, 1, 1, -1, 0]))
              for _ in range(2)]
    a.pending.extend(passes)
    summed = a.gradient()
    (sent,) = a.exchanged()
    assert sent.shape == (2, 3, 4) and torch.equal(sent, summed)
    ref = torch.zeros(2, 3, 4, dtype=torch.float64)
    for x, d, tile in passes:
        for m in range(5):
            if tile[m] >= 0:
                ref[tile[m]] += torch.outer(d[m].double(), x[m].double())
    torch.testing.assert_close(sent.double(), ref, rtol=1e-6, atol=1e-6)
    rpu = Linear(4, 3, rpu_config=rapa.analog.RPUConfig()).arrays
    rpu.pending.extend(passes[:1])
    assert len(rpu.exchanged()) == 1 and rpu.exchanged()[0] is rpu.pending[0]


@pytest.mark.parametrize("tiling,tiles", [("none", 1), ("perforated", 4)])
def test_an_rpu_convolution_exchanges_its_input_image_and_makes_the_same_rows(tiling, tiles):
    """With keep_inputs (a data-parallel run) an RPU convolution's pass records its input image
    in place of its rows (on the CPU it always does: its fused kernels make no rows); the
    exchange sends the image, and the rows made from it are those the row-by-row pass records,
    exactly; the update takes either alike."""
    from rapa.analog.arrays import ConvInputs, patch_rows
    torch.manual_seed(1)
    conv = TiledConv2d(3, 4, 3, padding=2, tiling=tiling, num_tiles=tiles,
                       rpu_config=rapa.analog.RPUConfig())  # padding != stride: no swap hides
    x = torch.randn(2, 3, 9, 9)
    entries, weights = [], []
    for keep in (False, True):
        conv.arrays.keep_inputs = keep
        xi = x.clone().requires_grad_()
        gen = torch.Generator().manual_seed(7)  # the same partition both times
        torch.manual_seed(3)  # the same periphery noise both times
        out = conv(xi, generator=gen)
        xi.data.mul_(2)  # a later in-place change of the input: the kept copy is unaffected
        out.square().sum().backward()
        entries.append(conv.arrays.pending[0])
        weight = conv.weight.detach().clone()
        torch.manual_seed(4)
        conv.arrays.apply_update(weight, 0.01)
        weights.append(weight)
        assert conv.arrays.pending == []
    plain, kept = entries
    assert isinstance(kept, ConvInputs)
    assert kept[0].shape == (2, 3, 9, 9)  # what the exchange sends: the image
    rows, d, tile = kept.rows()
    assert x.numel() * 13 < rows.numel()  # 11 x 11 patches of 27 from 9 x 9 x 3
    if isinstance(plain, ConvInputs):  # the CPU's fused kernels
        assert torch.equal(plain[0], x) and torch.equal(plain.rows()[0], rows)
        plain = plain.rows()
    assert torch.equal(rows, patch_rows(x, (3, 3), (2, 2), (1, 1)))
    assert torch.equal(rows, plain[0]) and torch.equal(d, plain[1]) and torch.equal(tile, plain[2])
    assert (tile < 0).any() == (tiling == "perforated")
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], conv.weight)


NATIVE_CASES = {
    "defaults": dict(),
    "no binary cells, 8 levels": dict(binary_cells=0, levels=8),
    "greedy bit weights": dict(binary_cells=4, bit_weights=(1, 1, 2, 3)),
    "five cells": dict(binary_cells=5),
    "switching attempts": dict(set_probability=0.3, reset_probability=0.6),
    "nearest rounding": dict(stochastic_rounding=False),
    "wide accumulator": dict(accumulator_bits=30, accumulator_frac_bits=12),
    "2 levels": dict(levels=2, binary_cells=2),
}


@pytest.mark.parametrize("name", list(NATIVE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_native_update_is_the_tensor_code_bit_for_bit(name, dtype):
    """rapa.hic_update (C++, the CPU's statistical programming) against HICArrays' tensor code
    (native_update off): the same random draws and arithmetic give the same devices, counts,
    accumulator and weights, bit for bit, through transfers, carries, refreshes, saturation
    and switching attempts, over arrays with their own scales; the other paths are taken."""
    cfg = HICConfig(weight_range=0.0, **NATIVE_CASES[name])
    shape = (3, 5, 7)
    results, transfers = [], []
    for native in (True, False):
        torch.manual_seed(0)
        a = HICArrays(cfg, shape).to(dtype)
        a.native_update = native
        w = (torch.randn(shape, dtype=dtype) * torch.tensor([0.1, 1.0, 5.0], dtype=dtype)
             .view(-1, 1, 1))
        a.map_(w)
        gen = torch.Generator().manual_seed(3)
        moved = 0
        for step in range(12):
            # Large and small steps, both signs: saturation at the range's ends included.
            grad = torch.randn(shape, dtype=dtype, generator=gen) * (10.0 if step % 4 else 0.1)
            a.pending.append(grad)
            before = a.levels.clone(), a.bits.clone()
            a.apply_update(w, 0.05 * (1 + step % 3), gen)
            moved += int((a.levels != before[0]).sum() + (a.bits != before[1]).sum())
        results.append([t.clone() for t in a.state_blobs()] + [w.clone()])
        transfers.append(moved)
    for (name_, mine, theirs) in zip(a.state_names() + ("weight",), *results):
        assert torch.equal(mine, theirs), name_
    assert transfers[0] > 50  # the rules under test ran
    sat, refresh = results[0][a.state_names().index("saturations")], results[0][
        a.state_names().index("reset_count")]
    assert sat.sum() > 0 and (refresh[cfg.binary_cells:] > 1).any()


def test_the_native_update_is_taken_where_it_applies():
    calls = []
    orig = torch.ops.rapa.hic_update

    class Spy:
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return orig(*args, **kwargs)

    cfg = HICConfig()
    for pulsed, expected in ((False, 1), (True, 0)):
        calls.clear()
        c = dataclasses.replace(cfg, programming="pulsed") if pulsed else cfg
        torch.manual_seed(0)
        a = HICArrays(c, (1, 2, 3))
        w = torch.randn(1, 2, 3)
        a.map_(w)
        a.pending.append(torch.randn(1, 2, 3))
        import rapa.analog.hic as hic_module
        saved = hic_module.torch.ops.rapa.hic_update
        try:
            torch.ops.rapa.hic_update = Spy()
            a.apply_update(w, 0.1)
        finally:
            torch.ops.rapa.hic_update = saved
        assert len(calls) == expected, pulsed


def test_the_bit_weights_follow_the_devices_dtype():
    a = HICArrays(HICConfig(), (1, 2, 3))
    a.map_(torch.randn(1, 2, 3))
    assert a.value().dtype == torch.float32 and a.read().dtype == torch.float32
    a.double()
    assert a.value().dtype == torch.float64 and a.read().dtype == torch.float64


def test_a_non_finite_gradient_is_refused_and_leaves_the_devices():
    a = HICArrays(HICConfig(), (1, 2, 3))
    w = torch.randn(1, 2, 3)
    a.map_(w)
    before = [t.clone() for t in a.state_blobs()] + [w.clone()]
    for grad, lr in ((torch.full((1, 2, 3), float("nan")), 0.1), (torch.ones(1, 2, 3), math.inf)):
        a.pending.append(grad)
        with pytest.raises(RapaError, match="not finite; the devices are left as they were"):
            a.apply_update(w, lr)
        assert a.pending == []
    for mine, theirs in zip([t for t in a.state_blobs()] + [w], before):
        assert torch.equal(mine, theirs)
    # The op's own checks: a strided counts buffer would be written out of bounds.
    b = HICArrays(HICConfig(), (2, 2, 3))
    wb = torch.randn(2, 2, 3)
    b.map_(wb)
    with pytest.raises(RuntimeError, match="'saturations' must be a contiguous"):
        torch.ops.rapa.hic_update(wb, b.accumulator, b.bits, b.g_binary, b.levels, b.g_pair,
                                  b.set_count, b.reset_count, torch.zeros(4)[::2],
                                  torch.ones(2, 2, 3), b.out_scale, 0.1, [1, 2, 4, 8], 4, 8, 4,
                                  True, 1.0, 1.0, 25.0, 1.0, [0.26, 1.97, -1.17], 25.0)
