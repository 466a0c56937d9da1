"""The net builder (rapa/net.py) and the layer contract: paths, phase rules, loss weights,
labels, blob sharing between nets, fed inputs, frozen blobs, and the layers' answers."""
import math
import re

import pytest
import torch

from datasets import random_images, write_lmdb
from rapa.errors import RapaError
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.snapshot import load_weights, save_weights

F64 = torch.float64


def net_of(text, phase=pb.TEST, **kwargs):
    return Net(parse_text(text, pb.NetParameter()), phase, **kwargs)


INPUT = ('layer { name: "in" type: "Input" top: "x" top: "label" input_param { '
         'shape { dim: 4 dim: 3 dim: 6 dim: 6 } shape { dim: 4 } } }\n')


def test_paths_start_at_the_working_directory_then_the_prototxt_folder(tmp_path, monkeypatch):
    nets = tmp_path / "nets"
    nets.mkdir()
    write_lmdb(nets / "db", *random_images(4, h=6, w=6))
    (nets / "net.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "x" data_param { source: "db" batch_size: 2 } }')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    net = Net.from_file(nets / "net.prototxt", pb.TRAIN)
    assert net.read_data()["x"].shape == (2, 3, 6, 6)
    net.close()
    (nets / "other.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "x" data_param { source: "nodb" batch_size: 2 } }')
    with pytest.raises(RapaError, match=re.escape(f"layer 'd' data_param.source: nodb not found "
                                                  f"(looked in {elsewhere} and {nets})")):
        Net.from_file(nets / "other.prototxt", pb.TRAIN)
    # Built without a file, relative paths start at the working directory alone.
    with pytest.raises(RapaError, match=f"database {re.escape(str('db'))} does not exist"):
        Net(parse_text('layer { name: "d" type: "Data" top: "x" data_param { source: "db" '
                       'batch_size: 2 } }', pb.NetParameter()), pb.TRAIN)
    (nets / "nameless.prototxt").write_text('layer { type: "ReLU" }')
    with pytest.raises(RapaError, match=re.escape(f"{nets / 'nameless.prototxt'}: a layer of "
                                                  f"type 'ReLU' has no name")):
        Net.from_file(nets / "nameless.prototxt", pb.TEST)


@pytest.mark.parametrize("rule,level,stages,included", [
    ("include { min_level: 1 }", 0, [], False), ("include { min_level: 1 }", 1, [], True),
    ("include { max_level: 0 }", 1, [], False), ("include { max_level: 0 }", 0, [], True),
    ('include { stage: "a" }', 0, ["a"], True), ('include { stage: "a" }', 0, [], False),
    ('include { not_stage: "a" }', 0, ["a"], False), ('include { not_stage: "a" }', 0, [], True),
    ('exclude { stage: "a" }', 0, ["a"], False), ("include { phase: TRAIN }", 0, [], False),
])
def test_net_state_rules(rule, level, stages, included):
    net = net_of(INPUT + f'layer {{ name: "r" type: "ReLU" bottom: "x" top: "y" {rule} }}',
                 level=level, stages=stages)
    assert ("r" in [e.layer.layer_name for e in net.entries]) == included


def test_loss_weights_scale_the_loss():
    text = INPUT + ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "s" '
                    'inner_product_param { num_output: 5 } }\n'
                    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" '
                    'top: "loss" WEIGHT }')
    one, two = net_of(text.replace("WEIGHT", "")), net_of(text.replace("WEIGHT", "loss_weight: 2"))
    two.share_from(one)
    feed = {"x": torch.randn(4, 3, 6, 6), "label": torch.tensor([0, 1, 2, 3])}
    torch.testing.assert_close(two.loss(two(feed)), 2 * one.loss(one(feed)))
    with pytest.raises(RapaError, match="loss_weight needs one value per top"):
        net_of(text.replace("WEIGHT", "loss_weight: 1 loss_weight: 2"))


def test_labels_from_a_net_input_build():
    net = net_of('input: "x" input_shape { dim: 2 dim: 5 } input: "label" input_shape { dim: 2 }\n'
                 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
                 'top: "loss" }')
    assert net.fed_shapes == {"x": (2, 5), "label": (2,)}
    loss = net({"x": torch.zeros(2, 5), "label": torch.tensor([1, 4])})["loss"]
    torch.testing.assert_close(loss, torch.log(torch.tensor(5.0)))


def test_fed_blobs_must_have_the_declared_shape_but_for_the_batch():
    net = net_of(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert net({"x": torch.ones(7, 3, 6, 6), "label": torch.zeros(7)})["y"].shape[0] == 7
    with pytest.raises(RapaError, match=re.escape("blob 'x' is fed with shape (4, 3, 8, 8), but "
                                                  "the net was set up for (4, 3, 6, 6)")):
        net({"x": torch.ones(4, 3, 8, 8), "label": torch.zeros(4)})


def test_sharing_refuses_blobs_of_other_shapes():
    conv = ('layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 2 '
            'dim: {0} dim: {0} }} }} }}\n'
            'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
            'num_output: 3 kernel_size: 3 pad: 1 tiling_param {{ scheme: "random_fixed" '
            'num_tiles: 4 }} }} }}')
    train, same = net_of(conv.format(6), pb.TRAIN), net_of(conv.format(6))
    same.share_from(train)
    assert same.layer("c").module.scheme.partition is train.layer("c").module.scheme.partition
    with pytest.raises(RapaError, match=re.escape("layer 'c' (Convolution): blob 2 has shape "
                                                  "(8, 8) in <net> but (6, 6) in <net>")):
        net_of(conv.format(8)).share_from(train)


def test_a_model_for_another_output_size_is_refused(tmp_path):
    conv = ('layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 2 '
            'dim: {} dim: {} }} }} }}\n'
            'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
            'num_output: 3 kernel_size: 3 pad: 1 tiling_param {{ scheme: "random_fixed" '
            'num_tiles: 4 }} }} }}')
    save_weights(net_of(conv.format(6, 6)), tmp_path / "a.caffemodel")
    for h, w in ((8, 8), (4, 9)):  # more pixels, and as many pixels in another shape
        with pytest.raises(RapaError, match=re.escape(f"layer 'c' blob 2 has shape (6, 6), the "
                                                      f"net's layer wants ({h}, {w})")):
            load_weights(net_of(conv.format(h, w)), tmp_path / "a.caffemodel")
    layer = net_of(conv.format(6, 6)).layer("c")
    with pytest.raises(RapaError, match="has no state blob 1"):
        layer.load_state_blob(1, torch.zeros(6, 6))
    with pytest.raises(RapaError, match=re.escape("state blob 0 has shape (6, 6), the value "
                                                  "given (5, 5)")):
        layer.load_state_blob(0, torch.zeros(5, 5))
    # A partition's entries are tile numbers: 99, 0.5 or NaN would index no tile.
    for bad, shown in ((99.0, "99"), (0.5, "0.5"), (math.nan, "nan"), (-1.0, "-1")):
        value = torch.zeros(6, 6)
        value[2, 3] = bad
        with pytest.raises(RapaError, match=re.escape(
                f"state blob 0: the partition must hold tile numbers 0 to 3, got {shown}")):
            layer.load_state_blob(0, value)
    layer.load_state_blob(0, torch.full((6, 6), 3.0))


def test_a_model_with_nan_weights_is_refused(tmp_path):
    net = net_of(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                 'inner_product_param { num_output: 2 } }')
    with torch.no_grad():
        net.layer("ip").module.weight[0, 1] = math.nan
    save_weights(net, tmp_path / "nan.caffemodel")
    with pytest.raises(RapaError, match=re.escape("nan.caffemodel: layer 'ip' blob 0 holds NaN "
                                                  "or infinite values")):
        load_weights(net, tmp_path / "nan.caffemodel")


def test_legacy_shaped_blobs_load_where_their_shape_is_the_net_s_and_are_refused_elsewhere(
        tmp_path):
    """Old Caffe's 4-D blobs: InnerProduct weights (1, 1, N, K), biases (1, 1, 1, N), legacy
    num/channels/height/width with no `shape`. They load where they are the net's shape but
    for 1s; a legacy shape with the same count of values but other dims (transposed weights,
    a flattened or untiled kernel for a tiled one) is refused, not read in the wrong order."""
    ip = net_of(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                'inner_product_param { num_output: 2 } }')
    conv = net_of(INPUT + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                  'convolution_param { num_output: 2 kernel_size: 3 tiling_param { '
                  'scheme: "random" num_tiles: 4 } } }')

    def model(name, *blobs):
        m = pb.NetParameter()
        lp = m.layer.add(name=name)
        for (n, c, h, w) in blobs:
            lp.blobs.add(num=n, channels=c, height=h, width=w,
                         data=[float(v) for v in range(n * c * h * w)])
        path = tmp_path / f"{name}_{len(list(tmp_path.iterdir()))}.caffemodel"
        path.write_bytes(m.SerializeToString())
        return path

    load_weights(ip, model("ip", (1, 1, 2, 108), (1, 1, 1, 2)))
    w, b = ip.layer("ip").learnable_blobs()
    assert torch.equal(w, torch.arange(216, dtype=w.dtype).view(2, 108))
    assert torch.equal(b, torch.tensor([0.0, 1.0], dtype=b.dtype))
    for bad, shape in (((1, 1, 108, 2), (1, 1, 108, 2)), ((1, 1, 1, 216), (1, 1, 1, 216))):
        path = model("ip", bad, (1, 1, 1, 2))
        with pytest.raises(RapaError, match=re.escape(
                f"{path}: layer 'ip' blob 0 has shape {shape}, the net's layer wants (2, 108)")):
            load_weights(ip, path)
    for bad in ((8, 3, 3, 3), (1, 4, 2, 81)):  # 216 values, but not (4, 2, 3, 3, 3)
        path = model("c", bad, (1, 1, 1, 8))
        with pytest.raises(RapaError, match=re.escape(
                f"{path}: layer 'c' blob 0 has shape {bad}, the net's layer wants "
                f"(4, 2, 3, 3, 3)")):
            load_weights(conv, path)


def test_a_model_whose_layer_has_a_bias_where_the_net_s_has_none_says_so(tmp_path):
    with_bias = net_of(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                       'inner_product_param { num_output: 2 } }')
    without = net_of(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 2 bias_term: false } }')
    save_weights(with_bias, tmp_path / "b.caffemodel")
    save_weights(without, tmp_path / "n.caffemodel")
    for net, path, blobs, learn in ((without, "b", 2, 1), (with_bias, "n", 1, 2)):
        with pytest.raises(RapaError, match=re.escape(
                f"{path}.caffemodel: layer 'ip' has {blobs} blobs, the net's layer has {learn} "
                f"learnable (+0 state) (one has a bias and the other not: bias_term, or another "
                f"net's layer of the same name?)")):
            load_weights(net, tmp_path / f"{path}.caffemodel")


def test_param_specs_default_to_caffes():
    net = net_of(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                 'param { lr_mult: 3 } inner_product_param { num_output: 2 } }')
    specs = net.layer("ip").param_specs()
    assert [(s.lr_mult, s.decay_mult) for s in specs] == [(3, 1), (1, 1)]


def test_frozen_blobs_get_no_gradient():
    net = net_of(INPUT + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                 'param { lr_mult: 0 } param { lr_mult: 1 } convolution_param { '
                 'num_output: 2 kernel_size: 1 } }', pb.TRAIN)
    net({"x": torch.randn(4, 3, 6, 6, requires_grad=True), "label": torch.zeros(4)})["y"] \
        .sum().backward()
    weight, bias = net.layer("c").learnable_blobs()
    assert weight.grad is None and bias.grad is not None
    with pytest.raises(RapaError, match=r"layer 'r' \(ReLU\): has 1 param \{ \} entries but "
                                        r"only 0 learnable blob"):
        net_of(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" param { } }')


@pytest.mark.parametrize("text,message", [
    ('layer { name: "r" type: "ReLU" bottom: "x" bottom: "label" top: "y" }',
     "layer 'r' (ReLU): needs 1 bottom blob(s), has 2"),
    ('layer { name: "r" type: "ReLU" bottom: "z" top: "y" }',
     "layer 'r' (ReLU): bottom 'z' is produced by no earlier layer (blobs so far: label, x)"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 2 kernel_size: 1 stride: 1 stride_h: 1 stride_w: 1 } }',
     "layer 'c' (Convolution): give either stride or stride_h/stride_w, not both"),
    ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" top: "z" }',
     "layer 'r' (ReLU): needs 1 top blob(s), has 2"),
    ('layer { name: "i" type: "Input" }', "layer 'i' (Input): needs at least 1 top blob(s), "
                                          "has 0"),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "a" top: "b" '
     'top: "c" }', "layer 'l' (SoftmaxWithLoss): needs 1 to 2 top blob(s), has 3"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 2 } }', "layer 'c' (Convolution): convolution_param.kernel_size must be given"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3 } }',
     "layer 'c' (Convolution): kernel_size takes 1 or 2 values for a 2D layer, got 3"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
     'num_output: 2 weight_filler { type: "nope" } } }',
     "layer 'ip' weight_filler: unknown filler type 'nope'"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_h: 2 '
     'kernel_w: 2 stride_h: 2 } }', "layer 'p' (Pooling): give both stride_h and stride_w"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
     'global_pooling: true stride: 2 } }',
     "layer 'p' (Pooling): global_pooling takes only pad 0 and stride 1"),
    ('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX '
     'kernel_size: 3 pad: 2 } }', "layer 'p' (Pooling): pad (2, 2) is more than half the "
                                  "kernel (3, 3)"),
    ('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
     'softmax_param { axis: 2 } }', "layer 'l' (SoftmaxWithLoss): the labels (bottom 'label', "
                                    "shape (4,)) must hold one label per prediction"),
])
def test_set_up_errors(text, message):
    with pytest.raises(RapaError, match=re.escape(message)):
        net_of(INPUT + text)


def test_layer_parameters_as_caffe_reads_them():
    net = net_of(INPUT + 'layer { name: "in2" type: "Input" top: "x2" input_param { shape { '
                 'dim: 4 dim: 6 dim: 6 } } }\n'
                 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
                 'convolution_param { num_output: 2 kernel_size: 3 kernel_size: 1 pad_h: 1 '
                 'pad_w: 0 bias_term: false } }\n'
                 'layer { name: "one" type: "Convolution" bottom: "x" top: "one" '
                 'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
                 'inner_product_param { num_output: 3 axis: 0 bias_term: false } }\n'
                 'layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "ip2" '
                 'inner_product_param { num_output: 3 } }\n'
                 'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { '
                 'pool: AVE kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride: 1 } }\n'
                 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "c" bottom: "x2" top: "l" }')
    c = net.layer("c").module
    assert c.kernel_size == (3, 1) and c.padding == (1, 0) and c.bias is None
    assert net.blob_shapes["c"] == (4, 2, 6, 6)  # (6 + 2 - 3) + 1, (6 + 0 - 1) + 1
    assert len(net.layer("c").learnable_blobs()) == 1
    assert net.blob_shapes["one"] == (4, 2, 6, 6)
    ip = net.layer("ip").module
    assert ip.weight.shape == (3, 4 * 3 * 6 * 6) and ip.bias is None
    assert len(net.layer("ip").learnable_blobs()) == 1
    assert net.blob_shapes["ip"] == (3,)
    assert torch.all(net.layer("ip2").module.bias == 0)  # Caffe's default filler: constant 0
    assert net.blob_shapes["p"] == (4, 3, 6, 6)
    assert net.blob_shapes["l"] == ()  # (N, 2, 6, 6) scores, (N, 6, 6) labels
    x = torch.randn(4, 3, 6, 6)
    out = net({"x": x, "label": torch.zeros(4), "x2": torch.randint(0, 2, (4, 6, 6))})
    for name, value in out.items():
        assert net.blob_shapes[name] == tuple(value.shape), name
    works = {e.layer.layer_name: e.layer.array_work() for e in net.entries
             if e.layer.array_work() is not None}
    assert (works["ip"].patches, works["ip"].tiles, works["ip"].macs) == (1, 1, 3 * 432)


def test_array_work_of_a_non_square_output():
    net = net_of('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 '
                 'dim: 2 dim: 6 dim: 10 } } }\n'
                 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {'
                 ' num_output: 3 kernel_size: 3 stride: 2 tiling_param { scheme: "random" '
                 'num_tiles: 3 } } }')
    work = net.layer("c").array_work()
    assert (work.patches, work.tiles, work.macs) == (2 * 4, 3, 8 * 2 * 9 * 3)


def test_stochastic_pooling_layer_samples_window_elements_in_training():
    net = net_of('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 '
                 'dim: 3 dim: 4 dim: 4 } } }\n'
                 'layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { '
                 'pool: STOCHASTIC kernel_size: 2 stride: 2 } }', pb.TRAIN)
    net.train()
    x = torch.rand(2, 3, 4, 4) + 0.1
    y = net({"x": x})["y"]
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 2, 2, 4)
    assert ((windows == y.unsqueeze(-1)).sum(-1) >= 1).all()  # each output is one of its pixels
    net.eval()
    expected = (windows * windows).sum(-1) / windows.sum(-1)  # test: sum(w v) / sum(w)
    torch.testing.assert_close(net({"x": x})["y"], expected)
