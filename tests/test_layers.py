"""Each layer type against a plain reference, in float64, built through the net builder."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import reference
from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text


def build(layers: str, shape, phase=pb.TEST, label_shape=None):
    """An Input layer feeding x (and label) ahead of `layers`."""
    def dims(s):
        return f'shape {{ {" ".join(f"dim: {d}" for d in s)} }}'
    tops, shapes = 'top: "x"', dims(shape)
    if label_shape is not None:
        tops, shapes = tops + ' top: "label"', shapes + " " + dims(label_shape)
    text = f'layer {{ name: "in" type: "Input" {tops} input_param {{ {shapes} }} }}\n' + layers
    return Net(parse_text(text, pb.NetParameter()), phase).double()


def run(net, x, **more):
    return net({"x": x, **more})


def caffe_pool_reference(x, kernel, stride, pad, method):
    n, c, h, w = x.shape
    ho, wo, windows = reference.caffe_windows(h, w, kernel, stride, pad)
    out = torch.empty(n, c, ho, wo, dtype=x.dtype)
    for (oy, ox), ((h0, h1, w0, w1), count) in windows.items():
        win = x[:, :, h0:h1, w0:w1]
        out[:, :, oy, ox] = win.amax((2, 3)) if method == "MAX" else win.sum((2, 3)) / count
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", [(32, 3, 2, 0), (15, 3, 2, 1), (8, 2, 2, 0),
                                                     (9, 3, 3, 1), (7, 4, 1, 2)])
def test_pooling_caffe_geometry(method, size, kernel, stride, pad):
    net = build(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ '
                f'pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}',
                (2, 3, size, size))
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    y = run(net, x)["y"]
    torch.testing.assert_close(y, caffe_pool_reference(x, (kernel,) * 2, (stride,) * 2,
                                                       (pad,) * 2, method))
    assert net.blob_shapes["y"] == tuple(y.shape)


def test_global_and_mixed_pooling():
    net = build('layer { name: "g" type: "Pooling" bottom: "x" top: "g" pooling_param { '
                'pool: AVE global_pooling: true } }\n'
                'layer { name: "m" type: "Pooling" bottom: "x" top: "m" pooling_param { '
                'pool: MIXED kernel_size: 3 stride: 2 mu: 10 } }', (2, 4, 9, 9))
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    blobs = run(net, x)
    torch.testing.assert_close(blobs["g"], x.mean((2, 3), keepdim=True))
    beta = net.layer("m").module.beta
    torch.testing.assert_close(beta, torch.full((4,), 0.2, dtype=torch.float64))  # 2 / mu
    torch.testing.assert_close(blobs["m"], reference.mixed_pool(x, beta, (3, 3), (2, 2), (0, 0)))


def lrn_reference(x, size, alpha, beta, k, within):
    n, c, h, w = x.shape
    half = (size - 1) // 2
    out = torch.empty_like(x)
    if within:
        xp = F.pad(x * x, (half, half, half, half))
        for y in range(h):
            for xx in range(w):
                s = xp[:, :, y:y + size, xx:xx + size].sum((2, 3)) / size ** 2
                out[:, :, y, xx] = x[:, :, y, xx] * (1 + alpha * s) ** -beta
    else:
        for ch in range(c):
            lo, hi = max(0, ch - half), min(c, ch + half + 1)
            s = (x[:, lo:hi] ** 2).sum(1)
            out[:, ch] = x[:, ch] * (k + alpha / size * s) ** -beta
    return out


@pytest.mark.parametrize("region", ["WITHIN_CHANNEL", "ACROSS_CHANNELS"])
def test_lrn(region):
    net = build(f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ '
                f'local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: {region} }} }}',
                (2, 5, 6, 7))
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64) * 2
    torch.testing.assert_close(run(net, x)["y"],
                               lrn_reference(x, 3, 0.5, 0.75, 2.0, region == "WITHIN_CHANNEL"))


def test_convolution_untiled_is_conv2d_and_caffe_shaped():
    net = build('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
                ' num_output: 6 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "xavier" }'
                ' bias_filler { type: "constant" value: 0.5 } } }', (2, 3, 9, 9))
    layer = net.layer("c").module
    assert tuple(layer.weight.shape) == (6, 3, 3, 3)  # Caffe's blob shape
    torch.testing.assert_close(layer.bias, torch.full((6,), 0.5, dtype=torch.float64))
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(run(net, x)["y"], F.conv2d(x, layer.weight, layer.bias, 2, 1))


@pytest.mark.parametrize("scheme,tiles", [("alternate", 4), ("image_overlap", 4),
                                          ("image_pad", 4)])
def test_convolution_tiled(scheme, tiles):
    net = build(f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" '
                f'convolution_param {{ num_output: 5 kernel_size: 5 pad: 2 weight_filler {{ '
                f'type: "gaussian" std: 0.1 }} tiling_param {{ scheme: "{scheme}" num_tiles: '
                f'{tiles} }} }} }}', (2, 3, 8, 8))
    layer = net.layer("c").module
    assert tuple(layer.weight.shape) == (tiles, 5, 3, 5, 5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assignment = layer.scheme.assign(2, 8, 8, training=False, device=x.device)
    region = layer.scheme.region(8, 8, x.device)
    expected = reference.tiled_conv(x, layer.weight, layer.bias, assignment, (1, 1), (2, 2),
                                    region)
    torch.testing.assert_close(run(net, x)["y"], expected)


def test_tiled_replicas_are_drawn_independently():
    net = build('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
                ' num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } '
                'tiling_param { scheme: "random" num_tiles: 3 } } }', (1, 2, 6, 6))
    w = net.layer("c").module.weight
    w = w.detach()
    assert not torch.equal(w[0], w[1]) and abs(float(w.std()) - 1) < 0.2


def test_inner_product_softmax_loss_accuracy():
    net = build('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s" '
                'inner_product_param { num_output: 7 weight_filler { type: "msra" } } }\n'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" '
                'top: "loss" }\n'
                'layer { name: "acc" type: "Accuracy" bottom: "s" bottom: "label" top: "acc" '
                'accuracy_param { top_k: 2 } }', (6, 2, 3, 3), label_shape=(6,))
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    label = torch.randint(0, 7, (6,))
    blobs = run(net, x, label=label)
    ip = net.layer("ip").module
    scores = x.flatten(1) @ ip.weight.t() + ip.bias
    torch.testing.assert_close(blobs["s"], scores)
    torch.testing.assert_close(blobs["loss"], F.cross_entropy(scores, label))
    top2 = scores.topk(2, 1).indices
    torch.testing.assert_close(blobs["acc"], (top2 == label[:, None]).any(1).double().mean())
    assert net.output_names == ["loss", "acc"]
    torch.testing.assert_close(net.loss(blobs), blobs["loss"])


def test_softmax_loss_ignore_label_and_normalization():
    base = ('layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
            'top: "loss" loss_param {{ ignore_label: 1 {} }} }}')
    x = torch.randn(5, 4, 1, 1, dtype=torch.float64)
    label = torch.tensor([0, 1, 2, 1, 3])
    logp = F.log_softmax(x.flatten(1), 1)
    kept = -logp[[0, 2, 4], [0, 2, 3]].sum()
    for norm, divisor in (("", 3), ("normalization: FULL", 5), ("normalization: BATCH_SIZE", 5),
                          ("normalization: NONE", 1)):
        net = build(base.format(norm), (5, 4, 1, 1), label_shape=(5,))
        torch.testing.assert_close(run(net, x, label=label)["loss"], kept / divisor)


# The net is filled in float32, then made float64: a bound is float32's rounding of it.
@pytest.mark.parametrize("kind,check", [
    ("constant { }", lambda w: torch.all(w == 0.25)),
    ("uniform", lambda w: w.min() >= float(torch.tensor(-0.3)) and w.max() <= float(torch.tensor(0.3))
     and w.std() > 0.15),
    ("gaussian", lambda w: abs(float(w.mean()) - 1) < 0.05 and abs(float(w.std()) - 0.5) < 0.05),
    ("xavier", lambda w: float(w.abs().max()) <= float(torch.tensor(math.sqrt(3 / 75))) and
     abs(float(w.std()) - math.sqrt(1 / 75)) < 0.01),
    ("msra", lambda w: abs(float(w.std()) - math.sqrt(2 / 75)) < 0.01),
])
def test_fillers(kind, check):
    params = {"constant { }": 'type: "constant" value: 0.25',
              "uniform": 'type: "uniform" min: -0.3 max: 0.3',
              "gaussian": 'type: "gaussian" mean: 1 std: 0.5',
              "xavier": 'type: "xavier"', "msra": 'type: "msra"'}[kind]
    net = build(f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" '
                f'convolution_param {{ num_output: 400 kernel_size: 5 weight_filler {{ {params} }}'
                f' }} }}', (1, 3, 5, 5))
    assert check(net.layer("c").module.weight.detach())  # fan_in = 3 * 5 * 5 = 75


def test_relu_dropout_in_place_and_phases():
    text = ('layer { name: "r" type: "ReLU" bottom: "x" top: "x" relu_param { '
            'negative_slope: 0.1 } }\n'
            'layer { name: "d" type: "Dropout" bottom: "x" top: "x" include { phase: TRAIN } '
            'dropout_param { dropout_ratio: 0.5 } }\n'
            'layer { name: "e" type: "ReLU" bottom: "x" top: "y" exclude { phase: TRAIN } }')
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    test_net = build(text, (4, 3, 8, 8), pb.TEST)
    assert [e.layer.layer_name for e in test_net.entries] == ["in", "r", "e"]
    torch.testing.assert_close(run(test_net, x)["y"], F.relu(F.leaky_relu(x, 0.1)))
    train_net = build(text, (4, 3, 8, 8), pb.TRAIN)
    train_net.train()
    out = run(train_net, x)["x"]
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * F.leaky_relu(x, 0.1)[kept])
    assert 0.3 < kept.double().mean() < 0.7


@pytest.mark.parametrize("text,message", [
    ('layer { name: "c" type: "Convolutio" bottom: "x" top: "y" }',
     "unknown type 'Convolutio'; known types: Accuracy, BatchNorm, Concat, Convolution, Data"),
    ('layer { name: "c" type: "ReLU" bottom: "z" top: "y" }',
     "layer 'c' (ReLU): bottom 'z' is produced by no earlier layer"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 3 } }\nlayer { name: "a" type: "Accuracy" bottom: "y" bottom: "x" top: "a" }',
     "layer 'a' (Accuracy): the labels (bottom 'x', shape (2, 3, 8, 8)) must hold one label"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 11 } }', "layer 'c' (Convolution): kernel (11, 11) with pad"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 pad: 1 tiling_param { scheme: "alternate" num_tiles: 5 } } }',
     "needs a square number of tiles"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 tiling_param { scheme: "diagonal" num_tiles: 4 } } }',
     "unknown tiling scheme 'diagonal'"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 20 } }',
     "layer 'p' (Pooling): kernel (20, 20) is larger than the padded input"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MIXED '
     'kernel_size: 3 stride: 2 mu: 0 } }', "layer 'p' (Pooling): mu must be finite and > 0"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MIXED '
     'kernel_size: 3 stride: 2 beta_init: inf } }',
     "layer 'p' (Pooling): beta_init must be finite"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 group: 0 } }', "layer 'c' (Convolution): group must be >= 1"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: -1 } } }',
     "layer 'c' weight_filler: gaussian filler needs std >= 0, got -1"),
])
def test_set_up_errors_name_the_layer(text, message):
    with pytest.raises(RapaError, match=re.escape(message)):
        build(text, (2, 3, 8, 8))


ALL_TYPES = """
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param { num_output: 6
  kernel_size: 3 stride: 2 pad: 1 tiling_param { scheme: "random" num_tiles: 3 } } }
layer { name: "c2" type: "Convolution" bottom: "x" top: "c2" convolution_param { num_output: 4
  kernel_h: 3 kernel_w: 5 pad_h: 0 pad_w: 2 dilation: 2 group: 2 } }
layer { name: "c3" type: "Convolution" bottom: "x" top: "c3" convolution_param { num_output: 4
  kernel_size: 3 pad: 1 tiling_param { scheme: "image_pad" num_tiles: 4 } } }
layer { name: "c4" type: "Convolution" bottom: "x" top: "c4" convolution_param { num_output: 3
  kernel_size: 2 tiling_param { scheme: "perforated" num_tiles: 2 } rpu_param { } } }
layer { name: "r" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "pmax" type: "Pooling" bottom: "c1" top: "pmax" pooling_param { pool: MAX
  kernel_size: 3 stride: 2 } }
layer { name: "pave" type: "Pooling" bottom: "c3" top: "pave" pooling_param { pool: AVE
  kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "psto" type: "Pooling" bottom: "c2" top: "psto" pooling_param { pool: STOCHASTIC
  kernel_h: 2 kernel_w: 3 stride: 2 } }
layer { name: "pmix" type: "Pooling" bottom: "c4" top: "pmix" pooling_param { pool: MIXED
  kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "pg" type: "Pooling" bottom: "c3" top: "pg" pooling_param { pool: AVE
  global_pooling: true } }
layer { name: "n1" type: "LRN" bottom: "pave" top: "n1" lrn_param { local_size: 3 } }
layer { name: "n2" type: "LRN" bottom: "pmax" top: "n2" lrn_param { local_size: 3
  norm_region: WITHIN_CHANNEL } }
layer { name: "d" type: "Dropout" bottom: "n2" top: "d" }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param {
  num_output: 5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "n1" top: "ip2" inner_product_param {
  num_output: 7 axis: 2 } }
layer { name: "ip3" type: "InnerProduct" bottom: "pg" top: "ip3" inner_product_param {
  num_output: 5 rpu_param { } } }
layer { name: "sm" type: "Softmax" bottom: "ip2" top: "sm" softmax_param { axis: -1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  top: "prob" }
layer { name: "acc" type: "Accuracy" bottom: "ip3" bottom: "label" top: "acc"
  accuracy_param { top_k: 2 } }
"""


@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
def test_declared_top_shapes_are_the_computed_ones(phase):
    """The net takes every top shape from the layers' answers at set-up; each must be the shape
    the layer's forward then gives."""
    net = build(ALL_TYPES, (2, 4, 10, 10), phase, label_shape=(2,))
    net.train(phase == pb.TRAIN)
    blobs = run(net, torch.randn(2, 4, 10, 10, dtype=torch.float64),
                label=torch.tensor([1, 3]))
    assert len(blobs) == len(net.blob_shapes) == 21
    for name, value in blobs.items():
        assert net.blob_shapes[name] == tuple(value.shape), name
    assert net.blob_shapes["pmax"] == (2, 6, 2, 2) and net.blob_shapes["psto"] == (2, 4, 3, 3)
    assert net.blob_shapes["ip2"] == (2, 4, 7) and net.blob_shapes["loss"] == ()


def test_layer_contract_answers():
    net = build(ALL_TYPES, (2, 4, 10, 10), label_shape=(2,))
    blobs = {b.name: b for b in net.learnable()}
    # Analog arrays hold the weights of c4 and ip3 only; their biases and the rest are digital.
    assert sorted(n for n, b in blobs.items() if b.arrays is not None) == ["c4/0", "ip3/0"]
    assert blobs["c4/0"].arrays is net.layer("c4").module.arrays
    assert blobs["pmix/0"].blob is net.layer("pmix").module.beta
    assert len([n for n in blobs if n.startswith("c1/")]) == 2
    # State blobs: the arrays' four device draws and their scale; none for digital layers.
    assert len(net.layer("c4").state_blobs()) == 5 and net.layer("c1").state_blobs() == []
    assert [e.layer.layer_name for e in net.entries if e.layer.votes] == ["acc"]
    works = {e.layer.layer_name: e.layer.array_work() for e in net.entries
             if e.layer.array_work() is not None}
    assert sorted(works) == ["c1", "c2", "c3", "c4", "ip", "ip2", "ip3"]
    assert (works["c1"].patches, works["c1"].tiles, works["c1"].macs) == (25, 3, 25 * 36 * 6)
    assert net.layer("loss").default_loss_weight == 1
    assert net.layer("acc").label_range() == (5, None)
    assert net.fed_shapes == {"x": (2, 4, 10, 10), "label": (2,)}


def test_blobs_not_fed_are_named():
    net = build('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', (2, 3, 4, 4),
                label_shape=(2,))
    with pytest.raises(RapaError, match=r"layer 'in' \(Input\): no value fed for its tops x, "
                                        r"label"):
        net({})
    with pytest.raises(RapaError, match=r"layer 'in' \(Input\): x fed but not label"):
        net({"x": torch.zeros(2, 3, 4, 4)})


@pytest.mark.parametrize("text,message", [
    ('layer { name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 4 } }',
     r"layer 's' \(Softmax\): softmax_param.axis 4 is out of range for bottom shape "
     r"\(2, 3, 8, 8\)"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 2 axis: -5 } }', r"layer 'ip' \(InnerProduct\): axis -5 is out of range"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 group: 2 } }',
     r"layer 'c' \(Convolution\): group 2 must divide the input channels \(3\)"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { '
     'kernel_size: 1 stride: 3 } }', r"layer 'p' \(Pooling\): a stride larger than the kernel"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 pad: 1 tiling_param { scheme: "image_overlap" '
     'num_tiles: 9 } } }',
     r"layer 'c' \(Convolution\): tiling 'image_overlap' with 9 tiles needs the output sides "
     r"divisible by 3, got 8x8"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 3 kernel_size: 3 rpu_param { device { dw_min: -1 } } } }',
     r"layer 'c' \(Convolution\): rpu_param: device.dw_min must be > 0"),
])
def test_shape_and_setting_mismatches_name_the_layer(text, message):
    with pytest.raises(RapaError, match=message):
        build(text, (2, 3, 8, 8))


@pytest.mark.parametrize("text,field", [
    ('type: "ReLU" relu_param { negative_slope: nan }', "relu_param.negative_slope"),
    ('type: "LRN" lrn_param { alpha: nan }', "lrn_param.alpha"),
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 } param { lr_mult: nan }',
     "param.lr_mult"),
])
def test_nan_in_any_layer_field_is_named(text, field):
    from rapa.layers import make_layer
    param = parse_text(f'name: "l" bottom: "x" top: "y" {text}', pb.LayerParameter())
    with pytest.raises(RapaError, match=re.escape(f"layer 'l' ({param.type}): {field} is nan")):
        make_layer(param, [(1, 2, 4, 4)], pb.TRAIN)


def test_layer_fields_that_set_up_refuses_or_reads_apart():
    """Set-up rules checked in process: num_output 0 or missing; stride_h and stride_w each
    honoured; global_pooling refuses a stride other than 1 (Caffe's PoolingLayer::LayerSetUp);
    one Input shape serves every top; axis errors name their field."""
    for p in ("num_output: 0 kernel_size: 3", "kernel_size: 3"):
        with pytest.raises(RapaError, match="layer 'c'.*num_output must be given and > 0"):
            build(f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" '
                  f'convolution_param {{ {p} }} }}', (1, 2, 6, 6))
    net = build('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
                'num_output: 1 kernel_size: 1 stride_h: 1 stride_w: 2 } }', (1, 2, 6, 6))
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    assert tuple(run(net, x)["y"].shape) == (1, 1, 6, 3)
    for p in ("stride_h: 2 stride_w: 1", "stride_h: 1 stride_w: 2", "stride: 2"):
        with pytest.raises(RapaError, match="global_pooling takes only pad 0 and stride 1"):
            build(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ '
                  f'global_pooling: true {p} }} }}', (1, 2, 6, 6))
    build('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { '
          'global_pooling: true stride_h: 1 stride_w: 1 } }', (1, 2, 6, 6))
    two = Net(parse_text('layer { name: "in" type: "Input" top: "a" top: "b" input_param { '
                         'shape { dim: 2 dim: 3 } } }', pb.NetParameter()), pb.TEST)
    assert two.fed_shapes == {"a": (2, 3), "b": (2, 3)}
    with pytest.raises(RapaError, match="layer 'l'.*softmax_param.axis"):
        build('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "o" '
              'softmax_param { axis: 5 } }', (2, 3), label_shape=(2,))
    with pytest.raises(RapaError, match="layer 'k'.*concat_param.axis"):
        build('layer { name: "k" type: "Concat" bottom: "x" bottom: "x" top: "o" '
              'concat_param { axis: 5 } }', (2, 3))
