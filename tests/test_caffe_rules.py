"""Caffe's exact rules at the edges (ties, ignore_label, top_k, padding, empty batches), each
against a float64 reference written from Caffe's source (BVLC/caffe master,
src/caffe/layers/*.cpp), on a case that a plausible other rule would get wrong."""
import math
import re

import pytest
import torch

from rapa.errors import RapaError
from rapa.nn import Accuracy, SoftmaxWithLoss
from rapa.proto import pb
from test_layers import build, run
from test_residual_layers import build as build_many

F64 = torch.float64
FLT_MIN = torch.finfo(torch.float32).tiny


def close(got, expected):
    expected = torch.as_tensor(expected, dtype=F64)
    assert expected.numel() > 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# -- Accuracy (accuracy_layer.cpp) --------------------------------------------------------------


def caffe_accuracy(scores, labels, top_k=1, ignore=None):
    """AccuracyLayer::Forward_cpu, class axis 1: a hit when fewer than top_k other classes
    score >= the label's score; ignored labels counted nowhere; 0 when nothing counts."""
    rows = scores.movedim(1, -1).reshape(-1, scores.shape[1]).tolist()
    hits = count = 0
    for row, label in zip(rows, labels.reshape(-1).long().tolist()):
        if ignore is not None and label == ignore:
            continue
        better = -1  # the label's own score counts itself
        for v in row:
            better += v >= row[label]
        hits += better < top_k
        count += 1
    return 0.0 if count == 0 else hits / count


def accuracy_net(shape, label_shape, extra=""):
    return build(f'layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
                 f'accuracy_param {{ {extra} }} }}', shape, label_shape=label_shape)


def test_accuracy_tie_at_the_top_k_boundary_counts_against_the_label():
    """accuracy_layer.cpp, AccuracyLayer::Forward_cpu: num_better_predictions counts scores
    >= the label's. Labels 1 and 2 of [2, 1, 1] tie for place 2: both miss at top_k 2 (a
    topk would take one of them, a strictly-greater rule both)."""
    scores = torch.tensor([[2.0, 1, 1], [2, 1, 1], [2, 1, 1], [1, 1, 0]], dtype=F64)
    labels = torch.tensor([1, 2, 0, 0])
    got = run(accuracy_net((4, 3), (4,), "top_k: 2"), scores, label=labels)["acc"]
    close(got, caffe_accuracy(scores, labels, top_k=2))
    assert float(got) == 0.5


def test_accuracy_of_equal_scores_is_zero():
    """accuracy_layer.cpp, AccuracyLayer::Forward_cpu: with every score equal (a net of zero
    weights) every other class ties with the label, so no prediction is a top-1 hit (a rule
    that picks one class of equal rows would hit one of these four labels)."""
    scores, labels = torch.zeros(4, 4, dtype=F64), torch.tensor([0, 1, 2, 3])
    got = run(accuracy_net((4, 4), (4,)), scores, label=labels)["acc"]
    close(got, caffe_accuracy(scores, labels))
    assert float(got) == 0


def test_accuracy_ignore_label_leaves_the_denominator():
    """accuracy_layer.cpp, AccuracyLayer::Forward_cpu: a label equal to ignore_label is
    skipped before ++count; here over a spatial class axis (labels (N, H, W)), ignore_label
    outside the classes."""
    scores = torch.randn(2, 3, 2, 2, dtype=F64)
    labels = torch.tensor([[[0, -1], [2, 1]], [[-1, -1], [1, 0]]])
    got = run(accuracy_net((2, 3, 2, 2), (2, 2, 2), "ignore_label: -1"), scores,
              label=labels)["acc"]
    close(got, caffe_accuracy(scores, labels, ignore=-1))
    hits = caffe_accuracy(scores, labels, ignore=-1) * 5
    assert abs(hits - round(hits)) < 1e-9  # 5 counted, not 8


def test_accuracy_of_nothing_counted_is_zero():
    """accuracy_layer.cpp, AccuracyLayer::Forward_cpu: (count == 0) ? 0 : accuracy / count,
    for an all-ignored batch and for an empty one."""
    scores = torch.randn(3, 4, dtype=F64)
    labels = torch.tensor([2, 2, 2])
    close(run(accuracy_net((3, 4), (3,), "ignore_label: 2"), scores, label=labels)["acc"],
          caffe_accuracy(scores, labels, ignore=2))
    empty, none = torch.zeros(0, 4, dtype=F64), torch.zeros(0)
    close(Accuracy()(empty, none), caffe_accuracy(empty, none))
    close(Accuracy(top_k=2, ignore_label=1)(empty, none), 0.0)


def test_accuracy_nan_scores_never_count_as_better():
    """accuracy_layer.cpp, AccuracyLayer::Forward_cpu: NaN >= s is false, so a NaN score is
    never better, and a label whose own score is NaN has no better prediction: a hit."""
    scores = torch.tensor([[math.nan, 1, 2], [math.nan, 1, 2], [1, math.nan, 0]], dtype=F64)
    labels = torch.tensor([0, 1, 0])
    close(Accuracy()(scores, labels), caffe_accuracy(scores, labels))
    assert float(Accuracy()(scores, labels)) == pytest.approx(2 / 3)


def test_accuracy_per_class_top_is_refused():
    """accuracy_layer.cpp, AccuracyLayer::Reshape: a second top is the per-class accuracy;
    rapa does not give it and says so."""
    with pytest.raises(RapaError, match="per-class accuracy top is not supported"):
        build('layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
              'top: "per_class" }', (3, 4), label_shape=(3,))


# -- SoftmaxWithLoss (softmax_loss_layer.cpp) ---------------------------------------------------


def caffe_softmax_loss(scores, labels, norm, ignore=None):
    """SoftmaxWithLossLayer::Forward_cpu and Backward_cpu (loss weight 1), class axis 1:
    (loss, gradient); -log(max(prob, FLT_MIN)) per counted label, divided by
    get_normalizer's max(1, FULL: outer * inner, VALID: count, BATCH_SIZE: outer, NONE: 1)."""
    prob = torch.softmax(scores, 1)
    rows = prob.movedim(1, -1).reshape(-1, scores.shape[1])
    diff = rows.clone()
    loss, count = 0.0, 0
    for i, label in enumerate(labels.reshape(-1).long().tolist()):
        if ignore is not None and label == ignore:
            diff[i] = 0
            continue
        loss -= math.log(max(float(rows[i, label]), FLT_MIN))
        diff[i, label] -= 1
        count += 1
    outer = scores.shape[0]
    normalizer = max(1, {"FULL": labels.numel(), "VALID": count, "BATCH_SIZE": outer,
                         "NONE": 1}[norm])
    grad = diff.reshape(*scores.shape[:1], *scores.shape[2:], scores.shape[1])
    grad = grad.movedim(-1, 1)
    return loss / normalizer, grad / normalizer


def loss_of(scores, labels, loss_param, ignore=None):
    net = build(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
                f'top: "loss" loss_param {{ {loss_param} }} }}', tuple(scores.shape),
                label_shape=tuple(labels.shape))
    x = scores.clone().requires_grad_()
    loss = run(net, x, label=labels)["loss"]
    return loss, torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize("norm", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_normalization_modes_with_ignore_label(norm):
    """softmax_loss_layer.cpp, SoftmaxWithLossLayer::get_normalizer: FULL divides by every
    prediction (8), VALID by the counted ones (5), BATCH_SIZE by outer_num (2, not N*H*W),
    NONE by 1; the gradient is (prob - onehot) / normalizer, 0 for ignored labels."""
    scores = torch.randn(2, 3, 2, 2, dtype=F64)
    labels = torch.tensor([[[0, 2], [1, 2]], [[2, 1], [0, 0]]])
    loss, grad = loss_of(scores, labels, f"ignore_label: 2 normalization: {norm}")
    want_loss, want_grad = caffe_softmax_loss(scores, labels, norm, ignore=2)
    close(loss, want_loss)
    close(grad, want_grad)


@pytest.mark.parametrize("normalize,norm", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_deprecated_normalize(normalize, norm):
    """softmax_loss_layer.cpp, SoftmaxWithLossLayer::LayerSetUp: without normalization, the
    deprecated normalize: true is VALID and false BATCH_SIZE; normalization wins if both."""
    scores = torch.randn(2, 3, 2, 1, dtype=F64)
    labels = torch.tensor([[[1], [0]], [[2], [0]]])
    close(loss_of(scores, labels, f"ignore_label: 0 normalize: {normalize}")[0],
          caffe_softmax_loss(scores, labels, norm, ignore=0)[0])
    close(loss_of(scores, labels, f"ignore_label: 0 normalize: {normalize} normalization: "
                                  f"FULL")[0], caffe_softmax_loss(scores, labels, "FULL", 0)[0])


@pytest.mark.parametrize("norm", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_of_nothing_counted_is_zero(norm):
    """softmax_loss_layer.cpp, SoftmaxWithLossLayer::get_normalizer: std::max(1, normalizer)
    'prevents NaNs': an all-ignored batch has loss 0 and gradient 0 (VALID: 0 / max(1, 0)),
    and so has an empty batch in every mode."""
    scores, labels = torch.randn(3, 4, dtype=F64), torch.tensor([1, 1, 1])
    loss, grad = loss_of(scores, labels, f"ignore_label: 1 normalization: {norm}")
    want_loss, want_grad = caffe_softmax_loss(scores, labels, norm, ignore=1)
    close(loss, want_loss)
    close(grad, want_grad)
    mode = {"FULL": "full", "VALID": "valid", "BATCH_SIZE": "batch_size", "NONE": "none"}[norm]
    empty = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    loss = SoftmaxWithLoss(normalization=mode)(empty, torch.zeros(0))
    close(loss, caffe_softmax_loss(empty.detach(), torch.zeros(0), norm)[0])
    assert torch.autograd.grad(loss, empty)[0].shape == (0, 4)


def test_softmax_loss_is_capped_at_minus_log_flt_min():
    """softmax_loss_layer.cpp, SoftmaxWithLossLayer::Forward_cpu: loss -= log(max(prob,
    FLT_MIN)), so a hopeless prediction adds -log(FLT_MIN) = 87.34 (not 200); Backward_cpu
    ignores the cap: the gradient is still prob - 1."""
    scores = torch.tensor([[0.0, 200.0], [1.0, 0.0]], dtype=F64)
    labels = torch.tensor([0, 1])
    loss, grad = loss_of(scores, labels, "")
    want_loss, want_grad = caffe_softmax_loss(scores, labels, "VALID")
    close(loss, want_loss)
    close(grad, want_grad)
    assert float(loss.detach()) < 50 and float(grad[0, 0]) == pytest.approx(-0.5)


# -- Pooling (pooling_layer.cpp) ----------------------------------------------------------------


def caffe_pool(x, kernel, stride, pad, method):
    """PoolingLayer::Reshape (CEIL; one less where the last window starts at or past
    size + pad, when padded) and Forward_cpu: MAX over the window's pixels only (from
    -FLT_MAX), AVE divided by the window clipped to size + pad, not to the image."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    out = []
    for size, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw)):
        o = math.ceil((size + 2 * p - k) / s) + 1
        if (ph or pw) and (o - 1) * s >= size + p:
            o -= 1
        out.append(o)
    y = torch.empty(n, c, *out, dtype=x.dtype)
    for oy in range(out[0]):
        for ox in range(out[1]):
            hs, ws = oy * sh - ph, ox * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            pool_size = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            y[:, :, oy, ox] = win.amax((2, 3)) if method == "MAX" else \
                win.sum((2, 3)) / pool_size
    return y


def pool(x, method, params):
    net = build(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ '
                f'pool: {method} {params} }} }}', tuple(x.shape))
    y = run(net, x)["y"]
    assert net.blob_shapes["y"] == tuple(y.shape)
    return y


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("hw,kernel,stride,pad,out_hw", [
    ((4, 4), (3, 3), (2, 2), (1, 1), (3, 3)),   # ceil: floor would give 2
    ((5, 5), (2, 2), (2, 2), (1, 1), (3, 3)),   # the clip: ceil alone gives 4
    ((7, 6), (2, 1), (2, 3), (1, 0), (4, 2))])  # pad_h alone clips the width too
def test_pooling_output_size_is_ceil_then_clipped(method, hw, kernel, stride, pad, out_hw):
    """pooling_layer.cpp, PoolingLayer::Reshape: pooled = ceil((size + 2 pad - kernel) /
    stride) + 1, then, if either side is padded, one less on each side whose last window
    would start at or past size + pad."""
    x = torch.randn(2, 3, *hw, dtype=F64)
    params = " ".join(f"{name}_{side}: {v}" for name, pair in
                      (("kernel", kernel), ("stride", stride), ("pad", pad))
                      for side, v in zip("hw", pair))
    y = pool(x, method, params)
    assert tuple(y.shape[2:]) == out_hw
    close(y, caffe_pool(x, kernel, stride, pad, method))


def test_ave_pooling_divides_by_the_window_clipped_to_the_padded_input():
    """pooling_layer.cpp, PoolingLayer::Forward_cpu (AVE): pool_size = (hend - hstart) *
    (wend - wstart) with hend = min(hstart + kernel, height + pad), before clipping to the
    image: padded cells count, cells past the padding do not. On ones, the last window (rows
    3..4 of 4 plus one pad) gives 1/4, not 1/9 (kernel^2) nor 1 (image cells only)."""
    x = torch.ones(1, 1, 4, 4, dtype=F64)
    y = pool(x, "AVE", "kernel_size: 3 stride: 2 pad: 1")
    close(y, caffe_pool(x, (3, 3), (2, 2), (1, 1), "AVE"))
    assert float(y[0, 0, 2, 2]) == 0.25 and float(y[0, 0, 0, 0]) == pytest.approx(4 / 9)


def test_max_pooling_ignores_the_padding():
    """pooling_layer.cpp, PoolingLayer::Forward_cpu (MAX): each output starts at -FLT_MAX and
    takes only image pixels, so padding is not a zero: windows over negative pixels and the
    padding give a negative maximum. The clip in Reshape leaves no window wholly in the
    padding."""
    x = -1 - torch.rand(1, 2, 4, 4, dtype=F64)
    y = pool(x, "MAX", "kernel_size: 3 stride: 2 pad: 1")
    close(y, caffe_pool(x, (3, 3), (2, 2), (1, 1), "MAX"))
    assert torch.all(y < 0)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling_takes_the_whole_non_square_input(method):
    """pooling_layer.cpp, PoolingLayer::LayerSetUp and Reshape: global_pooling sets kernel_h
    = height and kernel_w = width (3 x 5 here), pad 0, stride 1: one output per channel."""
    x = torch.randn(2, 3, 3, 5, dtype=F64)
    y = pool(x, method, "global_pooling: true")
    assert y.shape == (2, 3, 1, 1)
    close(y, caffe_pool(x, (3, 5), (1, 1), (0, 0), method))


@pytest.mark.parametrize("params,message", [
    ("kernel_size: 1 stride: 3", "leaves Caffe's last window (3, 3) outside the input"),
    ("kernel_size: 3 pad: 2", "is more than half the kernel")])
def test_pooling_cases_refused_unlike_caffe(params, message):
    """pooling_layer.cpp, PoolingLayer::Reshape: without padding Caffe does not clip, so a
    stride larger than the kernel can leave a last window outside the input (MAX gives
    -FLT_MAX there); and Caffe allows any pad < kernel. rapa refuses both with an error
    (rapa/nn/pooling.py: torch's pooling, which MAX and AVE use, cannot do them)."""
    with pytest.raises(RapaError, match=re.escape(message)):
        build(f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ '
              f'pool: MAX {params} }} }}', (1, 2, 6, 6))


# -- LRN (lrn_layer.cpp) ------------------------------------------------------------------------


def lrn(x, region, params):
    net = build(f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ '
                f'norm_region: {region} {params} }} }}', tuple(x.shape))
    return run(net, x)["y"]


def test_lrn_across_channels_divides_alpha_by_local_size_at_the_borders():
    """lrn_layer.cpp, LRNLayer::CrossChannelForward_cpu: scale = k + alpha / size * the sum
    of squares over channels c - 2 .. c + 2 of a zero-padded copy: with 2 channels and
    local_size 5 both channels see x0^2 + x1^2, still divided by 5 (not by 2)."""
    x = torch.randn(2, 2, 3, 3, dtype=F64)
    alpha, beta, k = 0.5, 0.75, 2.0
    scale = k + alpha / 5 * (x * x).sum(1, keepdim=True)
    close(lrn(x, "ACROSS_CHANNELS", "local_size: 5 alpha: 0.5 beta: 0.75 k: 2"),
          x * scale ** -beta)


def test_lrn_within_channel_averages_over_size_squared_and_ignores_k():
    """lrn_layer.cpp, LRNLayer::LayerSetUp (WITHIN_CHANNEL): AVE pooling, kernel size, pad
    (size - 1) / 2, whose divisor is always size^2 (padded cells count), then a PowerLayer
    (1 + alpha * mean)^-beta: shift 1, so k is not used."""
    x = torch.randn(1, 2, 4, 5, dtype=F64)
    alpha, beta = 0.5, 0.75
    sq = torch.nn.functional.pad(x * x, (1, 1, 1, 1))
    mean = torch.zeros_like(x)
    for i in range(4):
        for j in range(5):
            mean[:, :, i, j] = sq[:, :, i:i + 3, j:j + 3].sum((2, 3)) / 9
    close(lrn(x, "WITHIN_CHANNEL", "local_size: 3 alpha: 0.5 beta: 0.75 k: 7"),
          x * (1 + alpha * mean) ** -beta)


# -- ReLU, Dropout (relu_layer.cpp, dropout_layer.cpp) ------------------------------------------


@pytest.mark.parametrize("slope", [0.0, 0.25, -1.5])
def test_relu_negative_slope_and_its_gradient_at_zero(slope):
    """relu_layer.cpp, ReLULayer::Forward_cpu: max(x, 0) + slope * min(x, 0); Backward_cpu:
    (x > 0) + slope * (x <= 0), so the gradient at exactly 0 is the slope."""
    net = build(f'layer {{ name: "r" type: "ReLU" bottom: "x" top: "y" relu_param {{ '
                f'negative_slope: {slope} }} }}', (4,))
    x = torch.tensor([-2.0, 0.0, 3.0, -0.5], dtype=F64, requires_grad=True)
    y = run(net, x)["y"]
    close(y, [max(v, 0) + slope * min(v, 0) for v in x.tolist()])
    close(torch.autograd.grad(y.sum(), x)[0],
          [(v > 0) + slope * (v <= 0) for v in x.tolist()])


def test_dropout_scales_in_train_and_copies_in_test():
    """dropout_layer.cpp, DropoutLayer::Forward_cpu: TRAIN keeps each value with probability
    1 - ratio and multiplies it by scale = 1 / (1 - ratio) (4 for 0.75), the gradient by the
    same mask; TEST copies, decided by the phase, whatever the module's mode."""
    layer = 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { ' \
            'dropout_ratio: 0.75 } }'
    x = torch.rand(4096, dtype=F64) + 1
    test_net = build(layer, (4096,), pb.TEST)
    test_net.train()
    close(run(test_net, x)["y"], x)
    train_net = build(layer, (4096,), pb.TRAIN)
    train_net.train()
    xg = x.clone().requires_grad_()
    y = run(train_net, xg)["y"]
    kept = y != 0
    close(y[kept], 4 * x[kept])
    close(torch.autograd.grad(y.sum(), xg)[0], 4 * kept.to(F64))
    assert 0.2 < kept.to(F64).mean() < 0.3


# -- InnerProduct, Softmax, Concat, Flatten -----------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_flattens_from_its_axis(transpose):
    """inner_product_layer.cpp, InnerProductLayer::LayerSetUp and Reshape: K = count(axis),
    M = count(0, axis), top shape = bottom shape[:axis] + (N,); the weight is (N, K), or
    (K, N) with transpose."""
    net = build(f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                f'inner_product_param {{ num_output: 6 axis: 2 transpose: {str(transpose).lower()}'
                f' weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }} }}',
                (2, 3, 4, 5))
    m = net.layer("ip").module
    assert tuple(m.weight.shape) == ((20, 6) if transpose else (6, 20))
    x = torch.randn(2, 3, 4, 5, dtype=F64)
    w = m.weight.detach()
    close(run(net, x)["y"], x.reshape(2, 3, 20) @ (w if transpose else w.t()) + m.bias.detach())


def test_softmax_axis_counts_from_the_end():
    """softmax_layer.cpp, SoftmaxLayer::Reshape: CanonicalAxisIndex(axis), -1 the last axis;
    Forward_cpu: exp(x - max) / sum over that axis."""
    net = build('layer { name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { '
                'axis: -1 } }', (2, 3, 4))
    x = torch.randn(2, 3, 4, dtype=F64)
    e = torch.exp(x - x.amax(-1, keepdim=True))
    close(run(net, x)["y"], e / e.sum(-1, keepdim=True))


def test_concat_of_one_bottom_and_flatten_to_a_negative_end_axis():
    """concat_layer.cpp, ConcatLayer::Reshape: one bottom is shared unchanged; flatten_layer.cpp,
    FlattenLayer::Reshape: axes [axis, end_axis] (canonical, -2 the one before last) become
    one: (2, 3, 4, 5) -> (2, 12, 5)."""
    net = build('layer { name: "c" type: "Concat" bottom: "x" top: "c" }\n'
                'layer { name: "f" type: "Flatten" bottom: "c" top: "f" flatten_param { '
                'axis: 1 end_axis: -2 } }', (2, 3, 4, 5))
    x = torch.randn(2, 3, 4, 5, dtype=F64)
    blobs = run(net, x)
    close(blobs["c"], x)
    close(blobs["f"], x.reshape(2, 12, 5))


# -- Eltwise (eltwise_layer.cpp) ----------------------------------------------------------------


def test_eltwise_sum_coefficients_and_max_ties():
    """eltwise_layer.cpp, EltwiseLayer::Forward_cpu: SUM is sum coeff_i x_i, each gradient
    coeff_i; MAX takes bottom 1 unless bottom 0 is strictly larger, then a later bottom only
    when strictly larger, and Backward_cpu routes the gradient to that one bottom: a
    three-way tie goes to bottom 1, a tie of bottoms 0 and 2 above bottom 1 to bottom 0."""
    shapes = [(3,)] * 3
    xs = [torch.tensor(v, dtype=F64, requires_grad=True)
          for v in ([1.0, 2.0, -1.0], [1.0, 0.0, 4.0], [1.0, 2.0, 5.0])]
    feed = {f"x{i}": x for i, x in enumerate(xs)}
    bottoms = 'bottom: "x0" bottom: "x1" bottom: "x2"'
    net = build_many(f'layer {{ name: "s" type: "Eltwise" {bottoms} top: "y" eltwise_param {{ '
                     f'coeff: 1 coeff: -1 coeff: 0.5 }} }}', shapes)
    y = net(feed)["y"]
    close(y, xs[0] - xs[1] + 0.5 * xs[2])
    for g, c in zip(torch.autograd.grad(y.sum(), xs), (1, -1, 0.5)):
        close(g, [c] * 3)
    net = build_many(f'layer {{ name: "m" type: "Eltwise" {bottoms} top: "y" eltwise_param {{ '
                     f'operation: MAX }} }}', shapes)
    y = net(feed)["y"]
    close(y, [1.0, 2.0, 5.0])
    grads = torch.autograd.grad(y.sum(), xs)
    assert [g.tolist() for g in grads] == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]


# -- BatchNorm, Scale (batch_norm_layer.cpp, scale_layer.cpp) -----------------------------------


BN = ('layer {{ name: "bn" type: "BatchNorm" bottom: "x0" top: "y" batch_norm_param {{ '
      'moving_average_fraction: 0.5 eps: 0.25 {} }} }}')  # both exact in float32


def batch_norm(phase, extra="", blobs=None):
    net = build_many(BN.format(extra), [(2, 2, 1, 3)], phase)
    layer = net.layer("bn")
    for i, b in enumerate(blobs or []):
        layer.load_state_blob(i, torch.tensor(b, dtype=F64))
    return net, layer


@pytest.mark.parametrize("factor", [2.0, 0.0])
def test_batch_norm_global_stats_divide_by_the_scale_factor_blob(factor):
    """batch_norm_layer.cpp, BatchNormLayer::Forward_cpu: with use_global_stats (TEST's
    default) mean = blobs[0] / blobs[2] and variance = blobs[1] / blobs[2], the factor 0
    guarded to 0 (mean and variance 0: y = x / sqrt(eps)); the blobs stay as they were."""
    blobs = [[2.0, 4.0], [6.0, 8.0], [factor]]
    net, layer = batch_norm(pb.TEST, blobs=blobs)
    x = torch.randn(2, 2, 1, 3, dtype=F64)
    s = 0.0 if factor == 0 else 1 / factor
    mean = torch.tensor(blobs[0], dtype=F64).view(1, 2, 1, 1) * s
    var = torch.tensor(blobs[1], dtype=F64).view(1, 2, 1, 1) * s
    close(net({"x0": x})["y"], (x - mean) / torch.sqrt(var + 0.25))
    for b, want in zip(layer.state_blobs(), blobs):
        close(b, want)


@pytest.mark.parametrize("phase,extra", [(pb.TRAIN, ""), (pb.TEST, "use_global_stats: false")])
def test_batch_norm_batch_stats_update_the_blobs(phase, extra):
    """batch_norm_layer.cpp, BatchNormLayer::LayerSetUp and Forward_cpu: batch statistics
    (TRAIN's default, or use_global_stats: false even in a TEST net) use the batch's mean and
    biased variance and update the blobs: factor = maf * factor + 1, mean_sum = maf *
    mean_sum + mean, var_sum = maf * var_sum + m / (m - 1) * var with m = count / channels =
    N * H * W (6, not N = 2)."""
    blobs = [[1.0, -1.0], [2.0, 3.0], [1.0]]
    net, layer = batch_norm(phase, extra, blobs)
    x = torch.randn(2, 2, 1, 3, dtype=F64)
    per_channel = x.transpose(0, 1).reshape(2, -1)
    mean, var = per_channel.mean(1), per_channel.var(1, unbiased=False)
    view = (1, 2, 1, 1)
    close(net({"x0": x})["y"], (x - mean.view(view)) / torch.sqrt(var.view(view) + 0.25))
    want = [0.5 * torch.tensor(blobs[0], dtype=F64) + mean,
            0.5 * torch.tensor(blobs[1], dtype=F64) + 6 / 5 * var, [0.5 * 1 + 1]]
    for b, w in zip(layer.state_blobs(), want):
        close(b, w)


def test_batch_norm_global_stats_in_train_leave_the_blobs():
    """batch_norm_layer.cpp, BatchNormLayer::Forward_cpu: use_global_stats: true in a TRAIN
    net normalizes by the stored statistics and does not update them."""
    blobs = [[1.0, 2.0], [3.0, 4.0], [4.0]]
    net, layer = batch_norm(pb.TRAIN, "use_global_stats: true", blobs)
    x = torch.randn(2, 2, 1, 3, dtype=F64)
    mean = torch.tensor([0.25, 0.5], dtype=F64).view(1, 2, 1, 1)
    var = torch.tensor([0.75, 1.0], dtype=F64).view(1, 2, 1, 1)
    close(net({"x0": x})["y"], (x - mean) / torch.sqrt(var + 0.25))
    for b, want in zip(layer.state_blobs(), blobs):
        close(b, want)


def test_scale_scalar_ignores_axis_and_bias_follows_a_second_bottom():
    """scale_layer.cpp, ScaleLayer::LayerSetUp and Reshape: num_axes 0 makes one scalar blob
    applied everywhere (axis_ = 0 'in the special case where scale is a scalar'); with two
    bottoms and bias_term the bias blob takes bottom[1]'s shape (BiasLayer num_axes =
    bottom[1]->num_axes())."""
    net = build_many('layer { name: "s" type: "Scale" bottom: "x0" top: "y" scale_param { '
                     'axis: 2 num_axes: 0 bias_term: true filler { type: "constant" value: 3 } '
                     'bias_filler { type: "constant" value: -1 } } }', [(2, 3, 4)])
    assert [tuple(b.shape) for b in net.layer("s").learnable_blobs()] == [(), ()]
    x = torch.randn(2, 3, 4, dtype=F64)
    close(net({"x0": x})["y"], 3 * x - 1)
    net = build_many('layer { name: "s" type: "Scale" bottom: "x0" bottom: "x1" top: "y" '
                     'scale_param { bias_term: true bias_filler { type: "constant" value: 0.5 }'
                     ' } }', [(2, 3, 4), (3,)])
    assert [tuple(b.shape) for b in net.layer("s").learnable_blobs()] == [(3,)]
    s = torch.randn(3, dtype=F64)
    close(net({"x0": x, "x1": s})["y"], x * s.view(1, 3, 1) + 0.5)
