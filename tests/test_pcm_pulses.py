"""SET pulses of multi-level PCM (rapa.analog.pcm_pulses, aihwkit's PCMPresetDevice) and HIC's
"pulsed" programming: one pulse against the exponential-step formula replayed in float64, the
statistics of the increments and of the device-to-device draws, the pulse-and-verify loop
against a scalar reference, RESET, and the counts and errors of HIC arrays that use them."""
import dataclasses
import math

import pytest
import torch

import rapa  # noqa: F401
from rapa.analog import HICArrays, HICConfig
from rapa.analog.pcm import PCMLikeNoiseModel
from rapa.analog.pcm_pulses import PCMPresetDevice
from rapa.errors import RapaError
from rapa.layers.base import make_layer
from rapa.proto import pb
from rapa.prototxt import parse_text


def reference_pulse(dev, w, s, b, xi):
    """aihwkit's update_once_complex_noise, up direction, one device (float64 scalars)."""
    z = 2.0 * w / b * dev.a + dev.b
    dw = max(1.0 - dev.A_up * math.exp(dev.gamma_up * z), 0.0) * s
    std = dev.dw_min_std * (abs(dw) + dev.dw_min_std_add + dev.dw_min_std_slope * abs(w))
    return min(max(w + dw + std * xi, 0.0), b)


def test_one_pulse_is_the_exponential_step_with_its_complex_noise():
    w = torch.tensor([0.0, 0.05, 0.4, 1.1, 1.7, 1.95, 0.3], dtype=torch.float64)
    s = torch.tensor([0.01, 0.012, 0.008, 0.01, 0.011, 0.01, 0.01], dtype=torch.float64)
    b = torch.tensor([2.0, 1.9, 2.1, 2.0, 1.8, 1.96, 0.6], dtype=torch.float64)  # one below 1
    # An offset b and a slope a other than -1 (they cannot swap or invert unseen); a positive
    # A_up, whose step clamps at zero near the bottom.
    for dev in (PCMPresetDevice(a=-1.3, b=0.3, gamma_up=2.0), PCMPresetDevice(A_up=1.5)):
        torch.manual_seed(0)  # the generator given is the one used, not torch's
        out = dev.pulse(w, s, b, torch.Generator().manual_seed(3))
        xi = torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        expect = [reference_pulse(dev, *v) for v in zip(w.tolist(), s.tolist(), b.tolist(),
                                                          xi.tolist())]
        torch.testing.assert_close(out, torch.tensor(expect, dtype=torch.float64), rtol=1e-12,
                                   atol=1e-15)
        assert (out <= b).all() and (out >= 0).all()
    steps = PCMPresetDevice(A_up=1.5).mean_step(w, s, b)
    assert steps[0] == 0 and steps[3] > 0  # 1 - 1.5 e^0 < 0 at w = 0: no step there


def test_device_draws_and_reset_replay_their_generator():
    dev = PCMPresetDevice()
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    draws = dev.populate((5,), gen)
    xi = torch.randn((4, 5), generator=torch.Generator().manual_seed(8))
    scale = (0.01 * (1 + 0.2 * xi[0] + 0.05 * xi[1])).abs()
    bound = (2.0 * (1 + 0.1 * xi[2])).abs()
    reset = torch.minimum((0.01 + 0.02 * xi[3]).clamp_min(0), bound)
    torch.testing.assert_close(draws, torch.stack([scale, bound, reset]), rtol=1e-6, atol=0)
    assert (reset > 0).any() and (reset < 0.01).any()  # the spread matters in this draw
    after = torch.Generator().manual_seed(8)
    torch.randn((4, 5), generator=after)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=after))  # 4 x 5
    r = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64)
    b = torch.tensor([2.0, 2.0, 0.51], dtype=torch.float64)
    got = dev.after_reset(r, b, torch.Generator().manual_seed(2))
    xi = torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(got, torch.minimum((r + 0.01 * xi).clamp_min(0), b), rtol=1e-14,
                               atol=0)


def test_the_mean_increment_falls_with_the_state_and_the_draws_match_it():
    dev = PCMPresetDevice()
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    s, b = torch.full((n,), 0.01, dtype=torch.float64), torch.full((n,), 2.0, dtype=torch.float64)
    steps = []
    for state in (0.5, 1.2):
        w = torch.full((n,), state, dtype=torch.float64)
        moved = dev.pulse(w, s, b, gen) - w
        dw = 0.01 * (1 + 27.235 * math.exp(-2.5 * state))  # z = -w at the nominal bound 2
        std = 0.6 * (dw + 0.042 + 0.108 * state)
        assert float(dev.mean_step(w[:1], s[:1], b[:1])) == pytest.approx(dw, rel=1e-12)
        assert float(moved.mean()) == pytest.approx(dw, abs=4 * std / math.sqrt(n))
        assert float(moved.std()) == pytest.approx(std, rel=0.01)
        steps.append(dw)
    assert steps[0] > 3 * steps[1]  # PCM's saturating SET response


def test_device_to_device_draws_follow_aihwkits_populate():
    dev = PCMPresetDevice()
    torch.manual_seed(1)
    scale, bound, reset = dev.populate((400_000,)).double()
    assert float(scale.mean()) == pytest.approx(0.01, rel=0.002)
    assert float(scale.std()) == pytest.approx(0.01 * math.hypot(0.2, 0.05), rel=0.01)
    assert float(bound.mean()) == pytest.approx(2.0, rel=0.002)
    assert float(bound.std()) == pytest.approx(0.2, rel=0.01)
    # RESET states: max(0.01 + 0.02 xi, 0), the mean of a normal clipped at zero.
    mu, sigma = 0.01, 0.02
    a = mu / sigma
    phi, big_phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(a / 2 ** .5))
    assert float(reset.mean()) == pytest.approx(mu * big_phi + sigma * phi, rel=0.01)
    assert float((reset == 0).double().mean()) == pytest.approx(1 - big_phi, abs=0.003)
    assert (reset <= bound).all()


def reference_program(dev, w, target, s, b):
    """The pulse-and-verify loop without noise, one device: (state, pulses)."""
    pulses = 0
    while pulses < dev.max_pulses and w < b:
        step = max(1.0 - dev.A_up * math.exp(dev.gamma_up * (2.0 * w / b * dev.a + dev.b)),
                   0.0) * s
        if target - w <= step / 2:
            break
        w = min(w + step, b)
        pulses += 1
    return w, pulses


def test_pulse_and_verify_matches_a_scalar_loop_and_stops_within_half_a_step():
    quiet = PCMPresetDevice(dw_min_std=0.0, max_pulses=45)
    w = torch.tensor([0.0, 1.5, 0.7, 1.5, 0.2, 1.0], dtype=torch.float64)
    target = torch.tensor([0.667, 2.0, 1.333, 2.0, 0.1, 1.9], dtype=torch.float64)
    s = torch.tensor([0.01, 0.01, 0.012, 0.009, 0.01, 0.01], dtype=torch.float64)
    b = torch.tensor([2.0, 1.9, 2.0, 2.2, 2.0, 2.0], dtype=torch.float64)
    got, pulses = quiet.program(w, target, s, b)
    for i in range(len(w)):
        ref_w, ref_p = reference_program(quiet, float(w[i]), float(target[i]), float(s[i]),
                                         float(b[i]))
        assert float(got[i]) == pytest.approx(ref_w, rel=1e-12) and pulses[i] == ref_p, i
    assert pulses[4] == 0 and got[4] == w[4]   # above its target already: untouched
    assert got[1] == b[1]                      # a target beyond the bound: stops at it
    assert pulses[5] == 45                     # about 0.03 steps from 1.0 to 1.9: the limit
    assert 0 < pulses[0] < pulses[2] < 45      # the state-dependent step: more pulses up high
    # Exactly half a step below the target is close enough: no pulse.
    half = quiet.mean_step(torch.zeros(1, dtype=torch.float64), s[:1], b[:1]) / 2
    assert quiet.program(torch.zeros(1, dtype=torch.float64), half, s[:1], b[:1])[1] == 0
    assert quiet.program(torch.zeros(1, dtype=torch.float64), half * 1.001, s[:1], b[:1])[1] == 1
    # The pulses draw from the generator given.
    noisy = PCMPresetDevice()
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(noisy.program(torch.zeros(50), torch.full((50,), 1.5), torch.full((50,), 0.01),
                                  torch.full((50,), 2.0), torch.Generator().manual_seed(6)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # With noise, over many devices: each stops within half its next mean step, at its bound
    # or at the limit.
    dev = PCMPresetDevice()
    torch.manual_seed(2)
    scale, bound, reset = dev.populate((20_000,))
    target = torch.full((20_000,), 4 / 3)
    got, pulses = dev.program(reset, target, scale, bound, torch.Generator().manual_seed(4))
    stopped = ((target - got) <= dev.mean_step(got, scale, bound) / 2) | (got >= bound) | \
        (pulses == dev.max_pulses)
    assert stopped.all() and pulses.min() >= 1
    assert float(got.mean()) == pytest.approx(4 / 3, abs=0.1)


def test_reset_leaves_the_device_near_its_own_reset_state():
    dev = PCMPresetDevice(reset_std=0.0)
    r, b = torch.tensor([0.0, 0.02, 0.05]), torch.tensor([2.0, 2.0, 0.03])
    assert torch.equal(dev.after_reset(r, b), torch.tensor([0.0, 0.02, 0.03]))
    noisy = PCMPresetDevice().after_reset(torch.full((100_000,), 0.5), torch.full((100_000,), 2.0))
    assert float(noisy.mean()) == pytest.approx(0.5, abs=4e-4)
    assert float(noisy.std()) == pytest.approx(0.01, rel=0.02)


def quiet_pulsed(**fields) -> HICConfig:
    """Pulsed programming without noise or device-to-device spread: deterministic pulses."""
    pulse = PCMPresetDevice(dw_min_std=0.0, dw_min_dtod=0.0, up_down_dtod=0.0, w_max_dtod=0.0,
                            reset_dtod=0.0, reset_std=0.0, reset=0.0)
    cfg = HICConfig(programming="pulsed", pulse=pulse,
                    pcm=PCMLikeNoiseModel(prog_noise_scale=0.0, g_max=24.0), **fields)
    cfg.forward = dataclasses.replace(cfg.forward, is_perfect=True)
    cfg.backward = dataclasses.replace(cfg.backward, is_perfect=True)
    return cfg


def test_pulsed_pairs_climb_by_counted_pulses_and_refresh_from_reset():
    cfg = quiet_pulsed()  # U = 16, 4 levels: level m at m * 2/3 device units, 8 m uS
    a = HICArrays(cfg, (1, 1, 3))
    a._hold(torch.tensor([0.0, 16.0, 48.0]), None, None, fresh=True)
    unit = 24.0 / 2.0
    for col, level in enumerate([0, 1, 3]):
        ref_w, ref_p = reference_program(cfg.pulse, 0.0, level * 2 / 3, 0.01, 2.0)
        assert float(a.g_pair[0, 0, 0, col]) == pytest.approx(ref_w * unit, rel=1e-5)
        assert a.set_count[-2, 0, 0, col] == ref_p  # every pulse counts as a SET
        assert a.reset_count[-2:, 0, 0, col].tolist() == [1, 1]
    assert a.g_pair[1].abs().max() == 0 and a.set_count[-1].sum() == 0  # G- stayed RESET
    # A carry: weight 1 goes from level 1 to 2 on G+, pulsed from where it is.
    g_before, sets = float(a.g_pair[0, 0, 0, 1]), a.set_count.clone()
    a._hold(torch.tensor([32.0]), torch.tensor([1]), None)
    ref_w, ref_p = reference_program(cfg.pulse, g_before / unit, 4 / 3, 0.01, 2.0)
    assert float(a.g_pair[0, 0, 0, 1]) == pytest.approx(ref_w * unit, rel=1e-5)
    assert a.set_count[-2, 0, 0, 1] - sets[-2, 0, 0, 1] == ref_p > 0
    assert torch.equal(a.set_count[:, 0, 0, [0, 2]], sets[:, 0, 0, [0, 2]])  # others untouched
    # Weight 2 from 48 (levels 3, 0) to -16: G- would pass its top level, so the pair is
    # refreshed: both RESET (to 0 here), G- climbs to level 1 from there, G+ stays RESET.
    sets, resets = a.set_count.clone(), a.reset_count.clone()
    a._hold(torch.tensor([-16.0]), torch.tensor([2]), None)
    assert a.levels[:, 0, 0, 2].tolist() == [0, 1] and a.value()[0, 0, 2] == -16
    assert (a.reset_count - resets)[-2:, 0, 0, 2].tolist() == [1, 1]
    ref_w, ref_p = reference_program(cfg.pulse, 0.0, 2 / 3, 0.01, 2.0)
    assert float(a.g_pair[1, 0, 0, 2]) == pytest.approx(ref_w * unit, rel=1e-5)
    assert a.g_pair[0, 0, 0, 2] == 0
    assert (a.set_count - sets)[-2:, 0, 0, 2].tolist() == [0, ref_p]


def test_pulsed_programming_is_configured_from_hic_param_and_its_errors_name_the_field():
    layer = ('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
             'num_output: 3 hic_param { %s } }')
    made = make_layer(parse_text(layer % 'programming: "pulsed" pulse { dw_min: 0.02 '
                                 'max_pulses: 50 A_up: -10 }', pb.LayerParameter()),
                      [(2, 6)], pb.TRAIN)
    cfg = made.module.arrays.config
    assert (cfg.programming, cfg.pulse.dw_min, cfg.pulse.max_pulses, cfg.pulse.A_up) == \
        ("pulsed", 0.02, 50, -10.0)
    assert cfg.pulse.gamma_up == 2.5  # the rest: PCMPresetDevice's
    assert made.module.arrays.state_names()[-1] == "pulse_draws"
    pulsed = 'programming: "pulsed" '
    for field, message in [
            ('programming: "open"', "hic_param: programming must be one of statistical, "
                                    "pulsed, got 'open'"),
            (pulsed + "pulse { dw_min: 0 }", "hic_param: pulse: dw_min must be finite and in "
                                             "(0, 1], got 0"),
            (pulsed + "pulse { max_pulses: 0 }", "hic_param: pulse: max_pulses must be in "
                                                 "[1, 100000], got 0"),
            (pulsed + "pulse { reset: 3 }", "hic_param: pulse: reset must be finite and in "
                                            "[0, w_max)"),
            ("pulse { dw_min: 0.02 }", "hic_param: pulse is given, but programming is "
                                       "'statistical': pulse applies with programming: "
                                       '"pulsed"')]:
        with pytest.raises(RapaError) as e:
            make_layer(parse_text(layer % field, pb.LayerParameter()), [(2, 6)], pb.TRAIN)
        assert str(e.value).startswith("layer 'ip' (InnerProduct): ") and message in str(e.value)


def test_pulse_draws_from_a_model_file_are_checked():
    a = HICArrays(HICConfig(programming="pulsed"), (1, 2, 3))
    index = a.state_names().index("pulse_draws")
    good = a.pulse_draws.clone()
    assert a.state_problem(index, good) is None
    for bad in (good * -1, torch.cat([good[:1], good[1:2] * 0, good[2:]]),
                torch.cat([good[:2], good[1:2] + 1])):
        assert a.state_problem(index, bad) == ("pulse_draws must be >= 0, with bounds > 0 and "
                                               "RESET states within them")


@pytest.mark.parametrize("fields,ok", [
    (dict(dw_min=1.0), True), (dict(dw_min=1.01), False), (dict(w_max=1e3), True),
    (dict(w_max=1.001e3), False), (dict(w_max=0.5, reset=0.0), True), (dict(w_max=0.0), False),
    (dict(gamma_up=100.0), True), (dict(gamma_up=-100.5), False), (dict(a=-100.0), True),
    (dict(a=100.5), False), (dict(b=100.0), True), (dict(b=-101.0), False),
    (dict(A_up=-1e6), True), (dict(A_up=1.0000005e6), False), (dict(dw_min_dtod=10.0), True),
    (dict(dw_min_dtod=10.5), False), (dict(up_down_dtod=0.0), True),
    (dict(up_down_dtod=-0.01), False), (dict(w_max_dtod=10.0), True), (dict(w_max_dtod=11.0),
                                                                       False),
    (dict(dw_min_std=10.0), True), (dict(dw_min_std=-1.0), False),
    (dict(dw_min_std_add=10.0), True), (dict(dw_min_std_add=10.1), False),
    (dict(dw_min_std_slope=10.0), True), (dict(dw_min_std_slope=float("nan")), False),
    (dict(reset_dtod=10.0), True), (dict(reset_dtod=12.0), False), (dict(reset_std=10.0), True),
    (dict(reset_std=float("inf")), False), (dict(reset=0.0), True), (dict(reset=1.99), True),
    (dict(reset=2.0), False), (dict(reset=-0.01), False), (dict(max_pulses=1), True),
    (dict(max_pulses=100000), True), (dict(max_pulses=100001), False),
])
def test_pulse_configuration_edges(fields, ok):
    dev = PCMPresetDevice(**fields)
    if ok:
        dev.check("pulse")
    else:
        name = next(iter(fields))
        rule = {"dw_min": "in (0, 1]", "w_max": "in (0, 1e3]", "gamma_up": "within +-100",
                "a": "within +-100", "b": "within +-100", "A_up": "within +-1e6",
                "reset": "in [0, w_max)", "max_pulses": "in [1, 100000]"}.get(name, "in [0, 10]")
        with pytest.raises(ValueError) as e:
            dev.check("pulse")
        finite = "" if name == "max_pulses" else "finite and "
        assert str(e.value).startswith(f"pulse: {name} must be {finite}{rule}, got ")


def test_pulsed_programming_draws_from_the_given_generator_and_refreshes_only_its_weights():
    cfg = HICConfig(programming="pulsed", pcm=PCMLikeNoiseModel(g_max=24.0))  # noisy pulses
    torch.manual_seed(1)
    base = HICArrays(cfg, (1, 1, 2))
    base._hold(torch.tensor([40.0, 16.0]), None, torch.Generator().manual_seed(0), fresh=True)
    results = []
    for seed in (5, 6):
        a = HICArrays(cfg, (1, 1, 2))
        a.load_state_dict(base.state_dict())
        torch.manual_seed(seed)  # not what the pulses draw from
        # Weight 0: 40 (levels 2, 0) to -40 (M = -3: G- would reach level 5, so refresh);
        # weight 1: 16 (level 1) to 32, G+ climbs from where it is, in the same call.
        a._hold(torch.tensor([-40.0, 32.0]), None, torch.Generator().manual_seed(3))
        results.append(a)
    for name in ("g_pair", "set_count", "reset_count", "levels"):
        assert torch.equal(getattr(results[0], name), getattr(results[1], name)), name
    a = results[0]
    assert a.levels[:, 0, 0, 0].tolist() == [0, 3] and a.levels[:, 0, 0, 1].tolist() == [2, 0]
    assert (a.reset_count - base.reset_count)[-2:, 0, 0].tolist() == [[1, 0], [1, 0]]
    # Without noise, the pulses replayed: weight 1's G+ goes on from its level-1 conductance
    # while weight 0's pair is refreshed in the same call.
    quiet = quiet_pulsed()
    a = HICArrays(quiet, (1, 1, 2))
    a._hold(torch.tensor([40.0, 16.0]), None, None, fresh=True)
    g1, sets = float(a.g_pair[0, 0, 0, 1]), a.set_count.clone()
    a._hold(torch.tensor([-40.0, 32.0]), None, None)
    unit = 24.0 / 2.0
    ref_w, ref_p = reference_program(quiet.pulse, g1 / unit, 4 / 3, 0.01, 2.0)
    assert (a.set_count - sets)[-2, 0, 0, 1] == ref_p > 0
    assert float(a.g_pair[0, 0, 0, 1]) == pytest.approx(ref_w * unit, rel=1e-5)
    ref_w, ref_p = reference_program(quiet.pulse, 0.0, 2.0, 0.01, 2.0)  # G- from RESET to 3
    assert (a.set_count - sets)[-1, 0, 0, 0] == ref_p and a.g_pair[0, 0, 0, 0] == 0


def test_draws_are_magnitudes_and_resets_lie_within_their_bounds():
    torch.manual_seed(0)
    scale, bound, reset = PCMPresetDevice(dw_min_dtod=10.0, w_max_dtod=10.0,
                                          reset=0.5, reset_dtod=1.0).populate((10_000,))
    assert (scale >= 0).all() and (bound >= 0).all() and (reset <= bound).all()
    assert (reset == bound).sum() > 100  # tiny bounds clip their RESET states


def test_levels_out_of_a_pulse_s_reach_are_refused_and_a_stuck_device_stops_pulsing():
    for fields, state in [(dict(w_max=0.05, reset=0.0), "0"),            # one pulse > a level
                          (dict(gamma_up=100.0, A_up=-1e6), "0.01"),      # inf
                          (dict(A_up=1.5), "0.01")]:                      # 0 from RESET
        with pytest.raises(ValueError, match=f"^pulse: a SET pulse at w = {state} steps by "):
            PCMPresetDevice(**fields).check_levels(4, "pulse")
    PCMPresetDevice().check_levels(4, "pulse")
    with pytest.raises(RapaError, match="hic_param: pulse: a SET pulse at w = 0.01"):
        make_layer(parse_text('name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                              'inner_product_param { num_output: 3 hic_param { programming: '
                              '"pulsed" levels: 64 } }', pb.LayerParameter()), [(2, 6)],
                   pb.TRAIN)  # 63 levels: one pulse from RESET (0.28) spans several
    stuck = PCMPresetDevice(A_up=1.5, dw_min_std_add=0.0, max_pulses=100_000)
    w, pulses = stuck.program(torch.zeros(3), torch.ones(3), torch.full((3,), 0.01),
                              torch.full((3,), 2.0))
    assert pulses.tolist() == [0, 0, 0] and w.tolist() == [0, 0, 0]  # no step, no noise


def test_each_device_pulses_with_its_own_draws_and_resets_to_its_own_state():
    # No cycle-to-cycle noise, but device-to-device spread: every device deterministic and
    # different, G+ and G- included.
    pulse = PCMPresetDevice(dw_min_std=0.0, reset_std=0.0, reset=0.02, reset_dtod=0.01)
    cfg = HICConfig(programming="pulsed", pulse=pulse,
                    pcm=PCMLikeNoiseModel(prog_noise_scale=0.0, g_max=24.0))
    torch.manual_seed(4)
    a = HICArrays(cfg, (1, 2, 2))
    a._hold(torch.tensor([40.0, -40.0, 16.0, 0.0]), None, None, fresh=True)
    scale, bound, reset = (d.reshape(2, 4).double() for d in a.pulse_draws)
    assert len(set(scale.flatten().tolist())) == 8  # all devices differ
    unit = 12.0
    for col, (plus, minus) in enumerate([(2, 0), (0, 3), (1, 0), (0, 0)]):
        for dev, level in ((0, plus), (1, minus)):
            start = float(reset[dev, col])
            ref_w, ref_p = (reference_program(pulse, start, level * 2 / 3, float(scale[dev, col]),
                                              float(bound[dev, col])) if level else (start, 0))
            assert float(a.g_pair[dev, 0, col // 2, col % 2]) == pytest.approx(ref_w * unit,
                                                                              rel=1e-5)
            assert a.set_count[-2 + dev, 0, col // 2, col % 2] == ref_p
    # Weight 2 alone (index 2): 16 to 32, its G+ climbs with its own draws.
    g = float(a.g_pair[0, 0, 1, 0]) / unit
    before = a.set_count.clone()
    a._hold(torch.tensor([32.0]), torch.tensor([2]), None)
    ref_w, ref_p = reference_program(pulse, g, 4 / 3, float(scale[0, 2]), float(bound[0, 2]))
    assert float(a.g_pair[0, 0, 1, 0]) == pytest.approx(ref_w * unit, rel=1e-5)
    assert (a.set_count - before)[-2, 0, 1, 0] == ref_p and (a.set_count - before).sum() == ref_p


def test_pulse_draws_edges_and_a_legacy_shaped_blob():
    a = HICArrays(HICConfig(programming="pulsed"), (1, 1, 3))
    index = a.state_names().index("pulse_draws")
    good = a.pulse_draws.clone()
    edge = good.clone()
    edge[2] = edge[1]  # RESET states at their bounds: allowed
    assert a.state_problem(index, edge) is None
    assert a.state_problem(index, good.reshape(1, 3, 2, 1, 1, 3)) is None  # 1s elsewhere
    for rule in range(3):  # each breaks one rule only
        bad = good.clone()
        if rule == 0:
            bad[0, 0, 0, 0, 0] = -0.001                  # a negative step scale
        elif rule == 1:
            bad[1, 0, 0, 0, 0] = bad[2, 0, 0, 0, 0] = 0  # a zero bound (its reset 0 within)
        else:
            bad[2, 1, 0, 0, 2] = bad[1, 1, 0, 0, 2] + 1e-3
        assert a.state_problem(index, bad.reshape(1, 3, 2, 1, 1, 3)) == (
            "pulse_draws must be >= 0, with bounds > 0 and RESET states within them"), rule


def test_a_device_clamped_at_zero_by_its_noise_pulses_on():
    """A device at 0 whose first pulse's noise pushes it below 0 stays at 0 (clamped): it is
    still below its target, and the loop goes on pulsing it, alone as among others."""
    dev = PCMPresetDevice()
    one = torch.ones(1)
    for seed in range(300):
        w, pulses = dev.program(torch.zeros(1), one * 2 / 3, one * 0.01, one * 2.0,
                                torch.Generator().manual_seed(seed))
        assert float(w) > 2 / 3 - 0.3 and pulses >= 1, seed


def test_pulsed_programming_leaves_the_devices_it_does_not_program_bit_for_bit():
    cfg = HICConfig(programming="pulsed", pcm=PCMLikeNoiseModel(g_max=18.18))  # 9.09 uS a unit
    torch.manual_seed(3)
    a = HICArrays(cfg, (1, 8, 50))
    a.map_(torch.randn(1, 8, 50))
    a.g_pair.mul_(1 + 0.01 * torch.rand_like(a.g_pair))  # any conductances (a model file's)
    before = a.g_pair.clone()
    v = a.value().reshape(-1).clone()
    v[7] += 16  # one weight's pair moves
    a._hold(v, None, torch.Generator().manual_seed(0))
    changed = (a.g_pair != before).reshape(2, -1).any(0)
    assert changed[7] and changed.sum() == 1
