"""rapa::analog_mvm and rapa::rpu_update against plain references, aihwkit 1.1.0's rules (its
ForwardBackwardPassIOManaged and PulsedRPUDevice::populate) and the theory of the pulsed update
(Gokmen & Vlasov 2016), in float64 with fresh random inputs, on every device (conftest)."""
import dataclasses
import math
import re

import pytest
import torch

import rapa  # noqa: F401
from rapa.analog import (AnalogArrays, ConstantStepDevice, IOParameters, RPUConfig,
                         UpdateParameters, analog_mvm, rpu_update)
from conftest import CUDA_READY

PERFECT = IOParameters(is_perfect=True)
F64 = torch.float64


def dense(rows, weight, tile, transposed=False):
    out = []
    for m, t in enumerate(tile.tolist()):
        size = weight.shape[2] if transposed else weight.shape[1]
        if t < 0:
            out.append(rows.new_zeros(size))
        else:
            out.append(weight[t].T @ rows[m] if transposed else weight[t] @ rows[m])
    return torch.stack(out)


def io(**kw):
    """A periphery with every non-ideality off except those named."""
    base = dict(inp_res=0, inp_bound=1e9, out_res=0, out_bound=1e9, out_noise=0,
                noise_management="none", bound_management="none")
    base.update(kw)
    return IOParameters(**base)


def zeros_tile(m, device):
    return torch.zeros(m, dtype=torch.long, device=device)


@pytest.mark.parametrize("transposed", [False, True])
def test_perfect_products_are_exact(device, transposed):
    T, O, K, M = 3, 5, 7, 50
    w = torch.randn(T, O, K, dtype=F64, device=device)
    rows = torch.randn(M, O if transposed else K, dtype=F64, device=device)
    tile = torch.randint(-1, T, (M,), device=device)
    y = analog_mvm(rows, w, tile, PERFECT, transposed=transposed)
    torch.testing.assert_close(y, dense(rows, w, tile, transposed), rtol=1e-12, atol=1e-12)


def test_input_quantization_and_clipping_are_the_dacs(device):
    K = 64
    w = torch.eye(K, dtype=F64, device=device)[None]
    x = torch.rand(20, K, dtype=F64, device=device) * 3 - 1.5     # partly beyond the bound 1
    y = analog_mvm(x, w, zeros_tile(20, device), io(inp_res=1 / 126, inp_bound=1.0))
    step = 2 / 126                                            # the range [-1, 1] in 126 steps
    expect = (torch.round(x / step) * step).clamp(-1, 1)
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)
    assert ((x.abs() > 1).any() and (x.abs() < 1).any())
    assert len(torch.unique(y)) <= 127


def test_converters_round_then_clip_as_aihwkit():
    # aihwkit 1.1.0 rounds to the step, then clips (prepareInput, finalizeOutput). With a bound
    # that is not a multiple of the step the order matters: 1.3 with step 0.4 and bound 1 is
    # round(3.25) * 0.4 = 1.2, clipped to 1.0; clipping first would give round(2.5) * 0.4 = 0.8.
    w = torch.eye(3, dtype=F64)[None]
    x = torch.tensor([[1.3, 0.95, -1.3]], dtype=F64)
    dac = analog_mvm(x, w, zeros_tile(1, "cpu"), io(inp_res=0.2, inp_bound=1.0))
    torch.testing.assert_close(dac, torch.tensor([[1.0, 0.8, -1.0]], dtype=F64), rtol=0, atol=0)
    adc = analog_mvm(x, w, zeros_tile(1, "cpu"), io(out_res=0.2, out_bound=1.0))
    torch.testing.assert_close(adc, torch.tensor([[1.0, 0.8, -1.0]], dtype=F64), rtol=0, atol=0)


def test_converters_round_half_to_even():
    # Inputs exactly at half steps (step 0.25): 0.5 step -> 0, 1.5 -> 2, 2.5 -> 2, as rint
    # (aihwkit's RPU_ROUNDFUN) does; rounding half away from zero would give 1, 2, 3.
    w = torch.eye(4, dtype=F64)[None]
    x = torch.tensor([[0.125, 0.375, 0.625, -0.125]], dtype=F64)
    y = analog_mvm(x, w, zeros_tile(1, "cpu"), io(inp_res=0.125, inp_bound=1.0))
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=F64), rtol=0,
                               atol=0)
    y = analog_mvm(x * 4, w, zeros_tile(1, "cpu"), io(out_res=0.0625, out_bound=8.0))  # step 1
    torch.testing.assert_close(y, torch.tensor([[0.0, 2.0, 2.0, 0.0]], dtype=F64), rtol=0,
                               atol=0)


def test_infinite_bounds_mean_no_bound_and_no_steps():
    # inf out_bound / inp_bound: no bound, and no converter steps (a step of res * inf would
    # turn every value into NaN).
    w = torch.randn(1, 6, 5, dtype=F64) * 30
    x = torch.randn(7, 5, dtype=F64) * 3
    cfg = IOParameters(out_noise=0.0, out_bound=math.inf, inp_bound=math.inf,
                       noise_management="none")
    y = analog_mvm(x, w, zeros_tile(7, "cpu"), cfg)
    torch.testing.assert_close(y, x @ w[0].T, rtol=1e-12, atol=1e-12)


def test_bound_management_without_noise_management_rescales_once():
    # No noise management: the input is only divided by bound management's reduction, and the
    # output multiplied back once: 20 with out_bound 12 comes back as 20 (10 at half input).
    w = torch.tensor([20.0, 30.0, -50.0], dtype=F64).view(3, 1, 1)
    x = torch.ones(3, 1, dtype=F64)
    cfg = io(out_bound=12.0, bound_management="iterative", max_bm_factor=1000, max_bm_res=1.0)
    y = analog_mvm(x, w, torch.arange(3), cfg)
    torch.testing.assert_close(y, w.view(3, 1), rtol=0, atol=1e-12)


def test_noise_joins_before_the_saturation_test_and_each_pass_draws_afresh():
    # 50,000 rows whose exact output is 11.9 (out_bound 12, ADC step 24/510): a row is redone
    # at half the input only when its noise rounds it past the bound (z >= 2.06, p = 0.0198),
    # and its second pass, with fresh noise, exceeds 12 again only for z' >= 0.83 (p = 0.202):
    # 0.40% of the rows end above 12. Noise added after the test: none redone (0%); the same
    # draw in both passes: every redone row ends above 12 (1.98%); no noise in pass 2: 0%.
    m, step = 50000, 24 / 510
    w = torch.full((1, 1, 1), 11.9, dtype=F64)
    x = torch.ones(m, 1, dtype=F64)
    cfg = io(out_res=1 / 510, out_bound=12.0, out_noise=0.06, noise_management="abs_max",
             bound_management="iterative", max_bm_factor=1000, max_bm_res=1.0)
    y = analog_mvm(x, w, zeros_tile(m, "cpu"), cfg, seed=torch.tensor([3]))
    normal = torch.distributions.Normal(0.0, 1.0)
    p_redo = 1 - normal.cdf(torch.tensor((255.5 * step - 11.9) / 0.06, dtype=F64))
    p_above = 1 - normal.cdf(torch.tensor((127.5 * step - 5.95) / 0.06, dtype=F64))
    expect = m * p_redo * p_above
    above = int((y > 12 + 1e-9).sum())
    assert abs(above - expect) < 5 * math.sqrt(expect), (above, expect.item())


def test_output_quantization_is_the_adcs(device):
    w = torch.randn(1, 30, 10, dtype=F64, device=device)
    x = torch.randn(40, 10, dtype=F64, device=device)
    y = analog_mvm(x, w, zeros_tile(40, device), io(out_res=1 / 510, out_bound=12.0))
    step = 24 / 510
    exact = x @ w[0].T
    torch.testing.assert_close(y, (torch.round(exact / step) * step).clamp(-12, 12), rtol=0,
                               atol=1e-12)
    assert (y - exact.clamp(-12, 12)).abs().max() <= step / 2 + 1e-12


def test_saturation_is_tested_after_the_adc_rounds():
    # An output of 12.01 rounds to 12.0 = out_bound (255 steps of 24/510): within the bound,
    # so bound management leaves it (aihwkit's test, strictly beyond the bound after the ADC);
    # testing before rounding would redo it halved and return 2 * round(6.005) = 12.047.
    w = torch.tensor([12.01, -12.01, 12.04], dtype=F64).view(3, 1, 1)  # three 1 x 1 arrays
    x = torch.ones(3, 1, dtype=F64)
    cfg = io(out_res=1 / 510, out_bound=12.0, noise_management="abs_max",
             bound_management="iterative")
    step = 24 / 510
    y = analog_mvm(x, w, torch.arange(3), cfg)
    # 12.04 rounds to 256 steps = 12.047 > 12: redone at half the input, 6.02 -> 128 steps.
    expect = torch.tensor([[255 * step], [-255 * step], [2 * 128 * step]], dtype=F64)
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)


def test_noise_management_scales_by_the_absolute_maximum(device):
    # With noise management the input is divided by its maximum before the DAC: the
    # quantization error is relative to that maximum, whatever the input's scale.
    w = torch.eye(16, dtype=F64, device=device)[None]
    x = torch.randn(30, 16, dtype=F64, device=device) * 1e-3
    y = analog_mvm(x, w, zeros_tile(30, device),
                   io(inp_res=1 / 126, inp_bound=1.0, noise_management="abs_max"))
    amax = x.abs().amax(1, keepdim=True)
    step = 2 / 126
    torch.testing.assert_close(y, torch.round(x / amax / step) * step * amax, rtol=0, atol=1e-15)


def test_output_noise_has_the_configured_spread(device):
    torch.manual_seed(0)
    w = torch.randn(1, 50, 20, dtype=F64, device=device) * 0.1
    x = torch.randn(400, 20, dtype=F64, device=device)
    tile = zeros_tile(400, device)
    y = analog_mvm(x, w, tile, io(out_noise=0.06, noise_management="abs_max"))
    amax = x.abs().amax(1, keepdim=True)
    z = (y - x @ w[0].T) / amax                      # the noise, in the array's units
    n = z.numel()
    assert abs(z.mean().item()) < 4 * 0.06 / math.sqrt(n)
    assert z.std().item() == pytest.approx(0.06, rel=4 * math.sqrt(2 / n) + 0.01)
    # Fresh draws each call, and the same ones under the same seed.
    seed = lambda s: torch.tensor([s], device=device)  # noqa: E731
    again = analog_mvm(x, w, tile, io(out_noise=0.06), seed=seed(5))
    assert torch.equal(again, analog_mvm(x, w, tile, io(out_noise=0.06), seed=seed(5)))
    assert not torch.equal(again, analog_mvm(x, w, tile, io(out_noise=0.06), seed=seed(6)))


def test_bound_management_leaves_no_output_clipped(device):
    torch.manual_seed(1)
    w = torch.randn(1, 20, 30, dtype=F64, device=device)   # |W x| up to about 20, |x| <= 1
    x = torch.randn(100, 30, dtype=F64, device=device)
    tile = zeros_tile(100, device)
    exact = x @ w[0].T
    amax = x.abs().amax(1, keepdim=True)
    assert ((exact / amax).abs() > 5).any()
    managed = io(out_bound=5.0, noise_management="abs_max", bound_management="iterative",
                 max_bm_factor=1000, max_bm_res=1.0)
    y = analog_mvm(x, w, tile, managed)
    torch.testing.assert_close(y, exact, rtol=1e-12, atol=1e-12)   # nothing clipped
    # Without it, saturated outputs stay at the bound (times the input's scale).
    clipped = analog_mvm(x, w, tile, io(out_bound=5.0, noise_management="abs_max"))
    torch.testing.assert_close(clipped, (exact / amax).clamp(-5, 5) * amax)


@pytest.mark.parametrize("limit, final", [(dict(max_bm_factor=1, max_bm_res=1.0), 2),
                                          (dict(max_bm_factor=2, max_bm_res=1.0), 4),
                                          (dict(max_bm_factor=3, max_bm_res=1.0), 4),
                                          (dict(max_bm_factor=1000, max_bm_res=0.25), 32)])
def test_bound_management_stops_where_aihwkit_does(device, limit, final):
    # aihwkit 1.1.0 (forwardVector): the reduction doubles from 1 while an output saturates,
    # and a pass ends the loop once int(reduction) > max_bm_factor or reduction > max_bm_res /
    # inp_step: with max_bm_factor 1 one halving (the op's limit 2: its smallest with a repeat),
    # with 2 (or 3) the last reduction is 4; with max_bm_res 0.25 and a
    # DAC step of 1/64 (0.25 * 64 = 16, exceeded at 32) it is 32. Each output is 5 * need.
    needs = torch.tensor([0.5, 1.5, 3.0, 3.9, 6.0, 12.0, 20.0, 40.0], dtype=F64, device=device)
    w = (5 * needs).view(1, -1, 1)
    x = torch.ones(1, 1, dtype=F64, device=device)
    cfg = io(out_bound=5.0, noise_management="abs_max", bound_management="iterative",
             inp_res=1 / 128 if limit["max_bm_res"] < 1 else 0, inp_bound=1.0, **limit)
    y = analog_mvm(x, w, zeros_tile(1, device), cfg)[0]
    reduction = 2.0 ** torch.ceil(torch.log2(needs.clamp_min(1)))
    reduction = reduction.clamp(max=final)
    expect = (5 * needs / reduction).clamp(max=5.0) * reduction
    assert (needs > final).any() and ((needs > 1) & (needs <= final)).any()
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_bound_management_limit_is_compared_in_the_arrays_dtype(device, dtype):
    # The op's limit just under 4: float32 holds it as 4.0, so a row that saturates at
    # reduction 2 is repeated at 4 (as the fused convolution's kernels and earlier versions
    # compare); float64 stops at 2. Outputs 5 * need with out_bound 5: need 3 ends at 3 * 5
    # exactly with a repeat at 4, clipped to 2 * 5 without.
    args = IOParameters(out_bound=5.0, out_res=0, inp_res=0, out_noise=0.0,
                        noise_management="abs_max", bound_management="iterative",
                        max_bm_res=1.0).op_args()
    args["max_bm_factor"] = 3.9999999
    w = torch.tensor([15.0], dtype=dtype, device=device).view(1, 1, 1)
    x = torch.ones(1, 1, dtype=dtype, device=device)
    seed = torch.tensor([1], device=device)
    y = torch.ops.rapa.analog_mvm(x, w, torch.zeros(1, dtype=torch.long, device=device), seed,
                                  False, **args)
    assert y.item() == (15.0 if dtype == torch.float32 else 10.0)


def test_backward_pass_has_no_bound_management_by_default_as_aihwkit():
    # W^T d = 24 with out_bound 12: aihwkit's backward pass clips (it has no bound
    # management); backward { bound_management: "iterative" } is rapa's option to redo it.
    w = torch.tensor([[[24.0]]], dtype=F64)
    d = torch.ones(1, 1, dtype=F64)
    quiet = dict(out_noise=0.0, inp_res=0.0)
    default = RPUConfig().backward
    assert default.bound_management == "none"
    plain = IOParameters(**{**default.__dict__, **quiet})
    managed = IOParameters(**{**default.__dict__, **quiet, "bound_management": "iterative"})
    step = 24 / 510
    got = analog_mvm(d, w, zeros_tile(1, "cpu"), plain, transposed=True)
    torch.testing.assert_close(got, torch.tensor([[12.0]], dtype=F64), rtol=0, atol=1e-12)
    got = analog_mvm(d, w, zeros_tile(1, "cpu"), managed, transposed=True)
    # Redone at half the input: 12 = 255 steps, within the bound, times 2.
    torch.testing.assert_close(got, torch.tensor([[2 * 255 * step]], dtype=F64), rtol=0,
                               atol=1e-12)


def ideal_state(shape, dw_min, bound=1e9, device="cpu"):
    ones = torch.ones(shape, dtype=F64, device=device)
    return {"dw_up": ones * dw_min, "dw_down": ones * dw_min, "w_min": -ones * bound,
            "w_max": ones * bound}


def pulse_probabilities(x, d, lr, dw_min, desired_bl, um, blm):
    """Theory of one row's pulse trains: (BL, P(x_j fires), P(d_i fires))."""
    xmax, dmax = x.abs().max().item(), d.abs().max().item()
    need = lr * xmax * dmax / dw_min
    bl = int(min(max(math.ceil(need), 1), desired_bl)) if blm else desired_bl
    unit = lr / (bl * dw_min)
    if um or blm:  # bit-length management implies update management
        if need > bl:  # BL capped: x keeps its proportions, d clips
            a, b = 1 / xmax, unit * xmax
        else:
            a, b = math.sqrt(unit * dmax / xmax), math.sqrt(unit * xmax / dmax)
    else:
        a = b = math.sqrt(unit)
    return bl, (a * x.abs()).clamp(max=1), (b * d.abs()).clamp(max=1)


@pytest.mark.parametrize("lr", [0.01, 0.2])
@pytest.mark.parametrize("management", [(True, True), (True, False), (False, True),
                                        (False, False)])
def test_ideal_device_update_is_sgd_on_average_with_the_predicted_spread(device, management, lr):
    um, blm = management
    torch.manual_seed(2)
    O, K, draws = 4, 6, 3000
    dw_min = 1e-3
    x = torch.randn(1, K, dtype=F64, device=device)
    d = torch.randn(1, O, dtype=F64, device=device) * 0.5
    dev = ConstantStepDevice(dw_min=dw_min, dw_min_std=0.0)
    update = UpdateParameters(desired_bl=31, update_management=um, update_bl_management=blm)
    state = ideal_state((draws, O, K), dw_min, device=device)
    w = torch.zeros(draws, O, K, dtype=F64, device=device)
    # One array per draw: the same rank-one update on `draws` independent arrays at once.
    rpu_update(w, x.expand(draws, K).contiguous(), d.expand(draws, O).contiguous(),
               torch.arange(draws, device=device), lr, state, dev, update)
    x, d, w = x.cpu(), d.cpu(), w.cpu()
    sgd = -lr * d[0][:, None] * x[0][None, :]
    # Theory: n ~ Binomial(BL, px pd), dw = -sign dw_min n.
    bl, px, pd = pulse_probabilities(x[0], d[0], lr, dw_min, 31, um, blm)
    p = px[None, :] * pd[:, None]
    mean = -torch.sign(d[0])[:, None] * torch.sign(x[0])[None, :] * dw_min * bl * p
    var = dw_min ** 2 * bl * p * (1 - p)
    if (px < 1).all() and (pd < 1).all():
        torch.testing.assert_close(mean, sgd, rtol=1e-9, atol=1e-12)  # unclipped: exactly SGD
    else:
        assert (mean.abs() <= sgd.abs() + 1e-12).all()  # clipped: never more than SGD
    se = (var / draws).sqrt()
    assert ((w.mean(0) - mean).abs() <= 5 * se + 1e-12).all()
    assert ((w.var(0) - var).abs() <= 6 * var * math.sqrt(2 / draws) + 1e-12).all()


def test_a_capped_bit_length_clips_d_and_keeps_x_in_proportion(device):
    # lr |x|max |d|max / dw_min = 1000 > BL 31: the largest x fires every bit, and the x
    # trains keep their proportions (aihwkit's rule); d clips.
    x = torch.tensor([1.0, 0.5, 0.25], dtype=F64)
    d = torch.tensor([1.0, 0.01], dtype=F64)
    bl, px, pd = pulse_probabilities(x, d, 1.0, 1e-3, 31, True, True)
    assert bl == 31
    torch.testing.assert_close(px, x)
    torch.testing.assert_close(pd, torch.tensor([1.0, 0.01 * 1.0 / (31e-3)], dtype=F64))
    draws = 2000
    w = torch.zeros(draws, 2, 3, dtype=F64, device=device)
    rpu_update(w, x.to(device).expand(draws, 3).contiguous(),
               d.to(device).expand(draws, 2).contiguous(), torch.arange(draws, device=device),
               1.0, ideal_state((draws, 2, 3), 1e-3, device=device),
               ConstantStepDevice(dw_min=1e-3, dw_min_std=0.0), UpdateParameters(desired_bl=31))
    counts = -w.mean(0)[0].cpu() / 1e-3
    torch.testing.assert_close(counts, 31 * x, rtol=0.05, atol=0)


def test_cycle_to_cycle_variation_adds_the_predicted_spread(device):
    torch.manual_seed(3)
    draws, dw_min, std = 4000, 1e-3, 0.3
    one = torch.ones(draws, 1, dtype=F64, device=device)
    # lr = 10 dw_min, probabilities 1 with BL 10: exactly 10 coincidences per weight.
    w = torch.zeros(draws, 1, 1, dtype=F64, device=device)
    rpu_update(w, one, one, torch.arange(draws, device=device), 10 * dw_min,
               ideal_state((draws, 1, 1), dw_min, device=device),
               ConstantStepDevice(dw_min=dw_min, dw_min_std=std), UpdateParameters(desired_bl=31))
    assert w.mean().item() == pytest.approx(-10 * dw_min, rel=5 * std / math.sqrt(10 * draws))
    assert w.std().item() == pytest.approx(dw_min * std * math.sqrt(10), rel=0.1)


@pytest.mark.parametrize("sign, step", [(1.0, "dw_down"), (-1.0, "dw_up")])
def test_each_direction_takes_its_own_step(device, sign, step):
    # Asymmetric devices (up 2e-3, down 1e-3): lr = 10 dw_min with x = d = 1 fires every bit of
    # 10 pulses; d > 0 moves the weight down by 10 down steps, d < 0 up by 10 up steps.
    dw_min = 1e-3
    state = ideal_state((1, 1, 1), dw_min, device=device)
    state["dw_up"] = state["dw_up"] * 2
    w = torch.zeros(1, 1, 1, dtype=F64, device=device)
    one = torch.ones(1, 1, dtype=F64, device=device)
    rpu_update(w, one, sign * one, zeros_tile(1, device), 10 * dw_min, state,
               ConstantStepDevice(dw_min=dw_min, dw_min_std=0.0), UpdateParameters())
    expect = -sign * 10 * state[step].item()
    assert w.item() == pytest.approx(expect, rel=1e-12)


def test_weights_stay_within_their_own_bounds(device):
    torch.manual_seed(4)
    T, O, K, M = 3, 8, 9, 200
    cfg = RPUConfig()
    arrays = AnalogArrays(cfg, (T, O, K)).double().to(device)
    w = torch.randn(T, O, K, dtype=F64, device=device) * 0.5
    assert arrays.clip_(w) > 0
    state = arrays.device_state()
    for _ in range(5):
        x = torch.randn(M, K, dtype=F64, device=device) * 3
        d = torch.randn(M, O, dtype=F64, device=device) * 3
        rpu_update(w, x, d, torch.randint(0, T, (M,), device=device), 1.0, state, cfg.device,
                   cfg.update)
    assert (w <= arrays.w_max).all() and (w >= arrays.w_min).all()
    assert (w == arrays.w_max).any() and (w == arrays.w_min).any()   # large steps saturate


def test_rows_update_only_their_array_in_order(device):
    torch.manual_seed(5)
    T, O, K, M = 4, 3, 5, 300  # several blocks of rows in the CPU kernel
    w = torch.zeros(T, O, K, dtype=F64, device=device)
    tile = torch.randint(-1, 2, (M,), device=device)   # arrays 2 and 3 get no row
    x = torch.randn(M, K, dtype=F64, device=device)
    d = torch.randn(M, O, dtype=F64, device=device)
    state = ideal_state((T, O, K), 1e-3, device=device)
    dev, up = ConstantStepDevice(dw_min=1e-3, dw_min_std=0.2), UpdateParameters()
    seed = torch.tensor([9], device=device)
    rpu_update(w, x, d, tile, 0.05, state, dev, up, seed=seed)
    assert (w[2:] == 0).all() and (w[:2] != 0).any()
    # Deterministic under a seed, whatever the thread count.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1 = torch.zeros_like(w)
        rpu_update(w1, x, d, tile, 0.05, state, dev, up, seed=seed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(w, w1)
    # Rows of array -1 change nothing: dropping them gives the same result.
    keep = tile >= 0
    w2 = torch.zeros_like(w)
    rpu_update(w2, x, d, torch.where(keep, tile, -1), 0.05, state, dev, up, seed=seed)
    assert torch.equal(w, w2)


def populate_reference(dev: ConstantStepDevice, shape, seed: int) -> dict:
    """aihwkit 1.1.0's PulsedRPUDevice::populate for a ConstantStepDevice, in float64, from the
    Gaussian draws AnalogArrays takes (the same generator, in its order)."""
    g = torch.Generator().manual_seed(seed)
    gauss = lambda: torch.randn(shape, generator=g).double()  # noqa: E731
    gain, r = 1 + dev.dw_min_dtod * gauss(), dev.up_down_dtod * gauss()
    w_max = dev.w_max * (1 + dev.w_max_dtod * gauss())
    w_min = dev.w_min * (1 + dev.w_min_dtod * gauss())
    up_bias = dev.up_down if dev.up_down < 0 else 0.0
    down_bias = -dev.up_down if dev.up_down > 0 else 0.0
    up = (up_bias + gain + r) * dev.dw_min
    down = (down_bias + gain - r) * dev.dw_min
    if dev.enforce_consistency:
        up, down = up.abs(), down.abs()
        swap = w_min > w_max
        w_min, w_max = torch.where(swap, w_max, w_min), torch.where(swap, w_min, w_max)
        w_max, w_min = w_max.abs(), -w_min.abs()
    else:
        m = w_max + (w_min - w_max) / 2
        stuck = w_min > w_max
        w_max, w_min = torch.where(stuck, m, w_max), torch.where(stuck, m, w_min)
    return {"dw_up": up, "dw_down": down, "w_min": w_min, "w_max": w_max}


@pytest.mark.parametrize("up_down", [0.2, -0.2, 0.0])
@pytest.mark.parametrize("consistent", [True, False])
def test_device_to_device_draws_follow_aihwkit(up_down, consistent):
    # Spreads large enough that steps and bounds cross zero: aihwkit takes steps by absolute
    # value and flips bounds (enforce_consistency); a clamp at 0 or a max(w_max, w_min) would
    # leave dead devices and ranges without 0.
    dev = ConstantStepDevice(dw_min=1e-3, dw_min_dtod=0.8, up_down=up_down, up_down_dtod=0.5,
                             w_max=0.6, w_min=-0.6, w_max_dtod=0.9, w_min_dtod=0.9,
                             enforce_consistency=consistent)
    shape = (2, 64, 64)
    torch.manual_seed(11)
    got = AnalogArrays(RPUConfig(device=dev), shape).device_state()
    ref = populate_reference(dev, shape, 11)
    for name in ref:  # float32 draws: equal to a few float32 steps of the nominal value
        nominal = dev.dw_min if name.startswith("dw") else dev.w_max
        torch.testing.assert_close(got[name].double(), ref[name], rtol=1e-6,
                                   atol=4e-7 * nominal)
    raw_up = ref["dw_up"] if not consistent else None
    if consistent:
        assert (got["dw_up"] > 0).all() and (got["dw_down"] > 0).all()
        assert (got["w_max"] >= 0).all() and (got["w_min"] <= 0).all()
    else:
        assert (raw_up < 0).any()   # the case the rule is about occurs
    # Mean steps: up_down only weakens one direction (1.0 / 0.8 at up_down 0.2).
    mild = ConstantStepDevice(dw_min=1e-3, dw_min_dtod=0.1, up_down=up_down, up_down_dtod=0.01)
    m = AnalogArrays(RPUConfig(device=mild), (4, 64, 64))
    assert m.dw_up.mean().item() / 1e-3 == pytest.approx(1 + min(up_down, 0), abs=0.01)
    assert m.dw_down.mean().item() / 1e-3 == pytest.approx(1 - max(up_down, 0), abs=0.01)


def test_device_to_device_draws_have_the_configured_spread():
    torch.manual_seed(6)
    cfg = RPUConfig()
    a = AnalogArrays(cfg, (4, 64, 64))
    dev = cfg.device
    assert a.dw_up.mean().item() == pytest.approx(dev.dw_min, rel=0.02)
    assert (a.dw_up / dev.dw_min).std().item() == pytest.approx(dev.dw_min_dtod, rel=0.05)
    assert a.w_max.mean().item() == pytest.approx(dev.w_max, rel=0.02)
    assert (a.w_min / dev.w_min).std().item() == pytest.approx(dev.w_min_dtod, rel=0.05)
    assert (a.w_max >= 0).all() and (a.w_min <= 0).all() and (a.dw_down > 0).all()


def test_a_range_without_zero_is_refused():
    for w_min, w_max in ((0.1, 0.6), (-0.6, -0.1)):
        with pytest.raises(ValueError, match="range holds 0"):
            RPUConfig(device=ConstantStepDevice(w_min=w_min, w_max=w_max)).check()


def test_bad_arguments_name_what_is_wrong():
    w = torch.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match="'tile' holds 2"):
        analog_mvm(torch.zeros(5, 4), w, torch.full((5,), 2), PERFECT)
    with pytest.raises(RuntimeError, match="'input' must be \\(M, 4\\)"):
        analog_mvm(torch.zeros(5, 3), w, torch.zeros(5, dtype=torch.long), PERFECT)
    state = ideal_state((2, 3, 4), 1e-3)
    state = {k: v.float() for k, v in state.items()}
    with pytest.raises(RuntimeError, match="desired_bl"):
        rpu_update(w, torch.zeros(1, 4), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                   0.1, state, ConstantStepDevice(), UpdateParameters(desired_bl=65))
    with pytest.raises(RuntimeError, match="'dw_up' must have the shape"):
        rpu_update(w, torch.zeros(1, 4), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                   0.1, {**state, "dw_up": torch.zeros(3)}, ConstantStepDevice(),
                   UpdateParameters())


def test_opcheck(device):
    w = torch.randn(2, 3, 4, device=device)
    x = torch.randn(6, 4, device=device)
    tile = torch.tensor([0, 1, -1, 0, 1, 1], device=device)
    seed = torch.tensor([7], device=device)
    args = IOParameters().op_args()
    torch.library.opcheck(torch.ops.rapa.analog_mvm, (x, w, tile, seed, False, *args.values()))
    torch.library.opcheck(torch.ops.rapa.analog_mvm, (x, w, tile, seed, False, *args.values()),
                          {"tile_capacity": 3})
    state = [torch.full_like(w, 1e-3), torch.full_like(w, 1e-3), -torch.ones_like(w),
             torch.ones_like(w)]
    lr = torch.tensor(0.01, dtype=F64, device=device)
    torch.library.opcheck(torch.ops.rapa.rpu_update,
                          (w, x, torch.randn(6, 3, device=device), tile, *state, seed, lr,
                           1e-3, 0.3, 31, True, True))


def dyadic(shape, scale=64, high=16):
    """Multiples of 1/scale: their products and sums are exact in float64 in any order."""
    return torch.randint(-high, high + 1, shape).double() / scale


@pytest.mark.parametrize("transposed", [False, True])
def test_a_known_tile_capacity_changes_no_number(device, transposed):
    # The rows laid out with the capacity the caller knows (nothing reaches the host: a CUDA
    # graph can hold the op) or with the largest array's count that the op finds: the same
    # products, draws and repetitions, bit for bit (dyadic numbers: exact in any order).
    torch.manual_seed(3)
    T, O, K, M = 4, 12, 30, 400
    w = dyadic((T, O, K)).to(device)
    rows = dyadic((M, O if transposed else K), scale=16, high=64).to(device)
    rows[::37] = 0  # all-zero inputs: 0 out under noise management, noise and all
    tile = torch.randint(-1, T - 1, (M,), device=device)  # array T - 1 gets no row
    cfg = IOParameters(inp_res=1 / 128, out_res=1 / 256, out_bound=1.0, out_noise=2 ** -4)
    seed = torch.tensor([5], device=device)
    largest = int(torch.bincount(tile[tile >= 0], minlength=T).max())
    want = analog_mvm(rows, w, tile, cfg, transposed=transposed, seed=seed)
    for capacity in (largest, largest + 7, M):
        got = analog_mvm(rows, w, tile, cfg, transposed=transposed, seed=seed,
                         tile_capacity=capacity)
        assert torch.equal(got, want), capacity
    # Rows were repeated (without bound management they come out otherwise), others not.
    once = analog_mvm(rows, w, tile, dataclasses.replace(cfg, bound_management="none"),
                      transposed=transposed, seed=seed)
    repeated = (once != want).any(1)
    assert repeated.sum() > 10 and (~repeated & (tile >= 0)).sum() > 10
    assert (want[tile < 0] == 0).all() and (want[::37] == 0).all()
    assert (want[(tile >= 0) & rows.abs().amax(1).gt(0)] != 0).any(1).float().mean() > 0.9


def test_more_rows_on_an_array_than_its_capacity_is_refused():
    w, x = torch.ones(2, 2, 3), torch.ones(4, 3)
    tile = torch.tensor([0, 0, 0, 1])
    with pytest.raises(RuntimeError, match="'tile_capacity' is 2, but tile 0 gets 3 patches "
                                           "\\(rows\\) of this batch"):
        analog_mvm(x, w, tile, PERFECT, tile_capacity=2)
    with pytest.raises(RuntimeError, match="'tile_capacity' must be -1 \\(not known\\) or a "
                                           "patch count in \\[0, 4\\], got 5"):
        analog_mvm(x, w, tile, PERFECT, tile_capacity=5)
    assert torch.equal(analog_mvm(x, w, tile, PERFECT, tile_capacity=3), torch.full((4, 2), 3.0))
    for capacity in (None, 0):  # no arrays: every row dropped, the layout empty
        y = analog_mvm(x, torch.ones(0, 2, 3), torch.full((4,), -1), PERFECT,
                       tile_capacity=capacity)
        assert torch.equal(y, torch.zeros(4, 2))


def test_a_rate_given_as_a_tensor_updates_as_the_number(device):
    # The rate the solver keeps on the device (what a CUDA graph reads at each replay): the
    # kernels read it there and update as with the number; another value, another update.
    torch.manual_seed(6)
    T, O, K, M = 2, 6, 9, 200
    cfg = RPUConfig()
    arrays = AnalogArrays(cfg, (T, O, K)).double().to(device)
    w = (torch.randn(T, O, K, dtype=F64) * 0.3).to(device)
    arrays.clip_(w)
    x, d = torch.randn(M, K, dtype=F64, device=device), torch.randn(M, O, dtype=F64, device=device)
    tile = torch.randint(-1, T, (M,), device=device)
    seed = torch.tensor([4], device=device)
    state = arrays.device_state()
    updated = {}
    for lr in (0.05, torch.tensor(0.05, dtype=F64, device=device), 0.1,
               torch.tensor([0.1], dtype=F64, device=device), torch.tensor(0.0, device=device)):
        v = w.clone()
        rpu_update(v, x, d, tile, lr, state, cfg.device, cfg.update, seed=seed)
        updated.setdefault(float(lr), []).append(v)
    assert torch.equal(*updated[0.05]) and torch.equal(*updated[0.1])
    assert (updated[0.05][0] != updated[0.1][0]).float().mean() > 0.3
    assert (updated[0.05][0] != w).float().mean() > 0.3 and torch.equal(updated[0.0][0], w)


def test_a_bad_rate_is_refused():
    w = torch.zeros(1, 2, 3, dtype=F64)
    state = ideal_state((1, 2, 3), 1e-3)
    rows = (torch.ones(1, 3, dtype=F64), torch.ones(1, 2, dtype=F64), torch.zeros(1, dtype=torch.long))
    for lr in (-0.1, math.nan, math.inf, torch.tensor(-0.1, dtype=F64)):
        with pytest.raises(RuntimeError, match="'lr' must be finite and >= 0"):
            rpu_update(w, *rows, lr, state, ConstantStepDevice(), UpdateParameters())
    with pytest.raises(RuntimeError, match="'lr' must hold one number"):
        rpu_update(w, *rows, torch.tensor([0.1, 0.2], dtype=F64), state, ConstantStepDevice(),
                   UpdateParameters())
    for lr, message in ((torch.tensor(1), "'lr' must be float32 or float64, got Long"),
                        (torch.tensor(0.1, dtype=torch.half), "'lr' must be float32 or float64"),
                        (torch.tensor(0.1, device="meta"), "'lr' is on meta, but 'weight' is on "
                                                           "cpu")):
        with pytest.raises(RuntimeError, match=message):
            rpu_update(w, *rows, lr, state, ConstantStepDevice(), UpdateParameters())
    for lr in (True, "0.1", None):
        with pytest.raises(TypeError, match="lr must be a number or a tensor of one, got"):
            rpu_update(w, *rows, lr, state, ConstantStepDevice(), UpdateParameters())
    with pytest.raises(RuntimeError, match="'seed' is on meta, but 'weight' is on cpu"):
        analog_mvm(torch.ones(1, 3), torch.ones(1, 2, 3), torch.zeros(1, dtype=torch.long),
                   PERFECT, seed=torch.tensor([1], device="meta"))
    assert (w == 0).all()


def test_a_rate_given_as_a_number_reaches_the_kernels_in_float64(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.ops.rapa, "rpu_update", lambda *args: seen.append(args[9]))
    w = torch.zeros(1, 2, 3)
    rows = (torch.ones(1, 3), torch.ones(1, 2), torch.zeros(1, dtype=torch.long))
    mine = torch.tensor(0.25)
    for lr in (0.1, 3, mine):
        rpu_update(w, *rows, lr, ideal_state((1, 2, 3), 1e-3), ConstantStepDevice(),
                   UpdateParameters())
    assert [(float(r), r.dtype, r.device.type) for r in seen[:2]] == [
        (0.1, F64, "cpu"), (3.0, F64, "cpu")]
    assert seen[2] is mine  # a tensor is the op's to check, as it is


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and a CUDA build of the operator library")
@pytest.mark.parametrize("transposed", [False, True])
def test_cuda_products_equal_the_cpu_ones_exactly(transposed):
    # The draws are counter-based, the same on both devices; with dyadic weights, a DAC step
    # of 1/64, an ADC step of 1/16 and noise 2^-4 every operation is exact or rounds the same
    # on both (noise times a table value is exact: an FMA changes nothing), so equality is
    # exact, bound management included.
    T, O, K, M = 3, 16, 40, 300
    w = dyadic((T, O, K))
    rows = torch.randn(M, O if transposed else K, dtype=F64)
    tile = torch.randint(-1, T, (M,))
    seed = torch.tensor([11])
    cfg = IOParameters(inp_res=1 / 128, out_res=1 / 256, out_bound=8.0, out_noise=2 ** -4)
    y_cpu = analog_mvm(rows, w, tile, cfg, transposed=transposed, seed=seed)
    y_gpu = analog_mvm(rows.cuda(), w.cuda(), tile.cuda(), cfg, transposed=transposed,
                       seed=seed.cuda())
    assert (y_cpu.abs() >= 8).any()   # bound management acted
    assert torch.equal(y_gpu.cpu(), y_cpu)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and a CUDA build of the operator library")
@pytest.mark.parametrize("dw_min_std", [0.0, 0.3])
@pytest.mark.parametrize("shape,dtype,lr,bl", [
    ((3, 16, 40, 300), F64, 0.01, 31),
    # arrays of 65 weights (the walk's last group of 32 has one), many chunks of rows per
    # array, float32, and a rate of many pulses per row
    ((2, 5, 13, 1500), torch.float32, 0.01, 31),
    ((2, 5, 13, 1500), F64, 0.1, 31),
    # array 1 without rows, array 0 with two chunks exactly (float32: 128 rows each), and
    # pulse trains of 64 bits (coincidences up to 64)
    ((3, 4, 9, 606), torch.float32, 1.0, 64)], ids=["f64", "f32-odd", "f64-lr", "f32-gaps-bl64"])
def test_cuda_update_equals_the_cpu_one(dw_min_std, shape, dtype, lr, bl):
    # The same pulses (counter-based) in the same order per weight. Without cycle-to-cycle
    # noise each coincidence adds the same step: exact. With it, the noise term is computed in
    # double on both devices, but may be one fused multiply-add on the GPU: equal to rounding.
    torch.manual_seed(8)
    T, O, K, M = shape
    cfg = RPUConfig(device=ConstantStepDevice(dw_min_std=dw_min_std),
                    update=UpdateParameters(desired_bl=bl))
    arrays = AnalogArrays(cfg, (T, O, K)).to(dtype)
    w = (torch.randn(T, O, K, dtype=F64) * 0.3).to(dtype)
    arrays.clip_(w)
    x, d = torch.randn(M, K, dtype=dtype), torch.randn(M, O, dtype=dtype)
    tile = torch.randint(-1, T, (M,))
    if bl == 64:
        tile = torch.tensor([0] * 256 + [2] * 300 + [-1] * 50)[torch.randperm(M)]
    seed = torch.tensor([11])
    state = arrays.device_state()
    w_cpu, w_gpu = w.clone(), w.cuda()
    rpu_update(w_cpu, x, d, tile, lr, state, cfg.device, cfg.update, seed=seed)
    rpu_update(w_gpu, x.cuda(), d.cuda(), tile.cuda(), lr,
               {k: v.cuda() for k, v in state.items()}, cfg.device, cfg.update, seed=seed.cuda())
    changed = (w_cpu != w).flatten(1).float().mean(1)
    assert changed.max() > 0.5 and (changed == 0).sum() == (bl == 64)
    unbounded = dict(state, w_min=state["w_min"] - 1e9, w_max=state["w_max"] + 1e9)
    w_unbounded = w.clone()
    rpu_update(w_unbounded, x, d, tile, lr, unbounded, cfg.device, cfg.update, seed=seed)
    assert (w_unbounded != w_cpu).float().mean() > 0.1  # clipping on the way decides many
    if dw_min_std == 0:
        assert torch.equal(w_gpu.cpu(), w_cpu)
    else:
        tol = dict(rtol=1e-12, atol=1e-15) if dtype == F64 else dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(w_gpu.cpu(), w_cpu, **tol)


@pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and a CUDA build of the operator library")
def test_analog_ops_recorded_in_a_cuda_graph_draw_afresh_and_read_the_rate_cuda():
    # analog_mvm with a tile_capacity (bound management repeating rows) and rpu_update with the
    # rate as a tensor, recorded once: each replay draws new seeds, from the default generator
    # and from one of its own registered with the graph (the solver's pulses), reads the rate
    # of the moment, and gives the numbers of the eager ops with that replay's seeds and rate.
    from rapa.analog.ops import draw_seed
    torch.manual_seed(2)
    dev, (T, O, K, M) = "cuda", (3, 16, 40, 300)
    io_cfg = IOParameters(inp_res=1 / 128, out_res=1 / 256, out_bound=1.0, out_noise=2 ** -4)
    cfg = RPUConfig()
    state = AnalogArrays(cfg, (T, O, K)).double().to(dev).device_state()
    w = torch.randn(T, O, K, dtype=F64, device=dev) * 0.3
    w = torch.minimum(torch.maximum(w, state["w_min"]), state["w_max"])
    x = torch.randn(M, K, dtype=F64, device=dev)
    d = torch.randn(M, O, dtype=F64, device=dev)
    tile = torch.randperm(M, device=dev) % T  # 100 rows per array
    lr = torch.tensor(0.01, dtype=F64, device=dev)
    pulses = torch.Generator(dev).manual_seed(1)
    held = w.clone()

    def step():
        s_mvm = draw_seed(dev)
        y = analog_mvm(x, held, tile, io_cfg, seed=s_mvm, tile_capacity=M // T)
        s_update = draw_seed(dev, pulses)
        rpu_update(held, x, d, tile, lr, state, cfg.device, cfg.update, seed=s_update)
        return s_mvm, s_update, y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    held.copy_(w)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(pulses)
    with torch.cuda.graph(graph):
        s_mvm, s_update, y = step()
    assert torch.equal(held, w)  # recording runs nothing
    seeds = []
    for rate in (0.01, 0.03):
        lr.fill_(rate)
        before = held.clone()
        graph.replay()
        want_y = analog_mvm(x, before, tile, io_cfg, seed=s_mvm.clone())
        want_w = before.clone()
        rpu_update(want_w, x, d, tile, rate, state, cfg.device, cfg.update, seed=s_update.clone())
        assert torch.equal(y, want_y) and torch.equal(held, want_w)
        assert not torch.equal(held, before)
        once = analog_mvm(x, before, tile, dataclasses.replace(io_cfg, bound_management="none"),
                          seed=s_mvm.clone())
        assert (once != y).any(1).sum() > 10  # bound management repeated rows in the graph
        seeds.append((int(s_mvm), int(s_update)))
    assert seeds[0][0] != seeds[1][0] and seeds[0][1] != seeds[1][1]


@pytest.mark.parametrize("noise_management", ["abs_max", "none"])
@pytest.mark.parametrize("transposed", [False, True])
def test_a_row_with_nan_outputs_nan_and_the_others_what_they_would(device, noise_management,
                                                                   transposed):
    """NaN is not hidden: a row with a NaN input (one NaN among zeros, all NaN, NaN among
    numbers) outputs NaN everywhere, as a digital product would, whatever its scale would be
    (noise management's absolute maximum is NaN there); the other rows, noise included, are
    what they are with the NaN rows made finite."""
    T, O, K = 2, 4, 6
    In = O if transposed else K
    w = torch.randn(T, O, K, dtype=F64, device=device) * 0.3
    x = torch.randn(7, In, dtype=F64, device=device)
    x[0] = 0
    x[0, 2] = math.nan
    x[1] = math.nan
    x[2, 0] = math.nan
    x[5] = 0  # an all-zero row: 0 under noise management, the noise otherwise
    tile = torch.tensor([0, 1, 0, 1, 0, 1, -1], device=device)
    seed = torch.tensor([11], device=device)
    cfg = io(out_noise=0.05, out_res=1 / 254, out_bound=3.0, inp_res=1 / 126, inp_bound=1.0,
             noise_management=noise_management, bound_management="iterative")
    y = analog_mvm(x, w, tile, cfg, transposed=transposed, seed=seed)
    assert y[:3].isnan().all()
    finite = x.nan_to_num(0.5)
    want = analog_mvm(finite, w, tile, cfg, transposed=transposed, seed=seed)
    assert not want.isnan().any() and torch.equal(y[3:], want[3:])
    assert (y[6] == 0).all() and ((y[5] == 0).all() == (noise_management == "abs_max"))


def test_analog_layers_hand_on_nan_as_digital_ones_do():
    """A NaN pixel makes NaN of every output whose patch holds it, on the arrays (the fused CPU
    convolution and analog_mvm's rows) as in the digital layer; a NaN row of a Linear layer
    outputs NaN."""
    from rapa.nn import Linear, TiledConv2d
    torch.manual_seed(0)
    for channels, dtype in ((1, torch.float32), (2, torch.float32), (2, torch.float64)):
        # 9 values a patch, then 18: the fused kernel's vector lanes as well as its tail
        x = torch.zeros(1, channels, 5, 5, dtype=dtype)
        x[0, 0, 2, 3] = math.nan
        analog = TiledConv2d(channels, 2, 3, padding=1, rpu_config=RPUConfig()).to(dtype)
        digital = torch.nn.functional.conv2d(x, torch.ones(2, channels, 3, 3, dtype=dtype),
                                             padding=1)
        assert digital.isnan().sum() == 18
        assert torch.equal(analog(x).isnan(), digital.isnan()), (channels, dtype)
    fc = Linear(4, 2, rpu_config=RPUConfig())
    rows = torch.randn(3, 4)
    rows[1] = math.nan
    assert fc(rows).isnan().any(1).tolist() == [False, True, False]


def test_the_python_api_checks_the_periphery_and_the_arrays_as_a_prototxt_is():
    """A typo or an impossible number given through rapa.analog (not a prototxt) is refused
    with the rule it breaks, at the op or at the arrays' making: not read as "none"."""
    w, x, tile = torch.zeros(1, 4, 6), torch.ones(3, 6), torch.zeros(3, dtype=torch.long)
    for io_args, message in ((dict(noise_management="absmax"), "noise_management must be one "
                              "of none, abs_max, got 'absmax'"),
                             (dict(bound_management="xx"), "bound_management must be one of"),
                             (dict(max_bm_factor=0.5), "max_bm_factor must be in [1, 1e30]"),
                             (dict(out_noise=math.inf), "out_noise must be a finite number"),
                             (dict(out_res=math.nan), "out_res must be a finite number"),
                             (dict(max_bm_res=math.inf), "max_bm_res must be a finite number")):
        with pytest.raises(ValueError, match=re.escape(f"IOParameters: {message}")):
            analog_mvm(x, w, tile, IOParameters(**io_args))
    assert analog_mvm(x, w, tile, IOParameters(is_perfect=True, out_noise=math.inf)).eq(0).all()
    bad_device = RPUConfig(device=dataclasses.replace(ConstantStepDevice(), dw_min=-1.0))
    for config, shape, message in ((RPUConfig(), (0, 8, 16), "got (0, 8, 16)"),
                                   (RPUConfig(), (8, 16), "got (8, 16)"),
                                   (RPUConfig(), (1.5, 8, 16), "got (1.5, 8, 16)"),
                                   (bad_device, (1, 8, 16), "device.dw_min must be > 0")):
        with pytest.raises(ValueError, match=re.escape(message)):
            AnalogArrays(config, shape)
