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
    beta = net.layer("m").beta
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
    layer = net.layer("c")
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
    layer = net.layer("c")
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
    w = net.layer("c").weight
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
    ip = net.layer("ip")
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


@pytest.mark.parametrize("kind,check", [
    ("constant { }", lambda w: torch.all(w == 0.25)),
    ("uniform", lambda w: w.min() >= -0.3 and w.max() <= 0.3 and w.std() > 0.15),
    ("gaussian", lambda w: abs(float(w.mean()) - 1) < 0.05 and abs(float(w.std()) - 0.5) < 0.05),
    ("xavier", lambda w: float(w.abs().max()) <= math.sqrt(3 / 75) and
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
    assert check(net.layer("c").weight.detach())  # fan_in = 3 * 5 * 5 = 75


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
     "unknown type 'Convolutio'; known types: Accuracy, Convolution, Data"),
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
     'kernel_size: 3 stride: 2 beta_init: nan } }',
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
