"""The layers of residual nets (BatchNorm, Scale, Eltwise, Concat, Flatten) against float64
references that follow Caffe's definitions (batch_norm_layer.cpp, scale_layer.cpp,
eltwise_layer.cpp, concat_layer.cpp, flatten_layer.cpp), built through the net builder."""
import re

import pytest
import torch

from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.snapshot import load_weights, save_weights

F64 = torch.float64
# The prototxt's floats are float32, in Caffe as here.
EPS, MAF = float(torch.tensor(1e-3, dtype=torch.float32)), float(torch.tensor(0.9,
                                                                            dtype=torch.float32))


def build(layers, shapes, phase=pb.TRAIN):
    """Input layers x0, x1, ... of `shapes` ahead of `layers`, in float64."""
    inputs = "".join(f'layer {{ name: "in{i}" type: "Input" top: "x{i}" input_param {{ shape {{ '
                     f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for i, s in enumerate(shapes))
    net = Net(parse_text(inputs + layers, pb.NetParameter()), phase).double()
    net.train(phase == pb.TRAIN)
    return net


# -- BatchNorm ----------------------------------------------------------------------------------


def caffe_batch_norm(x, blobs, maf, eps, use_global):
    """Caffe's BatchNorm forward: (y, updated blobs). blobs = [mean_sum, var_sum, factor]."""
    mean_sum, var_sum, factor = (b.clone() for b in blobs)
    c = x.shape[1]
    per_channel = x.transpose(0, 1).reshape(c, -1)
    if use_global:
        s = 0.0 if float(factor[0]) == 0 else 1.0 / float(factor[0])
        mean, var = mean_sum * s, var_sum * s
    else:
        mean = per_channel.mean(1)
        var = ((per_channel - mean[:, None]) ** 2).mean(1)
        m = per_channel.shape[1]
        factor = factor * maf + 1
        mean_sum = mean_sum * maf + mean
        var_sum = var_sum * maf + var * (m / (m - 1) if m > 1 else 1)
    view = (1, c) + (1,) * (x.dim() - 2)
    y = (x - mean.view(view)) / torch.sqrt(var.view(view) + eps)
    return y, [mean_sum, var_sum, factor]


BN = ('layer { name: "bn" type: "BatchNorm" bottom: "x0" top: "y" %s '
      'batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 %s } }')


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 2), (2, 3, 4)])
def test_batch_norm_statistics_over_iterations_then_global(shape):
    net = build(BN % ('param { lr_mult: 0 } ' * 3, ""), [shape])
    layer = net.layer("bn")
    blobs = [torch.zeros(shape[1], dtype=F64), torch.zeros(shape[1], dtype=F64),
             torch.zeros(1, dtype=F64)]
    for it in range(4):
        x = torch.randn(shape, dtype=F64) * (it + 1) + it
        y = net({"x0": x})["y"]
        expected, blobs = caffe_batch_norm(x, blobs, MAF, EPS, False)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        for got, want in zip(layer.state_blobs(), blobs):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert abs(float(blobs[2][0]) - (1 + MAF + MAF ** 2 + MAF ** 3)) < 1e-12
    # The TEST phase's net shares the train net's statistics and normalizes by them.
    test = build(BN % ("", ""), [shape], pb.TEST)
    test.share_from(net)
    x = torch.randn(shape, dtype=F64)
    expected, _ = caffe_batch_norm(x, blobs, MAF, EPS, True)
    before = [b.clone() for b in layer.state_blobs()]
    torch.testing.assert_close(test({"x0": x})["y"], expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(layer.state_blobs(), before):
        assert torch.equal(got, want)  # no update with global statistics


def test_batch_norm_gradients_are_caffes():
    x = torch.randn(3, 4, 5, 5, dtype=F64, requires_grad=True)
    dy = torch.randn(3, 4, 5, 5, dtype=F64)
    net = build(BN % ("", ""), [tuple(x.shape)])
    y = net({"x0": x})["y"]
    (gx,) = torch.autograd.grad(y, x, dy)
    # Caffe: dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means over N, H, W.
    dims = (0, 2, 3)
    var = x.detach().var(dims, unbiased=False, keepdim=True)
    yd = y.detach()
    ref = (dy - dy.mean(dims, keepdim=True) - (dy * yd).mean(dims, keepdim=True) * yd) \
        / torch.sqrt(var + EPS)
    torch.testing.assert_close(gx, ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: net({"x0": t})["y"], (x,))
    # With global statistics the gradient is dy / sqrt(var + eps).
    test = build(BN % ("", "use_global_stats: true"), [tuple(x.shape)], pb.TRAIN)
    stats = test.layer("bn").state_blobs()
    with torch.no_grad():
        stats[0].copy_(torch.tensor([1.0, 2, 3, 4]))
        stats[1].copy_(torch.tensor([4.0, 1, 9, 16]))
        stats[2].fill_(2.0)
    y = test({"x0": x})["y"]
    (gx,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(gx, dy / torch.sqrt(torch.tensor([2.0, 0.5, 4.5, 8.0],
                                                                 dtype=F64) + EPS).view(1, 4, 1, 1))
    assert float(test.layer("bn").state_blobs()[2][0]) == 2.0  # global: nothing accumulated


def test_batch_norm_of_one_value_per_channel_is_zero_as_in_caffe():
    net = build(BN % ("", ""), [(1, 3, 1, 1)])
    x = torch.randn(1, 3, 1, 1, dtype=F64, requires_grad=True)
    y = net({"x0": x})["y"]
    assert torch.equal(y.detach(), torch.zeros_like(y))
    blobs = net.layer("bn").state_blobs()
    torch.testing.assert_close(blobs[0], x.detach().view(3))
    assert torch.equal(blobs[1], torch.zeros(3, dtype=F64))


def test_batch_norm_param_specs_and_blobs_load_from_caffe_shapes(tmp_path):
    with pytest.raises(RapaError, match=r"layer 'bn' \(BatchNorm\): cannot configure batch "
                                        r"normalization statistics as layer parameters"):
        build(BN % ("param { lr_mult: 1 }", ""), [(2, 3, 4, 4)])
    with pytest.raises(RapaError, match="has 4 param"):
        build(BN % ("param { lr_mult: 0 } " * 4, ""), [(2, 3, 4, 4)])
    net = build(BN % ("", ""), [(2, 3, 4, 4)])
    assert net.learnable() == [] and len(net.layer("bn").state_blobs()) == 3
    # A .caffemodel as Caffe writes it, with the legacy 4-D blob shapes of older versions.
    model = pb.NetParameter()
    lp = model.layer.add(name="bn", type="BatchNorm")
    for values in ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [2.0]):
        lp.blobs.add(num=1, channels=len(values), height=1, width=1, data=values)
    path = tmp_path / "caffe.caffemodel"
    path.write_bytes(model.SerializeToString())
    load_weights(net, path)
    torch.testing.assert_close(net.layer("bn").module.global_stats()[0],
                               torch.tensor([0.5, 1.0, 1.5], dtype=F64))
    # A model whose channels differ names the file, the layer and both shapes.
    other = build(BN % ("", ""), [(2, 4, 4, 4)])
    with pytest.raises(RapaError, match=re.escape(f"{path}: layer 'bn' blob 0 has shape "
                                                  f"(1, 3, 1, 1), the net's layer wants (4,)")):
        load_weights(other, path)
    # A layer of the model without blobs: its statistics are missing, not optional (Caffe:
    # "Incompatible number of blobs").
    del model.layer[0].blobs[:]
    path.write_bytes(model.SerializeToString())
    with pytest.raises(RapaError, match=re.escape(f"{path}: layer 'bn' has 0 blobs, the net's "
                                                  f"layer has 0 learnable (+3 state)")):
        load_weights(net, path)


# -- Scale --------------------------------------------------------------------------------------


SCALE = 'layer {{ name: "s" type: "Scale" {bottoms} top: "y" scale_param {{ {p} }} }}'


@pytest.mark.parametrize("p,shape,scale_shape", [
    ("", (2, 3, 4, 5), (3,)),
    ("axis: 2 num_axes: 2", (2, 3, 4, 5), (4, 5)),
    ("axis: 1 num_axes: -1 bias_term: true", (2, 3, 4), (3, 4)),
    ("num_axes: 0 bias_term: true", (2, 3, 4), ()),
    ("axis: -1 bias_term: true filler { type: 'gaussian' std: 1 } "
     "bias_filler { type: 'constant' value: 0.5 }", (2, 3, 4), (4,)),
])
def test_scale_with_a_learned_blob(p, shape, scale_shape):
    net = build(SCALE.format(bottoms='bottom: "x0"', p=p), [shape])
    m = net.layer("s").module
    assert tuple(m.weight.shape) == scale_shape
    if "filler" not in p:
        assert torch.all(m.weight == 1)  # Caffe's default: the identity
    blobs = net.layer("s").learnable_blobs()
    assert len(blobs) == (2 if "bias_term" in p else 1)
    with torch.no_grad():
        for b in blobs:
            b.copy_(torch.randn(b.shape, dtype=F64))
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    axis = {"": 1, "axis: 2 num_axes: 2": 2}.get(p, 1 if "axis: 1" in p else
                                                    2 if "axis: -1" in p else 0)
    if not scale_shape:
        axis = 0
    view = (1,) * axis + scale_shape + (1,) * (len(shape) - axis - len(scale_shape))
    expected = x * m.weight.view(view)
    if m.bias is not None:
        expected = expected + m.bias.view(view)
        if "bias_filler" in p:
            assert float(blobs[1].detach().flatten()[0]) != 0.5  # was overwritten above
    torch.testing.assert_close(net({"x0": x})["y"], expected, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t, *b: net({"x0": t})["y"], (x, *blobs))


def test_scale_filler_and_bias_filler_defaults():
    net = build(SCALE.format(bottoms='bottom: "x0"', p="bias_term: true bias_filler { "
                             "type: 'constant' value: 0.25 }"), [(2, 3, 4)])
    m = net.layer("s").module
    assert torch.all(m.weight == 1) and torch.all(m.bias == 0.25)


@pytest.mark.parametrize("bias", [False, True])
def test_scale_by_a_second_bottom(bias):
    p = "axis: 1 bias_term: true" if bias else "axis: 1"
    net = build(SCALE.format(bottoms='bottom: "x0" bottom: "x1"', p=p), [(2, 3, 4, 5), (3, 4)])
    layer = net.layer("s")
    assert layer.module.weight is None
    assert len(layer.learnable_blobs()) == (1 if bias else 0)
    if bias:
        assert tuple(layer.learnable_blobs()[0].shape) == (3, 4)
        with torch.no_grad():
            layer.learnable_blobs()[0].normal_()
    x = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    s = torch.randn(3, 4, dtype=F64, requires_grad=True)
    expected = x * s.view(1, 3, 4, 1)
    if bias:
        expected = expected + layer.learnable_blobs()[0].view(1, 3, 4, 1)
    torch.testing.assert_close(net({"x0": x, "x1": s})["y"], expected)
    assert torch.autograd.gradcheck(lambda a, b: net({"x0": a, "x1": b})["y"], (x, s))


# -- Eltwise ------------------------------------------------------------------------------------


def eltwise(op, extra="", n=3, shape=(2, 3, 4)):
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return build(f'layer {{ name: "e" type: "Eltwise" {bottoms} top: "y" eltwise_param {{ '
                 f'operation: {op} {extra} }} }}', [shape] * n)


def test_eltwise_sum_with_coefficients():
    xs = [torch.randn(2, 3, 4, dtype=F64, requires_grad=True) for _ in range(3)]
    net = eltwise("SUM", "coeff: 1 coeff: -0.5 coeff: 2")
    feed = {f"x{i}": x for i, x in enumerate(xs)}
    torch.testing.assert_close(net(feed)["y"], xs[0] - 0.5 * xs[1] + 2 * xs[2])
    dy = torch.randn(2, 3, 4, dtype=F64)
    grads = torch.autograd.grad(net(feed)["y"], xs, dy)
    for g, c in zip(grads, (1, -0.5, 2)):
        torch.testing.assert_close(g, c * dy)
    torch.testing.assert_close(eltwise("SUM", n=2)({"x0": xs[0], "x1": xs[1]})["y"],
                               xs[0] + xs[1])


@pytest.mark.parametrize("stable", [True, False])
def test_eltwise_prod_and_its_gradients(stable):
    xs = [torch.randn(2, 3, 4, dtype=F64, requires_grad=True) for _ in range(3)]
    net = eltwise("PROD", f"stable_prod_grad: {str(stable).lower()}")
    feed = {f"x{i}": x for i, x in enumerate(xs)}
    y = net(feed)["y"]
    torch.testing.assert_close(y, xs[0] * xs[1] * xs[2])
    dy = torch.randn(2, 3, 4, dtype=F64)
    grads = torch.autograd.grad(y, xs, dy)
    torch.testing.assert_close(grads[1], dy * xs[0] * xs[2])
    # Where an input is 0 only the stable gradient stays finite (Caffe divides top by it).
    zero = [x.detach().clone().requires_grad_() for x in xs]
    with torch.no_grad():
        zero[1][0, 0, 0] = 0
    g0 = torch.autograd.grad(net({f"x{i}": x for i, x in enumerate(zero)})["y"], zero[1], dy)[0]
    assert torch.isfinite(g0[0, 0, 0]) == stable


def test_eltwise_max_routes_the_gradient_as_caffe_does():
    a = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.0], dtype=F64, requires_grad=True)
    b = torch.tensor([1.0, 1.0, 4.0, 5.0, 0.0], dtype=F64, requires_grad=True)
    c = torch.tensor([0.0, 2.0, 4.0, 6.0, 0.0], dtype=F64, requires_grad=True)
    net = eltwise("MAX", shape=(5,))
    y = net({"x0": a, "x1": b, "x2": c})["y"]
    torch.testing.assert_close(y, torch.tensor([1.0, 2, 4, 6, 0], dtype=F64))
    ga, gb, gc = torch.autograd.grad(y, (a, b, c), torch.ones(5, dtype=F64))
    # Ties: bottom 1 wins against bottom 0 (a > b is false); a later bottom must be larger.
    assert ga.tolist() == [0, 1, 0, 0, 0]
    assert gb.tolist() == [1, 0, 1, 0, 1]
    assert gc.tolist() == [0, 0, 0, 1, 0]
    x = [torch.randn(2, 3, 4, dtype=F64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(
        lambda *t: eltwise("MAX")({f"x{i}": v for i, v in enumerate(t)})["y"], x)


@pytest.mark.parametrize("text,shapes,message", [
    ('layer { name: "e" type: "Eltwise" bottom: "x0" bottom: "x1" top: "y" }',
     [(2, 3, 4, 4), (2, 3, 4, 5)],
     r"layer 'e' \(Eltwise\): input 0 has shape \(2, 3, 4, 4\) but input 1 has shape "
     r"\(2, 3, 4, 5\) \(bottoms 'x0' \(2, 3, 4, 4\), 'x1' \(2, 3, 4, 5\)\)"),
    ('layer { name: "e" type: "Eltwise" bottom: "x0" bottom: "x1" top: "y" eltwise_param { '
     'coeff: 1 } }', [(2, 3), (2, 3)], "takes one coefficient per input: 1 coefficients for 2"),
    ('layer { name: "e" type: "Eltwise" bottom: "x0" bottom: "x1" top: "y" eltwise_param { '
     'operation: PROD coeff: 1 coeff: 2 } }', [(2, 3), (2, 3)], "coeff is for the sum"),
    ('layer { name: "e" type: "Eltwise" bottom: "x0" top: "y" }', [(2, 3)],
     r"layer 'e' \(Eltwise\): needs at least 2 bottom blob\(s\), has 1"),
    ('layer { name: "s" type: "Scale" bottom: "x0" bottom: "x1" top: "y" }',
     [(2, 3, 4), (4,)], r"layer 's' \(Scale\): a scale of shape \(4,\) does not fit an input "
                        r"of shape \(2, 3, 4\) from axis 1"),
    ('layer { name: "s" type: "Scale" bottom: "x0" top: "y" scale_param { axis: 2 '
     'num_axes: 2 } }', [(2, 3, 4)], "a scale over 2 axes from axis 2 extends past"),
    ('layer { name: "c" type: "Concat" bottom: "x0" bottom: "x1" top: "y" }',
     [(2, 3, 4), (2, 3, 5)], r"layer 'c' \(Concat\): input 1 has shape \(2, 3, 5\), which "
                             r"differs from input 0's \(2, 3, 4\) outside axis 1"),
    ('layer { name: "c" type: "Concat" bottom: "x0" top: "y" concat_param { axis: 1 '
     'concat_dim: 1 } }', [(2, 3)], "give either concat_param.axis or concat_dim"),
    ('layer { name: "f" type: "Flatten" bottom: "x0" top: "y" flatten_param { axis: 2 '
     'end_axis: 1 } }', [(2, 3, 4)], "end_axis (1) comes before axis (2)"),
    ('layer { name: "b" type: "BatchNorm" bottom: "x0" top: "y" }', [(5,)],
     "needs a bottom with a channel axis"),
])
def test_bad_residual_layers_name_the_layer(text, shapes, message):
    with pytest.raises(RapaError, match=message if message.startswith("layer") else
                       re.escape(message)):
        build(text, shapes)


def test_eltwise_unknown_operation_is_a_parse_error():
    from rapa.prototxt import parse_text as parse
    with pytest.raises(RapaError, match='Enum type "rapa.EltwiseParameter.EltwiseOp" has no '
                                        'value named DIV'):
        parse('layer { name: "e" type: "Eltwise" eltwise_param { operation: DIV } }',
              pb.NetParameter())


# -- Concat, Flatten ----------------------------------------------------------------------------


def test_concat_and_flatten():
    net = build('layer { name: "c" type: "Concat" bottom: "x0" bottom: "x1" top: "c" '
                'concat_param { axis: -1 } }\n'
                'layer { name: "d" type: "Concat" bottom: "x0" bottom: "x0" top: "d" '
                'concat_param { concat_dim: 0 } }\n'
                'layer { name: "f" type: "Flatten" bottom: "c" top: "f" }\n'
                'layer { name: "g" type: "Flatten" bottom: "c" top: "g" flatten_param { '
                'axis: 0 end_axis: 1 } }', [(2, 3, 4), (2, 3, 1)])
    x0, x1 = torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 3, 1, dtype=F64)
    blobs = net({"x0": x0, "x1": x1})
    torch.testing.assert_close(blobs["c"], torch.cat([x0, x1], 2))
    torch.testing.assert_close(blobs["d"], torch.cat([x0, x0], 0))
    assert blobs["f"].shape == (2, 15) and blobs["g"].shape == (6, 5)
    for name, value in blobs.items():
        assert net.blob_shapes[name] == tuple(value.shape)


# -- Saving and reloading -----------------------------------------------------------------------


def test_saved_and_reloaded_net_gives_identical_outputs(tmp_path):
    text = ('layer { name: "conv" type: "Convolution" bottom: "x0" top: "c" convolution_param {'
            ' num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "msra" }'
            ' } }\n' + BN.replace('"x0" top: "y"', '"c" top: "c"') % ("", "") + '\n'
            'layer { name: "s" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true '
            'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "x0" top: "y" }')
    shape = (2, 4, 5, 5)
    train = build(text, [shape])
    for _ in range(3):
        train({"x0": torch.randn(shape, dtype=F64)})  # accumulates statistics
    path = tmp_path / "net.caffemodel"
    save_weights(train, path)
    model = pb.NetParameter.FromString(path.read_bytes())
    # Blob counts and shapes as Caffe's: no conv bias; BatchNorm (C,), (C,), (1,); Scale (C,)x2.
    assert [(lp.name, [tuple(b.shape.dim) for b in lp.blobs]) for lp in model.layer] == [
        ("conv", [(4, 4, 3, 3)]), ("bn", [(4,), (4,), (1,)]), ("s", [(4,), (4,)])]
    first, second = build(text, [shape], pb.TEST), build(text, [shape], pb.TEST)
    x = torch.randn(shape, dtype=F64)
    test_from_train = build(text, [shape], pb.TEST)
    test_from_train.share_from(train)
    load_weights(first, path)
    load_weights(second, path)
    out = first({"x0": x})["y"]
    assert torch.equal(out, second({"x0": x})["y"])
    assert torch.equal(out, test_from_train({"x0": x})["y"])


# -- A Caffe ResNet, as a Caffe user has it -----------------------------------------------------


def test_caffe_resnet20_prototxt_trains_and_reloads(tmp_path, monkeypatch):
    """tests/caffe/resnet20_cifar10_*.prototxt, written from the facts of a public Caffe CIFAR
    ResNet-20, trains a few iterations with `rapa train`, and its snapshot reloads into a TEST
    net that gives identical outputs twice."""
    import pathlib
    import shutil

    from datasets import random_images, write_lmdb
    from rapa.cli import main
    from rapa.snapshot import load_weights

    root = pathlib.Path(__file__).resolve().parent / "caffe"
    write_lmdb(tmp_path / "cifar10_train_lmdb", *random_images(24))
    write_lmdb(tmp_path / "cifar10_test_lmdb", *random_images(10, seed=1))
    net_text = (root / "resnet20_cifar10_trainval.prototxt").read_text()
    net_text = net_text.replace("batch_size: 128", "batch_size: 8").replace(
        "batch_size: 100", "batch_size: 5")
    (tmp_path / "resnet20_cifar10_trainval.prototxt").write_text(net_text)
    shutil.copy(root / "resnet20_cifar10_solver.prototxt", tmp_path)
    monkeypatch.chdir(tmp_path)
    net = Net.from_file("resnet20_cifar10_trainval.prototxt", pb.TRAIN)
    types = [e.layer.type_name for e in net.entries]
    assert types.count("BatchNorm") == types.count("Scale") == 21 and types.count("Eltwise") == 9
    assert sum(b.blob.numel() for b in net.learnable()) == 272490  # He et al.: 0.27M
    net.close()
    assert main(["train", "--solver", "resnet20_cifar10_solver.prototxt", "--max-iter", "3",
                 "--no-progress"]) == 0
    weights = tmp_path / "resnet20_cifar10_iter_3.caffemodel"
    model = pb.NetParameter.FromString(weights.read_bytes())
    blobs = {lp.name: [tuple(b.shape.dim) for b in lp.blobs] for lp in model.layer}
    assert blobs["first_conv"] == [(16, 3, 3, 3), (16,)]
    assert blobs["group1_block0_proj"] == [(32, 16, 1, 1)]
    assert blobs["group1_block0_proj_bn"] == [(32,), (32,), (1,)]
    assert blobs["group2_block2_conv1_scale"] == [(64,), (64,)]
    stats = pb.BlobProto()
    stats.CopyFrom(model.layer[[lp.name for lp in model.layer].index("first_conv_bn")].blobs[2])
    assert stats.data[0] == pytest.approx(1 + 0.9 + 0.81, rel=1e-6)  # three batches' statistics
    outs = []
    for _ in range(2):
        test = Net.from_file("resnet20_cifar10_trainval.prototxt", pb.TEST)
        assert load_weights(test, weights) == []
        test.eval()
        with torch.no_grad():
            outs.append(test({"data": torch.full((5, 3, 32, 32), 3.0),
                              "label": torch.zeros(5)})["fc"])
        test.close()
    assert torch.equal(outs[0], outs[1]) and torch.isfinite(outs[0]).all()


def test_batch_norm_applies_the_scale_after_it_in_its_own_pass():
    """Caffe's in-place BatchNorm + Scale pair runs as one kernel: the net skips the Scale and
    the BatchNorm applies its weight and bias, with the same numbers and gradients, in both
    phases; where the Scale is not in place (the blob between them may be read), they stay
    apart."""
    pair = (BN.replace('"x0" top: "y"', '"x0" top: "x0"') % ("", "") + '\n'
            'layer { name: "s" type: "Scale" bottom: "x0" top: "x0" scale_param { bias_term: true '
            'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }')
    apart = pair.replace('bottom: "x0" top: "x0" scale_param', 'bottom: "x0" top: "z" '
                         'scale_param') + '\nlayer { name: "e" type: "Eltwise" bottom: "z" ' \
        'bottom: "x0" top: "w" }'
    fused, separate = build(pair, [(3, 4, 5, 5)]), build(apart, [(3, 4, 5, 5)])
    assert [e.absorbed for e in fused.entries] == [False, False, True]
    assert not any(e.absorbed for e in separate.entries)
    separate.share_from(fused)
    x = torch.randn(3, 4, 5, 5, dtype=F64, requires_grad=True)
    out_fused, out_separate = fused({"x0": x})["x0"], separate({"x0": x})["z"]
    torch.testing.assert_close(out_fused, out_separate, rtol=1e-12, atol=1e-12)
    scale = fused.layer("s").module
    grads_fused = torch.autograd.grad(out_fused.sum() * 2, (x, scale.weight, scale.bias))
    grads_separate = torch.autograd.grad(out_separate.sum() * 2, (x, scale.weight, scale.bias))
    for a, b in zip(grads_fused, grads_separate):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The TEST net's pair reads the train net's scale and statistics, tied after set-up.
    test = build(pair, [(3, 4, 5, 5)], pb.TEST)
    test.share_from(fused)
    with torch.no_grad():
        scale.weight.mul_(3)
    mean, var = fused.layer("bn").module.global_stats()
    expected = (x - mean.view(1, 4, 1, 1)) / torch.sqrt(var.view(1, 4, 1, 1) + EPS) \
        * scale.weight.view(1, 4, 1, 1) + scale.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(test({"x0": x})["x0"], expected, rtol=1e-12, atol=1e-12)


def test_a_net_with_batch_norm_resumes_exactly(tmp_path, monkeypatch):
    """The accumulated statistics are in the snapshot: a resumed run ends bit for bit where
    the uninterrupted one does, statistics included."""
    from datasets import random_images, write_lmdb
    from rapa.solver import Solver

    write_lmdb(tmp_path / "train_lmdb", *random_images(40, h=8, w=8, classes=3))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Data" top: "data" top: "label" transform_param { '
        'mirror: true crop_size: 8 pad: 2 scale: 0.01 } data_param { source: "train_lmdb" '
        'batch_size: 4 } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false '
        'weight_filler { type: "msra" } } }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" '
        'batch_norm_param { moving_average_fraction: 0.9 } }\n'
        'layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { '
        'bias_term: true } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "conv" top: "sum" '
        'eltwise_param { coeff: 1 coeff: 0.5 } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { '
        'pool: AVE global_pooling: true } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" '
        'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
        'top: "loss" }')
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" '
        'max_iter: 10 snapshot: 5 snapshot_prefix: "snap/bn" random_seed: 5')

    def state(solver):
        net = solver.net
        return [b.blob.detach().clone() for b in net.learnable()] + \
            [t.clone() for t in net.layer("bn").state_blobs()]

    straight = Solver("solver.prototxt", say=lambda m: None, progress=False)
    straight.solve()
    final = state(straight)
    assert float(final[-1][0]) == pytest.approx(sum(0.9 ** k for k in range(10)), rel=1e-6)
    for f in (tmp_path / "snap").glob("bn_iter_10.*"):
        f.unlink()
    resumed = Solver("solver.prototxt", say=lambda m: None, progress=False)
    resumed.solve(resume="auto")
    for a, b in zip(state(resumed), final):
        assert torch.equal(a, b)


def test_scale_errors_name_the_field():
    with pytest.raises(RapaError, match="layer 's'.*scale_param.axis"):
        build(SCALE.format(bottoms='bottom: "x0"', p="axis: 7"), [(2, 3, 4)])
    with pytest.raises(RapaError, match="layer 's'.*bias_filler"):
        build(SCALE.format(bottoms='bottom: "x0"', p="bias_term: true bias_filler { "
                                                      "type: 'uniform' min: 1 max: 0 }"),
              [(2, 3, 4)])


def test_a_layer_too_large_to_allocate_says_how_large():
    with pytest.raises(RapaError, match=re.escape("layer 'c' (InnerProduct): cannot allocate "
                                                  "98304.0 GiB for its blobs")):
        build('layer { name: "c" type: "InnerProduct" bottom: "x0" top: "y" '
              'inner_product_param { num_output: 2147483647 } }', [(1, 3, 64, 64)])
