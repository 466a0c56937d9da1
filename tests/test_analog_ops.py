"""rapa::analog_mvm and rapa::rpu_update against plain references and the theory of the
pulsed update (Gokmen & Vlasov 2016), in float64 with fresh random inputs."""
import math

import pytest
import torch

import rapa  # noqa: F401
from rapa.analog import (AnalogArrays, ConstantStepDevice, IOParameters, RPUConfig,
                         UpdateParameters, analog_mvm, rpu_update)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PERFECT = IOParameters(is_perfect=True)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transposed", [False, True])
def test_perfect_products_are_exact(device, transposed):
    T, O, K, M = 3, 5, 7, 50
    w = torch.randn(T, O, K, dtype=torch.float64, device=device)
    rows = torch.randn(M, O if transposed else K, dtype=torch.float64, device=device)
    tile = torch.randint(-1, T, (M,), device=device)
    y = analog_mvm(rows, w, tile, PERFECT, transposed=transposed)
    torch.testing.assert_close(y, dense(rows, w, tile, transposed), rtol=1e-12, atol=1e-12)


def test_input_quantization_and_clipping_are_the_dacs():
    K = 64
    w = torch.eye(K, dtype=torch.float64)[None]
    x = torch.rand(20, K, dtype=torch.float64) * 3 - 1.5      # partly beyond the bound 1
    y = analog_mvm(x, w, torch.zeros(20, dtype=torch.long), io(inp_res=1 / 126, inp_bound=1.0))
    step = 2 / 126                                            # the range [-1, 1] in 126 steps
    expect = torch.round(x.clamp(-1, 1) / step) * step
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)
    assert len(torch.unique(y)) <= 127


def test_output_quantization_is_the_adcs():
    w = torch.randn(1, 30, 10, dtype=torch.float64)
    x = torch.randn(40, 10, dtype=torch.float64)
    y = analog_mvm(x, w, torch.zeros(40, dtype=torch.long), io(out_res=1 / 510, out_bound=12.0))
    step = 24 / 510
    exact = x @ w[0].T
    torch.testing.assert_close(y, torch.round(exact.clamp(-12, 12) / step) * step, rtol=0,
                               atol=1e-12)
    assert (y - exact.clamp(-12, 12)).abs().max() <= step / 2 + 1e-12


def test_noise_management_scales_by_the_absolute_maximum():
    # With noise management the input is divided by its maximum before the DAC: the
    # quantization error is relative to that maximum, whatever the input's scale.
    w = torch.eye(16, dtype=torch.float64)[None]
    x = torch.randn(30, 16, dtype=torch.float64) * 1e-3
    tile = torch.zeros(30, dtype=torch.long)
    y = analog_mvm(x, w, tile, io(inp_res=1 / 126, inp_bound=1.0, noise_management="abs_max"))
    amax = x.abs().amax(1, keepdim=True)
    step = 2 / 126
    torch.testing.assert_close(y, torch.round(x / amax / step) * step * amax, rtol=0, atol=1e-15)


def test_output_noise_has_the_configured_spread():
    torch.manual_seed(0)
    w = torch.randn(1, 50, 20, dtype=torch.float64) * 0.1
    x = torch.randn(400, 20, dtype=torch.float64)
    tile = torch.zeros(400, dtype=torch.long)
    y = analog_mvm(x, w, tile, io(out_noise=0.06, noise_management="abs_max"))
    amax = x.abs().amax(1, keepdim=True)
    z = (y - x @ w[0].T) / amax                      # the noise, in the array's units
    n = z.numel()
    assert abs(z.mean().item()) < 4 * 0.06 / math.sqrt(n)
    assert z.std().item() == pytest.approx(0.06, rel=4 * math.sqrt(2 / n) + 0.01)
    # Fresh draws each call, and the same ones under the same seed.
    again = analog_mvm(x, w, tile, io(out_noise=0.06), seed=torch.tensor([5]))
    assert torch.equal(again, analog_mvm(x, w, tile, io(out_noise=0.06), seed=torch.tensor([5])))
    assert not torch.equal(again, analog_mvm(x, w, tile, io(out_noise=0.06),
                                             seed=torch.tensor([6])))


def test_bound_management_leaves_no_output_clipped():
    torch.manual_seed(1)
    w = torch.randn(1, 20, 30, dtype=torch.float64)   # |W x| up to about 20 with |x| <= 1
    x = torch.randn(100, 30, dtype=torch.float64)
    tile = torch.zeros(100, dtype=torch.long)
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
    # With the limit reached (a factor of 2 at most), rows that need more stay clipped.
    limited = analog_mvm(x, w, tile, io(out_bound=5.0, noise_management="abs_max",
                                        bound_management="iterative", max_bm_factor=2,
                                        max_bm_res=1.0))
    need = (exact / amax).abs().amax(1) / 5
    ok = need <= 2
    torch.testing.assert_close(limited[ok], exact[ok])
    assert torch.allclose((limited[~ok] / amax[~ok] / 2).abs().amax(1),
                          torch.full(((~ok).sum(),), 5.0, dtype=torch.float64))


def ideal_state(shape, dw_min, bound=1e9):
    ones = torch.ones(shape, dtype=torch.float64)
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
def test_ideal_device_update_is_sgd_on_average_with_the_predicted_spread(management, lr):
    um, blm = management
    torch.manual_seed(2)
    O, K, draws = 4, 6, 3000
    dw_min = 1e-3
    x = torch.randn(1, K, dtype=torch.float64)
    d = torch.randn(1, O, dtype=torch.float64) * 0.5
    device = ConstantStepDevice(dw_min=dw_min, dw_min_std=0.0)
    update = UpdateParameters(desired_bl=31, update_management=um, update_bl_management=blm)
    state = ideal_state((draws, O, K), dw_min)
    w = torch.zeros(draws, O, K, dtype=torch.float64)
    # One array per draw: the same rank-one update on `draws` independent arrays at once.
    rpu_update(w, x.expand(draws, K).contiguous(), d.expand(draws, O).contiguous(),
               torch.arange(draws), lr, state, device, update)
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


def test_a_capped_bit_length_clips_d_and_keeps_x_in_proportion():
    # lr |x|max |d|max / dw_min = 1000 > BL 31: the largest x fires every bit, and the x
    # trains keep their proportions (aihwkit's rule); d clips.
    x = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    d = torch.tensor([1.0, 0.01], dtype=torch.float64)
    bl, px, pd = pulse_probabilities(x, d, 1.0, 1e-3, 31, True, True)
    assert bl == 31
    torch.testing.assert_close(px, x)
    torch.testing.assert_close(pd, torch.tensor([1.0, 0.01 * 1.0 / (31e-3)],
                                                 dtype=torch.float64))
    draws = 2000
    w = torch.zeros(draws, 2, 3, dtype=torch.float64)
    rpu_update(w, x.expand(draws, 3).contiguous(), d.expand(draws, 2).contiguous(),
               torch.arange(draws), 1.0, ideal_state((draws, 2, 3), 1e-3),
               ConstantStepDevice(dw_min=1e-3, dw_min_std=0.0), UpdateParameters(desired_bl=31))
    counts = -w.mean(0)[0] / 1e-3
    torch.testing.assert_close(counts, 31 * x, rtol=0.05, atol=0)


def test_cycle_to_cycle_variation_adds_the_predicted_spread():
    torch.manual_seed(3)
    draws, dw_min, std = 4000, 1e-3, 0.3
    x = torch.tensor([[1.0]], dtype=torch.float64)
    d = torch.tensor([[1.0]], dtype=torch.float64)
    # lr = 10 dw_min, probabilities 1 with BL 10: exactly 10 coincidences per weight.
    update = UpdateParameters(desired_bl=31)
    w = torch.zeros(draws, 1, 1, dtype=torch.float64)
    rpu_update(w, x.expand(draws, 1).contiguous(), d.expand(draws, 1).contiguous(),
               torch.arange(draws), 10 * dw_min, ideal_state((draws, 1, 1), dw_min),
               ConstantStepDevice(dw_min=dw_min, dw_min_std=std), update)
    assert w.mean().item() == pytest.approx(-10 * dw_min, rel=5 * std / math.sqrt(10 * draws))
    assert w.std().item() == pytest.approx(dw_min * std * math.sqrt(10), rel=0.1)


def test_weights_stay_within_their_own_bounds():
    torch.manual_seed(4)
    T, O, K, M = 3, 8, 9, 200
    cfg = RPUConfig()
    arrays = AnalogArrays(cfg, (T, O, K)).double()
    w = torch.randn(T, O, K, dtype=torch.float64) * 0.5
    arrays.clip_(w)
    state = arrays.device_state()
    for _ in range(5):
        x = torch.randn(M, K, dtype=torch.float64) * 3
        d = torch.randn(M, O, dtype=torch.float64) * 3
        rpu_update(w, x, d, torch.randint(0, T, (M,)), 1.0, state, cfg.device, cfg.update)
    assert (w <= arrays.w_max).all() and (w >= arrays.w_min).all()
    assert (w == arrays.w_max).any() and (w == arrays.w_min).any()   # large steps saturate


def test_rows_update_only_their_array_in_order():
    torch.manual_seed(5)
    T, O, K, M = 4, 3, 5, 300  # several blocks of rows in the CPU kernel
    w = torch.zeros(T, O, K, dtype=torch.float64)
    tile = torch.randint(-1, 2, (M,))                 # arrays 2 and 3 get no row
    x = torch.randn(M, K, dtype=torch.float64)
    d = torch.randn(M, O, dtype=torch.float64)
    state = ideal_state((T, O, K), 1e-3)
    dev, up = ConstantStepDevice(dw_min=1e-3, dw_min_std=0.2), UpdateParameters()
    rpu_update(w, x, d, tile, 0.05, state, dev, up, seed=torch.tensor([9]))
    assert (w[2:] == 0).all() and (w[:2] != 0).any()
    # Deterministic under a seed, whatever the thread count.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        w1 = torch.zeros_like(w)
        rpu_update(w1, x, d, tile, 0.05, state, dev, up, seed=torch.tensor([9]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(w, w1)
    # Rows of array -1 change nothing: dropping them gives the same result.
    keep = tile >= 0
    w2 = torch.zeros_like(w)
    rpu_update(w2, x, d, torch.where(keep, tile, -1), 0.05, state, dev, up, seed=torch.tensor([9]))
    assert torch.equal(w, w2)


def test_device_to_device_draws_have_the_configured_spread():
    torch.manual_seed(6)
    cfg = RPUConfig()
    a = AnalogArrays(cfg, (4, 64, 64))
    dev = cfg.device
    assert a.dw_up.mean().item() == pytest.approx(dev.dw_min, rel=0.02)
    assert (a.dw_up / dev.dw_min).std().item() == pytest.approx(dev.dw_min_dtod, rel=0.05)
    assert a.w_max.mean().item() == pytest.approx(dev.w_max, rel=0.02)
    assert (a.w_min / dev.w_min).std().item() == pytest.approx(dev.w_min_dtod, rel=0.05)
    assert (a.w_max >= a.w_min).all() and (a.dw_down >= 0).all()


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


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    w = torch.randn(2, 3, 4, device=device)
    x = torch.randn(6, 4, device=device)
    tile = torch.tensor([0, 1, -1, 0, 1, 1], device=device)
    seed = torch.tensor([7], device=device)
    args = IOParameters().op_args()
    torch.library.opcheck(torch.ops.rapa.analog_mvm, (x, w, tile, seed, False, *args.values()))
    state = [torch.full_like(w, 1e-3), torch.full_like(w, 1e-3), -torch.ones_like(w),
             torch.ones_like(w)]
    torch.library.opcheck(torch.ops.rapa.rpu_update,
                          (w, x, torch.randn(6, 3, device=device), tile, *state, seed, 0.01,
                           1e-3, 0.3, 31, True, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_match_the_cpu_ones():
    torch.manual_seed(8)
    T, O, K, M = 3, 16, 40, 300
    w = torch.randn(T, O, K) * 0.3
    x, d = torch.randn(M, K), torch.randn(M, O)
    tile = torch.randint(-1, T, (M,))
    seed = torch.tensor([11])
    cfg = RPUConfig()
    y_cpu = analog_mvm(x, w, tile, cfg.forward, seed=seed)
    y_gpu = analog_mvm(x.cuda(), w.cuda(), tile.cuda(), cfg.forward, seed=seed.cuda())
    # The same counter-based draws: equal up to the products' rounding (and an ADC step where
    # that rounding crosses one).
    assert ((y_gpu.cpu() - y_cpu).abs() > 1e-3).float().mean() < 0.01
    arrays = AnalogArrays(cfg, (T, O, K))
    state = arrays.device_state()
    w_cpu, w_gpu = w.clone(), w.cuda()
    rpu_update(w_cpu, x, d, tile, 0.01, state, cfg.device, cfg.update, seed=seed)
    rpu_update(w_gpu, x.cuda(), d.cuda(), tile.cuda(), 0.01,
               {k: v.cuda() for k, v in state.items()}, cfg.device, cfg.update, seed=seed.cuda())
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, rtol=1e-5, atol=1e-6)
