"""PCM inference (rapa.analog.pcm, rapa.analog.drift, rapa test --drift-time): the statistics of
programming noise, drift exponents and read noise against aihwkit's formulas, drift as a power
law, the differential pair, compensation, and the command."""
import math
import subprocess

import pytest
import torch

from datasets import random_images, write_lmdb
from rapa.analog.drift import ProgrammedNet
from rapa.analog.pcm import PCMLikeNoiseModel, from_pair, parse_overrides, to_pair
from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb

N = 400_000  # devices per statistic: the standard error of a spread is 1/sqrt(2N) = 0.11%


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("g_max,reference,g", [(25.0, 25.0, 10.0), (25.0, 25.0, 25.0),
                                               (50.0, 25.0, 10.0)])
def test_programming_noise_follows_the_fitted_polynomial(g_max, reference, g):
    model = PCMLikeNoiseModel(g_max=g_max, prog_coeff_g_max_reference=reference)
    x = g / g_max
    sigma = (0.26348 + 1.9650 * x - 1.1731 * x * x) * g_max / reference
    programmed = model.program(torch.full((N,), g, dtype=torch.float64), gen())
    assert programmed.mean().item() == pytest.approx(g, abs=4 * sigma / math.sqrt(N))
    assert programmed.std().item() == pytest.approx(sigma, rel=0.005)
    assert PCMLikeNoiseModel(prog_noise_scale=0.5).program(
        torch.full((N,), g, dtype=torch.float64), gen()).std().item() == pytest.approx(
            0.5 * (0.26348 + 1.9650 * g / 25 - 1.1731 * (g / 25) ** 2), rel=0.005)


def test_programming_and_drift_exponents_draw_from_the_given_generator_exactly():
    """The formulas with the generator's own draws (so noise of either sign, dtype and
    device are the documented ones), whatever torch's global generator holds."""
    model = PCMLikeNoiseModel()
    g = torch.tensor([0.0, 2.5, 12.5, 25.0], dtype=torch.float64)
    torch.manual_seed(1)
    programmed = model.program(g, gen(7))
    torch.manual_seed(2)
    assert torch.equal(model.program(g, gen(7)), programmed)
    xi = torch.randn(4, generator=gen(7), dtype=torch.float64)
    x = g / 25.0
    expected = (g + (0.26348 + 1.9650 * x - 1.1731 * x * x) * xi).clamp_min(0.0)
    assert torch.allclose(programmed, expected, rtol=1e-15, atol=1e-15)
    assert programmed.dtype == torch.float64
    nu = model.drift_coefficients(g, gen(8))
    xi = torch.randn(4, generator=gen(8), dtype=torch.float64)
    gr = x.clamp_min(1e-7)
    mu = (-0.0155 * gr.log() + 0.0244).clamp(0.049, 0.1)
    sigma = (-0.0125 * gr.log() - 0.0059).clamp(0.008, 0.045)
    assert torch.allclose(nu, (mu + sigma * xi).abs(), rtol=1e-15, atol=0)
    assert nu.dtype == torch.float64


def test_programming_never_gives_a_negative_conductance():
    programmed = PCMLikeNoiseModel().program(torch.zeros(N, dtype=torch.float64), gen())
    # max(sigma xi, 0): mean sigma / sqrt(2 pi), half of them at 0.
    assert (programmed >= 0).all()
    assert programmed.mean().item() == pytest.approx(0.26348 / math.sqrt(2 * math.pi), rel=0.005)
    assert (programmed == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)


def _folded_normal(mu, sigma):
    """Mean and standard deviation of |X|, X ~ N(mu, sigma^2)."""
    phi = 0.5 * (1 + math.erf(-mu / (sigma * math.sqrt(2))))
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + \
        mu * (1 - 2 * phi)
    return mean, math.sqrt(mu * mu + sigma * sigma - mean * mean)


@pytest.mark.parametrize("g,mu,sigma", [
    (5.0, -0.0155 * math.log(0.2) + 0.0244, -0.0125 * math.log(0.2) - 0.0059),  # no clipping
    (0.025, 0.1, 0.045),        # both clipped above (ln 0.001)
    (25.0, 0.049, 0.008),       # both clipped below (ln 1 = 0)
    (0.0, 0.1, 0.045),          # g/g_max clipped at 1e-7
])
def test_drift_exponents_follow_the_fitted_mean_and_spread(g, mu, sigma):
    nu = PCMLikeNoiseModel().drift_coefficients(torch.full((N,), g, dtype=torch.float64), gen())
    mean, std = _folded_normal(mu, sigma)
    assert nu.mean().item() == pytest.approx(mean, rel=0.002)
    assert nu.std().item() == pytest.approx(std, rel=0.005)
    assert (nu >= 0).all()
    assert torch.equal(PCMLikeNoiseModel(drift_scale=2.0).drift_coefficients(
        torch.full((N,), g, dtype=torch.float64), gen()), 2 * nu)


def test_drift_is_the_identity_at_t0_and_a_power_law_after():
    model = PCMLikeNoiseModel(read_noise_scale=0.0)
    g = torch.tensor([0.0, 1.0, 12.5, 25.0], dtype=torch.float64)
    nu = torch.tensor([0.1, 0.05, 0.07, 0.049], dtype=torch.float64)
    assert torch.equal(model.read(g, nu, 0.0), g)
    for t in (1.0, 3600.0, 365 * 86400.0):
        assert torch.allclose(model.read(g, nu, t), g * ((t + 20.0) / 20.0) ** -nu,
                              rtol=1e-15, atol=0)
    # One year at nu = 0.1 from t0 = 20 s: a factor (1 + 31536000/20)^-0.1.
    assert model.read(g, nu, 365 * 86400.0)[1].item() == pytest.approx(
        (1 + 365 * 86400 / 20) ** -0.05, rel=1e-12)


@pytest.mark.parametrize("g,t", [(10.0, 0.0), (10.0, 86400.0), (2.5, 3600.0)])
def test_read_noise_grows_with_the_log_of_time(g, t):
    model = PCMLikeNoiseModel(drift_scale=0.0)
    reads = model.read(torch.full((N,), g, dtype=torch.float64),
                       torch.zeros(N, dtype=torch.float64), t, gen())
    q_s = min(0.0088 / max((g / 25.0) ** 0.65, 1e-3), 0.2)
    sigma = g * q_s * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
    assert reads.std().item() == pytest.approx(sigma, rel=0.005)
    assert reads.mean().item() == pytest.approx(g, abs=5 * sigma / math.sqrt(N))


def test_read_noise_of_small_conductances_is_capped_and_clipped_at_zero():
    """Below g/g_max = 0.0088^(1/0.65) the 1/f amplitude Q_s is capped at 0.2; reads stay >= 0
    (same draws as the formula's, so the comparison is exact)."""
    g = torch.tensor([0.1, 0.01, 1e-9], dtype=torch.float64).repeat(1000)
    reads = PCMLikeNoiseModel().read(g, torch.full_like(g, 0.06), 3600.0, gen(5))
    xi = torch.randn(g.shape, generator=gen(5), dtype=torch.float64)
    drifted = g * ((3600.0 + 20.0) / 20.0) ** -0.06
    expected = (drifted + drifted * 0.2 * math.sqrt(math.log((3620.0 + 250e-9) / 500e-9)) *
                xi).clamp_min(0.0)
    assert torch.allclose(reads, expected, rtol=1e-12, atol=1e-15)
    assert (reads == 0).any() and (reads > 0).any()


def test_a_differential_pair_holds_the_signed_weight_with_the_largest_at_g_max():
    w = torch.tensor([[[0.5, -0.25], [0.0, 0.125]], [[-2.0, 1.0], [0.5, 0.0]]],
                     dtype=torch.float64)
    g_plus, g_minus, scale = to_pair(w, 25.0)
    assert scale.flatten().tolist() == [50.0, 12.5]
    assert g_plus[0].tolist() == [[25.0, 0.0], [0.0, 6.25]]
    assert g_minus[1].tolist() == [[25.0, 0.0], [0.0, 0.0]]
    assert ((g_plus == 0) | (g_minus == 0)).all()
    assert torch.equal(from_pair(g_plus, g_minus, scale), w)


ANALOG_NET = """
name: "pcm"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.01 }
  data_param { source: "test_lmdb" batch_size: 5 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
    %(conv)s } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } %(ip)s } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    write_lmdb(tmp_path / "test_lmdb", *random_images(20, h=6, w=6, classes=3, seed=1))
    monkeypatch.chdir(tmp_path)
    # No periphery noise: the tests compare passes through the same weights. Two analog
    # layers, the first on 2 arrays (a fixed tiling), with a digital bias between them.
    rpu = 'rpu_param { forward { out_noise: 0 } }'
    (tmp_path / "analog.prototxt").write_text(ANALOG_NET % {
        "conv": 'tiling_param { scheme: "random_fixed" num_tiles: 2 } ' + rpu, "ip": rpu})
    (tmp_path / "digital.prototxt").write_text(ANALOG_NET % {"conv": "", "ip": ""})
    return tmp_path


def _net(workdir, name="analog"):
    torch.manual_seed(0)
    return Net.from_file(str(workdir / f"{name}.prototxt"), pb.TEST, seed=0)


def test_programmed_weights_drift_and_compensation_restores_each_array_s_mean(workdir):
    net = _net(workdir)
    try:
        analog = [b for b in net.learnable() if b.arrays is not None]
        trained = [b.blob.detach().clone() for b in analog]
        trained_scale = [b.arrays.out_scale.clone() for b in analog]
        bias = next(b for b in net.learnable() if b.name == "conv/1").blob.detach().clone()
        quiet = PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0)
        programmed = ProgrammedNet(net, quiet, "analog.prototxt", gen())
        assert [p.weight3.shape[0] for p in programmed.layers] == [2, 1]  # conv's 2 arrays, ip
        programmed.read_at(0.0, "none")
        for b, w in zip(analog, trained):  # no noise, no time: the trained weights
            assert torch.equal(b.blob, w)
        t = 86400.0
        for compensation in ("none", "global"):
            programmed.read_at(t, compensation)
            for p, w, scale in zip(programmed.layers, trained, trained_scale):
                w = w.double().view(p.weight3.shape)
                nu_plus, nu_minus = p.terms[0][1], p.terms[1][1]
                drift = ((t + 20.0) / 20.0) ** -torch.where(w >= 0, nu_plus, nu_minus)
                assert torch.allclose(p.weight3, (w * drift).float(), rtol=1e-6, atol=0)
                assert not torch.allclose(p.weight3, w.float(), rtol=1e-2)  # a day shows
                alpha = (w.abs().mean(dim=(1, 2)) / (w * drift).abs().mean(dim=(1, 2))
                         if compensation == "global" else torch.ones(len(w)))
                assert torch.allclose(p.out_scale, (scale * alpha).float(), rtol=1e-6)
                assert compensation == "none" or (alpha > 1.05).all()
            if compensation == "global":  # each array its own factor
                assert programmed.layers[0].out_scale[0] != programmed.layers[0].out_scale[1]
        programmed.restore()
        for b, w, scale in zip(analog, trained, trained_scale):
            assert torch.equal(b.blob, w) and torch.equal(b.arrays.out_scale, scale)
        assert torch.equal(next(b for b in net.learnable() if b.name == "conv/1").blob, bias)
    finally:
        net.close()


def test_programming_draws_from_the_given_generator(workdir):
    net = _net(workdir)
    try:
        torch.manual_seed(1)
        first = ProgrammedNet(net, PCMLikeNoiseModel(), "analog.prototxt", gen(4))
        torch.manual_seed(2)
        second = ProgrammedNet(net, PCMLikeNoiseModel(), "analog.prototxt", gen(4))
        for a, b in zip(first.layers, second.layers):
            for (g, nu, _), (g2, nu2, _) in zip(a.terms, b.terms):  # G+ and G-
                assert torch.equal(g, g2) and torch.equal(nu, nu2)
        assert not torch.equal(first.layers[0].terms[0][1], first.layers[0].terms[1][1])
        # Reads too (their 1/f noise), and global compensation unless told otherwise.
        torch.manual_seed(3)
        first.read_at(3600.0)
        read = [(p.weight3.clone(), p.out_scale.clone()) for p in first.layers]
        torch.manual_seed(4)
        second.read_at(3600.0)
        for (w, scale), p in zip(read, second.layers):
            assert torch.equal(w, p.weight3) and torch.equal(scale, p.out_scale)
        first.restore()
        assert any(not torch.equal(w, p.weight3) for (w, _), p in zip(read, first.layers))
        second.read_at(3600.0, "none")
        assert any(not torch.equal(scale, p.out_scale) for (_, scale), p in zip(read,
                                                                               second.layers))
    finally:
        net.close()


def test_a_net_without_analog_layers_cannot_be_programmed(workdir):
    net = _net(workdir, "digital")
    try:
        with pytest.raises(RapaError, match="digital.prototxt: the net has no analog layers"):
            ProgrammedNet(net, PCMLikeNoiseModel(), "digital.prototxt")
    finally:
        net.close()


@pytest.mark.parametrize("text,message", [
    ("drift_scale=-1", "--pcm: drift_scale must be finite and >= 0, got -1"),
    ("g_max=0", "--pcm: g_max must be finite and in (0, 1e6] uS, got 0"),
    ("g_max=1e308", "--pcm: g_max must be finite and in (0, 1e6] uS, got 1e+308"),
    ("t_read=100", "--pcm: t_0 (20 s) must be longer than t_read (100 s)"),
    ("g_max=1,g_max=2", "--pcm: g_max is given twice"),
    ("t_0=nan", "--pcm: t_0 must be finite and > 0, got nan"),
    ("gmax=3", "--pcm: 'gmax=3' is not field=value with a field of PCMLikeNoiseModel"),
    ("prog_coeff=1:2", "--pcm: prog_coeff must be 3 finite numbers"),
    ("t_read=fast", "--pcm: t_read='fast' is not a number"),
    ("g_max=1=2", "--pcm: g_max='1=2' is not a number"),
    ("prog_coeff_g_max_reference=0", "--pcm: prog_coeff_g_max_reference must be finite and > 0, "
                                     "got 0"),
    ("t_read=0", "--pcm: t_read must be finite and > 0, got 0"),
    ("t_0=0", "--pcm: t_0 must be finite and > 0, got 0"),
    ("prog_noise_scale=-0.5", "--pcm: prog_noise_scale must be finite and >= 0, got -0.5"),
    ("read_noise_scale=inf", "--pcm: read_noise_scale must be finite and >= 0, got inf"),
])
def test_bad_pcm_fields_are_named(text, message):
    with pytest.raises(RapaError) as e:
        parse_overrides(text, "--pcm")
    assert str(e.value).startswith(message)
    assert parse_overrides("prog_coeff=0:1:0, drift_scale=0", "--pcm").prog_coeff == (0, 1, 0)
    small = parse_overrides("g_max=0.5,prog_coeff_g_max_reference=0.5,t_0=0.5,t_read=0.25,"
                            "prog_noise_scale=0,read_noise_scale=0", "--pcm")  # all allowed
    assert (small.g_max, small.t_0, small.read_noise_scale) == (0.5, 0.5, 0.0)
    # Coefficients given alone were fitted at g_max (aihwkit's rule); the defaults at 25 uS.
    assert parse_overrides("g_max=10,prog_coeff=1:0:0", "--pcm").prog_coeff_g_max_reference == 10
    assert parse_overrides("g_max=10", "--pcm").prog_coeff_g_max_reference == 25


def _rapa(*argv):
    """`rapa ARGV` in this process (its exit status, stdout and stderr)."""
    import contextlib
    import io
    from rapa.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _rapa_test(workdir, *extra):
    from rapa.snapshot import save_weights
    net = _net(workdir)
    save_weights(net, workdir / "w.caffemodel")
    net.close()
    return _rapa("test", "--model", "analog.prototxt", "--weights", "w.caffemodel",
                 "--iterations", "4", "--no-progress", *extra)


def test_rapa_test_reads_the_net_at_each_time(workdir):
    plain = _rapa_test(workdir)
    quiet = _rapa_test(workdir, "--drift-time", "0,1h,1y", "--pcm",
                       "prog_noise_scale=0,read_noise_scale=0,drift_scale=0")
    assert plain.returncode == quiet.returncode == 0, plain.stderr + quiet.stderr
    loss = next(l for l in plain.stdout.splitlines() if l.startswith("loss = "))
    lines = quiet.stdout.splitlines()
    assert [l.split(":")[0] for l in lines[1:]] == ["t = 0 s", "t = 1 h", "t = 1 y"]
    assert all(loss[len("loss = "):] in l for l in lines[1:])  # an ideal device: no change
    drifted = _rapa_test(workdir, "--drift-time", "1y", "--drift-repeats", "3",
                         "--drift-compensation", "none")
    assert drifted.returncode == 0, drifted.stderr
    assert ("PCM programmed 3 time(s) (mean +- standard deviation over them), drift "
            "compensation none") in drifted.stdout
    assert "+-" in drifted.stdout.splitlines()[1]
    # A row depends on its time, the seed and the repeat, not on the other times listed.
    alone = _rapa_test(workdir, "--drift-time", "1d", "--drift-repeats", "2")
    among = _rapa_test(workdir, "--drift-time=1y,0,1d", "--drift-repeats", "2")
    row = alone.stdout.splitlines()[1]
    assert row.startswith("t = 1 d: ") and row in among.stdout.splitlines()
    zero = _rapa_test(workdir, "--drift-time=-0")
    assert zero.stdout.splitlines()[1].startswith("t = 0 s: ")
    voted = _rapa_test(workdir, "--drift-time", "1h", "--votes", "2")
    assert " (majority of 2 votes) = " in voted.stdout.splitlines()[1], voted.stdout + voted.stderr


@pytest.mark.parametrize("extra,message", [
    (["--drift-time", "1week"], "'1week' is not a time"),
    (["--drift-time=-1h"], "'-1h' must be finite and >= 0"),
    (["--pcm", "drift_scale=0"], "--pcm, --drift-repeats and --drift-compensation go with "
                                 "--drift-time"),
    (["--drift-compensation", "none"], "go with --drift-time"),
    (["--drift-time", "1h,60min"], "'60min' repeats a time given before it"),
    (["--drift-time", "1y", "--pcm", "prog_noise_scale=1e300"], "analog.prototxt: conv/0's "
                                                                  "weights read 3.1536e+07 s"),
    (["--drift-time", "1h", "--pcm", "nu=1"], "'nu=1' is not field=value"),
])
def test_rapa_test_drift_options_are_checked(workdir, extra, message):
    r = _rapa_test(workdir, *extra)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_rapa_test_drift_on_a_digital_net_names_it(workdir):
    from rapa.snapshot import save_weights
    net = _net(workdir, "digital")
    save_weights(net, workdir / "d.caffemodel")
    net.close()
    r = _rapa("test", "--model", "digital.prototxt", "--weights", "d.caffemodel",
              "--iterations", "1", "--drift-time", "1h")
    assert r.returncode == 2
    assert r.stderr == ("rapa test: error: digital.prototxt: the net has no analog layers "
                        "(rpu_param, hic_param) to program\n")


def test_the_model_draws_on_the_conductances_device(device):
    """On a GPU every draw comes from that GPU's generator (a CPU generator would fail)."""
    model = PCMLikeNoiseModel()
    g = torch.full((1000,), 10.0, dtype=torch.float64, device=device)
    generator = torch.Generator(device).manual_seed(3)
    nu = model.drift_coefficients(g, generator)
    for out in (model.program(g, generator), nu, model.read(g, nu, 3600.0, generator)):
        assert out.device == g.device and out.dtype == torch.float64
        assert out.std() > 0
