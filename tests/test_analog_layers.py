"""Analog Convolution and InnerProduct layers (rpu_param): products, pulsed updates, prototxt,
snapshots and resume."""
import dataclasses
import importlib.util
import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import rapa  # noqa: F401
from rapa.analog import MappingParameters, RPUConfig, from_proto, perfect
from rapa.analog.arrays import AnalogArrays, analog_conv
from rapa.errors import RapaError
from rapa.layers.base import make_layer
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.sgd import SGD
from rapa.snapshot import load_weights, save_weights
from rapa.solver import Solver
from test_solver import NET, SOLVER, weights, workdir  # noqa: F401  (the fixture)


def test_perfect_analog_conv_is_the_dense_conv_with_its_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64)
    tile = torch.randint(-1, 4, (2, 5, 5))
    arrays = AnalogArrays(perfect(), (4, 5, 27)).double()
    out = analog_conv(x, w.view(4, 5, 27), b, tile, (3, 3), (2, 2), (1, 1), arrays)
    ref = rapa.ops.tiled_conv(x, w, b, tile, 2, 1)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    gx, = torch.autograd.grad(out, x, g)
    gx_ref, = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gx_ref)
    assert len(arrays.pending) == 1            # the weight gets pulses, not a gradient
    assert w.grad is None


def _ideal(cfg, dw_min, bound=1e6):
    cfg.device = dataclasses.replace(cfg.device, dw_min=dw_min, dw_min_dtod=0, dw_min_std=0,
                                     up_down_dtod=0, w_max=bound, w_min=-bound, w_max_dtod=0,
                                     w_min_dtod=0)
    return cfg


def test_weight_scaling_maps_each_array_and_computes_the_layers_product():
    torch.manual_seed(3)
    cfg = _ideal(perfect(), 1e-3, bound=0.6)
    cfg.mapping = MappingParameters(weight_scaling_omega=0.6)
    w = torch.randn(4, 5, 3, 3, 3, dtype=torch.float64)
    w *= torch.tensor([1e-4, 1e-2, 1.0, 3.0], dtype=torch.float64).view(4, 1, 1, 1, 1)
    wa = w.clone()
    arrays = AnalogArrays(cfg, (4, 5, 27)).double()
    arrays.map_(wa.view(4, 5, 27))
    # Each array's largest conductance is omega; alpha times the conductances is the weight.
    torch.testing.assert_close(wa.abs().amax(dim=(1, 2, 3, 4)),
                               torch.full((4,), 0.6, dtype=torch.float64))
    torch.testing.assert_close(arrays.out_scale.view(4, 1, 1, 1, 1) * wa, w)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64)
    tile = torch.randint(-1, 4, (2, 5, 5))
    out = analog_conv(x, wa.view(4, 5, 27), b, tile, (3, 3), (2, 2), (1, 1), arrays)
    ref = rapa.ops.tiled_conv(x, w, b, tile, 2, 1)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0],
                               torch.autograd.grad(ref, x, g)[0])


@pytest.mark.parametrize("omega, scale, dw_min, lr", [(0.0, 0.1, 2e-3, 0.01),
                                                      (0.5, 1e-3, 0.25, 5e-3)])
def test_pulsed_update_of_an_ideal_conv_is_sgd_on_average(omega, scale, dw_min, lr):
    # With weight scaling (omega > 0: weights of 1e-3 mapped to conductances of up to 0.5) the
    # arrays' rate is lr / alpha^2, so that alpha times the conductances takes the SGD step.
    torch.manual_seed(4)
    cfg = _ideal(perfect(), dw_min, bound=400 if omega else 1e6)  # omega within [1e-3, 1] w_max
    cfg.mapping = MappingParameters(weight_scaling_omega=omega)
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    w0 = torch.randn(3, 2, 3, 3, dtype=torch.float64) * scale
    g = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    wd = w0.clone().requires_grad_()
    F.conv2d(x, wd, padding=1).backward(g)
    sgd = w0 - lr * wd.grad  # the SGD step of one image at rate lr
    draws = 400
    total = torch.zeros_like(w0)
    for _ in range(draws):
        w = w0.clone()
        arrays = AnalogArrays(cfg, (1, 3, 18)).double()
        arrays.map_(w.view(1, 3, 18))
        w.requires_grad_()  # the weight's backward records the rows for the pulses
        out = analog_conv(x, w.view(1, 3, 18), None, None, (3, 3), (1, 1), (1, 1), arrays)
        out.backward(g)
        arrays.apply_update(w.view(1, 3, 18), lr)
        total += arrays.out_scale * w.detach()
    mean = total / draws
    alpha = w0.abs().max().item() / omega if omega else 1.0
    # No patch asks for more than BL = 31 pulses (nothing truncated); within 5 standard errors,
    # a draw's spread being at most alpha dw_min sqrt(25 patches * BL / 4).
    assert lr * x.max() * g.abs().max() / (alpha * dw_min) < 31
    assert (mean - sgd).abs().max() < 5 * alpha * dw_min * (25 * 31 / 4) ** 0.5 / draws ** 0.5
    assert (mean - w0).abs().max() > 10 * (mean - sgd).abs().max()


def test_rpu_param_in_prototxt_overrides_the_preset():
    msg = parse_text('preset: "rasch_2019" device { dw_min: 0.002 enforce_consistency: false } '
                     'forward { out_noise: 0.1 bound_management: "none" } '
                     'backward { bound_management: "iterative" } '
                     'mapping { weight_range: 0.25 } update { desired_bl: 15 }',
                     pb.RPUParameter())
    cfg = from_proto(msg)
    assert cfg.device.dw_min == pytest.approx(0.002) and cfg.device.up_down_dtod == 0
    assert cfg.device.enforce_consistency is False
    assert cfg.forward.out_noise == pytest.approx(0.1)
    assert cfg.forward.bound_management == "none" and cfg.backward.bound_management == "iterative"
    assert cfg.mapping.weight_range == pytest.approx(0.25)
    # aihwkit 1.1.0: bound management in the forward pass only, consistent devices.
    default = from_proto(pb.RPUParameter())
    assert default.forward.bound_management == "iterative"
    assert default.backward.bound_management == "none"
    assert default.device.enforce_consistency is True and default.mapping.weight_range == 0
    assert cfg.update.desired_bl == 15
    assert from_proto(pb.RPUParameter(preset="rasch_2019")).device.dw_min == 0.00025
    assert from_proto(pb.RPUParameter(preset="rasch_2019")).mapping.weight_scaling_omega == 0.6
    assert from_proto(parse_text("mapping { weight_scaling_omega: 0.3 }", pb.RPUParameter())
                      ).mapping.weight_scaling_omega == pytest.approx(0.3)
    assert from_proto(pb.RPUParameter()).device.dw_min == 0.001
    with pytest.raises(ValueError, match="unknown preset 'x'; known: gokmen_vlasov_2016"):
        from_proto(pb.RPUParameter(preset="x"))


def _layer(text, shape):
    return make_layer(parse_text(text, pb.LayerParameter()), [shape], pb.TRAIN)


def test_bad_rpu_params_name_the_layer():
    from rapa.errors import RapaError
    with pytest.raises(RapaError, match="layer 'c'.*noise_management must be one of none, abs_max"):
        _layer('name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { '
               'num_output: 2 kernel_size: 3 rpu_param { forward { noise_management: "max" } } }',
               (1, 1, 5, 5))
    with pytest.raises(RapaError, match="layer 'c'.*image_pad.*image_overlap"):
        _layer('name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { '
               'num_output: 2 kernel_size: 3 tiling_param { scheme: "image_pad" num_tiles: 4 } '
               'rpu_param { } }', (1, 1, 8, 8))


def test_weights_start_within_the_device_bounds():
    torch.manual_seed(2)
    layer = _layer('name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param {'
                   ' num_output: 20 weight_filler { type: "gaussian" std: 2 } rpu_param { } }',
                   (1, 30))
    a = layer.module.arrays
    w = layer.module.weight.detach().view(1, 20, 30)
    assert (w <= a.w_max).all() and (w >= a.w_min).all() and (w == a.w_max).any()


ANALOG_NET = NET.replace(
    'tiling_param { scheme: "%s" num_tiles: 4 } } }',
    'tiling_param { scheme: "%s" num_tiles: 4 } rpu_param { preset: "rasch_2019" } } }').replace(
    'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }',
    'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } '
    'rpu_param { } } }')


def test_analog_net_trains_saves_and_resumes_exactly(workdir):  # noqa: F811
    assert ANALOG_NET.count("rpu_param") == 2
    (workdir / "net.prototxt").write_text(ANALOG_NET % "random")
    (workdir / "solver.prototxt").write_text(SOLVER % 12)
    path = str(workdir / "solver.prototxt")
    said = []
    straight = Solver(path, say=said.append, progress=False)
    start = {n: w.clone() for n, w in weights(straight).items()}
    straight.solve()
    assert ("Analog weights of conv, ip: pulsed updates at the rate times lr_mult, without "
            "momentum or weight decay (their biases have momentum and weight decay)") in said
    final = weights(straight)
    assert not torch.equal(final["conv/0"], start["conv/0"])     # pulsed updates happened
    arrays = straight.net.layer("conv").module.arrays
    assert (final["conv/0"].view(4, 4, -1) <= arrays.w_max).all()
    for f in (workdir / "snap").iterdir():
        f.unlink()
    Solver(path, max_iter=8, say=lambda m: None, progress=False).solve()
    resumed = Solver(path, say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    for n, w in weights(resumed).items():
        torch.testing.assert_close(w, final[n], rtol=0, atol=0)
    # The arrays' device draws come back with the snapshot, not from the seed.
    again = resumed.net.layer("conv").module.arrays
    for name in ("dw_up", "dw_down", "w_min", "w_max"):
        assert torch.equal(getattr(again, name), getattr(arrays, name))


def test_generated_analog_nets_build():
    torch.manual_seed(0)
    from rapa.net import Net
    from rapa.prototxt import read_text
    for name in ("none_max_rpu", "random_max_rpu"):
        param = read_text(f"prototxt/cifar10/{name}.prototxt", pb.NetParameter())
        for layer in param.layer:
            if layer.type == "Data":  # in-memory batches instead of the LMDB
                layer.type = "Input"
                layer.ClearField("data_param")
                layer.ClearField("transform_param")
                layer.input_param.shape.add(dim=[2, 3, 32, 32])
                layer.input_param.shape.add(dim=[2])
        net = Net(param, pb.TRAIN, source=name)
        blobs = net.learnable()
        assert sum(b.arrays is not None for b in blobs) == 4
        before = [b.blob.detach().clone() for b in blobs]
        out = net({"data": torch.randn(2, 3, 32, 32) * 50, "label": torch.tensor([1, 2])})
        net.loss(out).backward()
        SGD(blobs).step(0.001)
        moved = {b.name: not torch.equal(b.blob.detach(), old) for b, old in zip(blobs, before)}
        # Every digital blob took a step; the analog weights moved by pulses (a stochastic
        # update: a small array may draw no coincidence from two images, so all of them
        # together).
        assert all(moved[b.name] for b in blobs if b.arrays is None), moved
        assert any(moved[b.name] for b in blobs if b.arrays is not None), moved


@pytest.mark.parametrize("field,message", [
    ("device { dw_min: inf }", "device.dw_min must be a finite number, got inf"),
    ("device { w_max: inf }", "device.w_max must be a finite number, got inf"),
    ("forward { max_bm_res: inf }", "forward.max_bm_res must be a finite number, got inf"),
    ("backward { out_noise: -inf }", "backward.out_noise must be a finite number, got -inf"),
    ("backward { out_noise: nan }", "inner_product_param.rpu_param.backward.out_noise is nan"),
    ("forward { max_bm_factor: inf }", "forward.max_bm_factor must be a finite number, got inf"),
    ("forward { max_bm_factor: 0.5 }", "forward: max_bm_factor must be in [1, 1e30], got 0.5"),
    ("device { w_min: 0 w_max: 0 }", "device.w_min and w_max are both 0"),
    ("mapping { weight_scaling_omega: 100 }",
     "mapping.weight_scaling_omega (100.0) must lie within [0.001, 1] times the devices' w_max "
     "(0.6)"),
    ("mapping { weight_scaling_omega: 1e-30 }", "mapping.weight_scaling_omega (1e-30) must lie"),
    ("mapping { weight_scaling_omega: 0.6 weight_range: 1e38 }",
     "mapping.weight_range must be <= 1e6, got 1e+38"),
    ("mapping { weight_range: inf }", "mapping.weight_range must be a finite number, got inf"),
    ("device { w_min: 0.1 }", "device.w_min (0.1) must be <= 0"),
])
def test_rpu_numbers_must_be_finite(field, message):
    from rapa.errors import RapaError
    with pytest.raises(RapaError, match=f"layer 'c'.*{re.escape(message)}"):
        _layer('name: "c" type: "InnerProduct" bottom: "x" top: "c" inner_product_param { '
               f'num_output: 2 rpu_param {{ {field} }} }}', (1, 3))
    _layer('name: "c" type: "InnerProduct" bottom: "x" top: "c" inner_product_param { '
           'num_output: 2 rpu_param { forward { out_bound: inf } } }', (1, 3))  # no bound: fine


def _ip_net(rpu=""):
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
            f'num_output: 1 bias_term: false {rpu} }} }}')
    return Net(parse_text(text, pb.NetParameter()), pb.TEST)


def test_digital_weights_loaded_into_an_analog_layer_are_mapped_like_fillers(tmp_path):
    digital = _ip_net()
    with torch.no_grad():
        digital.layer("ip").module.weight.copy_(torch.tensor([[0.4, -1.5]]))
    save_weights(digital, tmp_path / "digital.caffemodel")
    said = []
    # Without weight scaling (gokmen_vlasov_2016): the weights are conductances, clipped to
    # each device's bounds; the clipping is reported.
    torch.manual_seed(0)
    net = _ip_net('rpu_param { device { w_max_dtod: 0 w_min_dtod: 0 } }')
    load_weights(net, tmp_path / "digital.caffemodel", say=said.append)
    w = net.layer("ip").module.weight.detach()
    torch.testing.assert_close(w, torch.tensor([[0.4, -0.6]]))
    assert said == [f"{tmp_path / 'digital.caffemodel'}: layer 'ip': 1 of 2 digital weights lie "
                    f"beyond their devices' bounds and were clipped (rpu_param: device "
                    f"w_min/w_max, mapping)"]
    # With weight scaling (rasch_2019): the scale comes from the loaded weights, not from the
    # filler's, and the layer computes W x (perfect periphery).
    rasch = ('rpu_param { preset: "rasch_2019" forward { is_perfect: true } '
             'device { w_max_dtod: 0 w_min_dtod: 0 } }')
    net = _ip_net(rasch)
    said.clear()
    load_weights(net, tmp_path / "digital.caffemodel", say=said.append)
    m = net.layer("ip").module
    assert m.arrays.out_scale.item() == pytest.approx(1.5 / 0.6) and not said
    torch.testing.assert_close(m.weight.detach(), torch.tensor([[0.4, -1.5]]) / 2.5)
    x = torch.tensor([[1.0, 1.0], [0.5, -2.0], [0.0, 1.0]])
    torch.testing.assert_close(m(x), x @ torch.tensor([[0.4], [-1.5]]), rtol=1e-6, atol=1e-6)
    # An analog model (conductances, draws and scales) loads as it was saved: no second mapping.
    save_weights(net, tmp_path / "analog.caffemodel")
    again = _ip_net(rasch)
    load_weights(again, tmp_path / "analog.caffemodel", say=said.append)
    for a, b in zip(again.layer("ip").learnable_blobs() + again.layer("ip").state_blobs(),
                    net.layer("ip").learnable_blobs() + net.layer("ip").state_blobs()):
        assert torch.equal(a, b)
    assert not said
    # Conductances beyond their devices' bounds (an edited file) are clipped, with a notice.
    edited = _ip_net(rasch)
    load_weights(edited, tmp_path / "analog.caffemodel")
    with torch.no_grad():
        edited.layer("ip").module.weight.mul_(100)
    save_weights(edited, tmp_path / "edited.caffemodel")
    load_weights(edited, tmp_path / "edited.caffemodel", say=said.append)
    assert said == [f"{tmp_path / 'edited.caffemodel'}: layer 'ip': 2 of 2 conductances lie "
                    f"beyond their devices' bounds and were clipped (rpu_param: device "
                    f"w_min/w_max, mapping)"]
    assert (edited.layer("ip").module.weight.abs() <= 0.6 + 1e-6).all()
    said.clear()
    # Devices of another preset (4 times the step): used, and said.
    load_weights(_ip_net('rpu_param { preset: "rasch_2019" device { dw_min: 0.004 } }'),
                 tmp_path / "analog.caffemodel", say=said.append)
    assert len(said) == 1 and re.search(
        r"layer 'ip': the model's devices step by 0\.000\d+ on average, this net's rpu_param "
        r"says dw_min 0\.004: the model's devices are used, with dw_min 0\.004 for the bit "
        r"length$", said[0]), said
    said.clear()
    # Its scales are the model's: they apply in a net whose rpu_param has no weight scaling.
    unscaled = _ip_net('rpu_param { forward { is_perfect: true } }')
    load_weights(unscaled, tmp_path / "analog.caffemodel", say=said.append)
    torch.testing.assert_close(unscaled.layer("ip").module(x), x @ torch.tensor([[0.4], [-1.5]]),
                               rtol=1e-6, atol=1e-6)
    # Into the digital net it does not fit, and the message says why.
    with pytest.raises(RapaError, match="a model of an analog net holds its arrays' state "
                                        "after the weights: an RPU model loads only into a "
                                        "layer with rpu_param"):
        load_weights(_ip_net(), tmp_path / "analog.caffemodel")


def test_a_tiled_digital_model_loads_into_the_analog_tiled_net(tmp_path):
    # A random_fixed digital model carries its partition but no device draws: accepted, and
    # every array gets its own scale from its own loaded replica.
    conv = ('layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 2 '
            'dim: 6 dim: 6 }} }} }}\n'
            'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
            'num_output: 3 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 1 }} '
            'tiling_param {{ scheme: "random_fixed" num_tiles: 4 }} {} }} }}')
    digital = Net(parse_text(conv.format(""), pb.NetParameter()), pb.TEST)
    analog = Net(parse_text(conv.format('rpu_param { preset: "rasch_2019" }'),
                            pb.NetParameter()), pb.TEST)
    save_weights(digital, tmp_path / "d.caffemodel")
    load_weights(analog, tmp_path / "d.caffemodel", say=lambda text: None)
    w = digital.layer("c").module.weight.detach()
    m = analog.layer("c").module
    alpha = w.abs().amax(dim=(1, 2, 3, 4)) / 0.6
    torch.testing.assert_close(m.arrays.out_scale, alpha)
    clipped = torch.minimum(torch.maximum(w.view(4, 3, 18) / alpha.view(4, 1, 1),
                                          m.arrays.w_min), m.arrays.w_max)
    torch.testing.assert_close(m.weight3().detach(), clipped)
    assert torch.equal(m.scheme.partition, digital.layer("c").module.scheme.partition)


def test_weight_range_leaves_room_for_learning():
    # alpha = max(max |W0|, weight_range) / omega: a filler of std 1e-4 no longer fills the
    # devices' range, and the weights may grow to weight_range before they saturate.
    torch.manual_seed(4)
    cfg = _ideal(perfect(), 1e-3, bound=0.6)
    cfg.mapping = MappingParameters(weight_scaling_omega=0.6, weight_range=0.3)
    w = torch.randn(2, 5, 27, dtype=torch.float64) * torch.tensor([1e-4, 1.0],
                                                                   dtype=torch.float64).view(2, 1, 1)
    arrays = AnalogArrays(cfg, (2, 5, 27)).double()
    wa = w.clone()
    arrays.map_(wa)
    expect = torch.stack([torch.tensor(0.3, dtype=torch.float64), w[1].abs().max()]) / 0.6
    torch.testing.assert_close(arrays.out_scale, expect)
    torch.testing.assert_close(arrays.out_scale.view(2, 1, 1) * wa, w)
    with pytest.raises(ValueError, match="weight_range needs weight_scaling_omega > 0"):
        from_proto(parse_text("mapping { weight_range: 0.3 }", pb.RPUParameter()))
    with pytest.raises(ValueError, match="weight_range must be >= 0"):
        from_proto(parse_text('preset: "rasch_2019" mapping { weight_range: -1 }',
                              pb.RPUParameter()))


def test_analog_reach_counts_the_weights_beyond_the_arrays(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "analog_reach", pathlib.Path(__file__).parents[1] / "tools" / "analog_reach.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    net = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
           'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
           'num_output: 2 bias_term: false weight_filler { type: "constant" value: 0.1 } %s } }')
    (tmp_path / "analog.prototxt").write_text(net % (
        'rpu_param { preset: "rasch_2019" device { w_max_dtod: 0 w_min_dtod: 0 } }'))
    digital = Net(parse_text(net % "", pb.NetParameter()), pb.TEST)
    # alpha = 0.1 / 0.6 from the filler: reach +-0.1 (4 of 8 beyond); with weight_range 0.3,
    # +-0.3 (1 of 8).
    with torch.no_grad():
        digital.layer("ip").module.weight.copy_(torch.tensor([[0.05, 0.2, -0.2, 0.25],
                                                              [0.0, 0.1, -0.1, 0.5]]))
    save_weights(digital, tmp_path / "fp.caffemodel")
    args = (str(tmp_path / "analog.prototxt"), str(tmp_path / "fp.caffemodel"))
    assert tool.reach(*args, None, 1)[0].startswith("ip: 50.0% of the weights beyond reach")
    assert tool.reach(*args, 0.3, 1)[0].startswith("ip: 12.5% of the weights beyond reach")
    analog = Net(parse_text((tmp_path / "analog.prototxt").read_text(), pb.NetParameter()),
                 pb.TEST)
    save_weights(analog, tmp_path / "analog.caffemodel")
    with pytest.raises(RapaError, match="layer 'ip' holds analog arrays' device blobs"):
        tool.reach(args[0], str(tmp_path / "analog.caffemodel"), None, 1)
    with torch.no_grad():
        digital.layer("ip").module.weight[0, 0] = math.nan
    save_weights(digital, tmp_path / "nan.caffemodel")
    with pytest.raises(RapaError, match="layer 'ip' weights hold NaN or infinite values"):
        tool.reach(args[0], str(tmp_path / "nan.caffemodel"), None, 1)
    (tmp_path / "digital.prototxt").write_text(net % "")
    with pytest.raises(RapaError, match="digital.prototxt: has no layer with rpu_param"):
        tool.reach(str(tmp_path / "digital.prototxt"), args[1], None, 1)


@pytest.mark.parametrize("index, value, message", [
    (0, -1e-3, "dw_up must be >= 0 (device enforce_consistency)"),
    (2, 0.1, "w_min must be <= 0 (device enforce_consistency)"),
    (3, math.nan, "w_max must be finite"),
    (4, 0.0, "out_scale (the arrays' digital scales) must be > 0"),
    (4, -2.0, "out_scale (the arrays' digital scales) must be > 0"),
])
def test_damaged_device_blobs_in_a_model_are_refused(tmp_path, index, value, message):
    # State blobs after the weight: dw_up, dw_down, w_min, w_max, out_scale.
    layer = _ip_net('rpu_param { preset: "rasch_2019" }').layer("ip")
    blob = layer.state_blobs()[index].clone()
    blob.view(-1)[0] = value
    with pytest.raises(RapaError, match=re.escape(f"state blob {index}: {message}")):
        layer.load_state_blob(index, blob)
    layer.load_state_blob(index, layer.state_blobs()[index].clone())  # a sound one loads
    if math.isfinite(value):  # a model file carrying it: the file, layer and blob are named
        net = _ip_net('rpu_param { preset: "rasch_2019" }')
        net.layer("ip").state_blobs()[index].view(-1)[0] = value
        save_weights(net, tmp_path / "bad.caffemodel")
        with pytest.raises(RapaError, match=re.escape(
                f"bad.caffemodel: layer 'ip' blob {index + 1} (state blob {index}): {message}")):
            load_weights(_ip_net('rpu_param { preset: "rasch_2019" }'), tmp_path / "bad.caffemodel")


def test_config_limits_are_inclusive_where_documented():
    # Each check at its edge: the limit itself is accepted, the next value refused, and the
    # message names where (from_proto's `where`, "rpu_param" by default).
    from rapa.analog import ConstantStepDevice, IOParameters, RPUConfig, UpdateParameters
    from rapa.analog.config import describe
    RPUConfig(forward=IOParameters(out_noise=0.0, max_bm_factor=1.0),
              update=UpdateParameters(desired_bl=64)).check()
    RPUConfig(update=UpdateParameters(desired_bl=1)).check()
    for bad, message in ((IOParameters(out_bound=0.0), "forward: out_bound must be > 0"),
                         (IOParameters(inp_bound=0.0), "forward: inp_bound must be > 0"),
                         (IOParameters(max_bm_factor=0.99), "forward: max_bm_factor must be in [1, 1e30]")):
        with pytest.raises(ValueError, match=re.escape(f"layer 'x': {message}")):
            RPUConfig(forward=bad).check("layer 'x'")
    with pytest.raises(ValueError, match=re.escape("layer 'x': update.desired_bl must be in "
                                                   "[1, 64], got 65")):
        RPUConfig(update=UpdateParameters(desired_bl=65)).check("layer 'x'")
    with pytest.raises(ValueError, match=re.escape("layer 'x': mapping.weight_range must be >= "
                                                   "0, got -1.0")):
        RPUConfig(mapping=MappingParameters(weight_scaling_omega=0.6, weight_range=-1.0)
                  ).check("layer 'x'")
    with pytest.raises(ValueError, match=re.escape("rpu_param: update.desired_bl must be in")):
        from_proto(parse_text("update { desired_bl: 0 }", pb.RPUParameter()))
    with pytest.raises(ValueError, match=re.escape("rpu_param: backward: out_noise must be >= 0")):
        RPUConfig(backward=IOParameters(out_noise=-0.5)).check()
    assert IOParameters(is_perfect=True).op_args() == dict(
        inp_step=0.0, inp_bound=math.inf, out_step=0.0, out_bound=math.inf, out_noise=0.0,
        noise_management=False, bound_management=False, max_bm_factor=1.0)
    lines = describe(RPUConfig(device=ConstantStepDevice(dw_min=0.002))).split("\n")
    assert len(lines) == 5 and lines[0].startswith("device: dw_min=0.002, dw_min_dtod=0.3")
    assert lines[4] == "mapping: weight_scaling_omega=0.0, weight_range=0.0"


def test_untiled_analog_conv_with_bias_and_uneven_padding_is_the_dense_conv():
    torch.manual_seed(5)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) + 1.0
    arrays = AnalogArrays(perfect(), (1, 4, 27)).double()
    out = analog_conv(x, w.view(1, 4, 27), b, None, (3, 3), (1, 2), (2, 1), arrays)
    torch.testing.assert_close(out, F.conv2d(x, w, b, stride=(1, 2), padding=(2, 1)))


@pytest.mark.parametrize("scheme,tiles", [("none", 1), ("image_overlap", 4), ("alternate", 4),
                                          ("random_fixed", 4), ("random", 4),
                                          ("perforated", 4)])
def test_an_analog_conv_is_given_its_schemes_capacity(monkeypatch, scheme, tiles):
    """What keeps the CUDA path off the host: every scheme's tile_capacity (the first
    random_fixed call too, whose partition is drawn then) reaches analog_conv, and bounds the
    patches any array gets; training and test."""
    from rapa.nn import TiledConv2d
    import rapa.nn.conv
    seen = []
    real = rapa.nn.conv.analog_conv

    def recording(x, weight3, bias, tile, *args):
        seen.append((tile, args[-1]))
        return real(x, weight3, bias, tile, *args)
    monkeypatch.setattr(rapa.nn.conv, "analog_conv", recording)
    torch.manual_seed(0)
    conv = TiledConv2d(2, 3, 3, padding=1, tiling=scheme, num_tiles=tiles,
                       rpu_config=RPUConfig())
    x = torch.randn(3, 2, 8, 8)
    for training in (True, False):
        conv.train(training)
        conv(x)
        tile, capacity = seen[-1]
        assert capacity == conv.scheme.tile_capacity(3, 8, 8, training=training)
        counts = (torch.bincount(tile[tile >= 0].flatten(), minlength=tiles) if tile is not None
                  else torch.tensor([3 * 64]))
        assert 0 < counts.max() <= capacity


def test_analog_products_are_laid_out_for_a_known_capacity(monkeypatch):
    """The rows path (the CUDA one, run here on the CPU) and an analog Linear hand
    rapa.analog_mvm the capacity in both directions: the tiling's, or every row where one
    array takes them all."""
    import rapa.analog.arrays as arrays_module
    from rapa.analog.arrays import _rows_analog_conv
    from rapa.nn import Linear
    seen = []
    real = arrays_module.analog_mvm

    def recording(rows, *args, **kwargs):
        seen.append((rows.shape[0], kwargs.get("tile_capacity"), kwargs.get("transposed", False)))
        return real(rows, *args, **kwargs)
    monkeypatch.setattr(arrays_module, "analog_mvm", recording)
    torch.manual_seed(1)
    lin = Linear(6, 4, rpu_config=RPUConfig())
    lin(torch.randn(5, 6, requires_grad=True)).sum().backward()
    assert seen == [(5, 5, False), (5, 5, True)]
    seen.clear()
    arrays = AnalogArrays(RPUConfig(), (3, 4, 2 * 9))
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    w = (torch.randn(3, 4, 18) * 0.2).requires_grad_()
    tile = torch.randint(0, 3, (2, 6, 6))
    for t, capacity, want in ((tile, 40, 40), (None, None, 72)):
        _rows_analog_conv(x, w, None, t, (6, 6), (3, 3), (1, 1), (1, 1), arrays,
                          capacity).sum().backward()
        assert seen == [(72, want, False), (72, want, True)]
        seen.clear()


def test_the_notice_of_analog_updates_names_what_their_biases_have(workdir):  # noqa: F811
    (workdir / "net.prototxt").write_text(ANALOG_NET % "random")
    assert "momentum: 0.9" in SOLVER % 1
    (workdir / "solver.prototxt").write_text((SOLVER % 1).replace("momentum: 0.9", ""))
    said = []
    Solver(str(workdir / "solver.prototxt"), say=said.append, progress=False).solve()
    assert ("Analog weights of conv, ip: pulsed updates at the rate times lr_mult, without "
            "momentum or weight decay (their biases have weight decay)") in said
