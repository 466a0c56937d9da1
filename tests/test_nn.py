"""rapa.nn from plain PyTorch, without prototxt: every module against a dense float64 reference,
its output shape known without running, its fillers, and its bad arguments."""
import math

import pytest
import torch
import torch.nn.functional as F

import reference
import rapa
from rapa.analog import perfect
from rapa.geometry import conv_out, pool_empty_window, pool_out
from rapa.nn import LRN, Linear, Pool2d, TiledConv2d

F64 = torch.float64


@pytest.mark.parametrize("size,kernel,stride,pad,dilation", [
    (8, 3, 1, 1, 1), (9, 3, 2, 0, 1), (10, 5, 3, 2, 1), (11, 3, 2, 1, 2), (7, 7, 1, 0, 1),
    (5, 2, 4, 1, 3)])
def test_conv_out_is_torchs(size, kernel, stride, pad, dilation):
    x = torch.zeros(1, 1, size, size + 1)
    w = torch.zeros(1, 1, kernel, kernel)
    y = F.conv2d(x, w, stride=stride, padding=pad, dilation=dilation)
    assert y.shape[2:] == (conv_out(size, kernel, stride, pad, dilation),
                           conv_out(size + 1, kernel, stride, pad, dilation))


def test_conv_out_defaults():
    assert conv_out(5, 3) == 3 and conv_out(5, 3, dilation=2) == 1


@pytest.mark.parametrize("hw,kernel,stride,pad", [
    ((32, 34), (3, 3), (2, 2), (0, 0)), ((16, 18), (3, 3), (2, 2), (1, 1)),
    ((8, 10), (2, 2), (2, 2), (0, 0)), ((9, 11), (3, 3), (3, 3), (1, 1)),
    ((7, 9), (4, 4), (1, 1), (2, 2)), ((5, 7), (2, 2), (2, 2), (1, 1)),
    ((10, 12), (4, 4), (3, 3), (1, 1)), ((9, 6), (3, 1), (2, 3), (1, 0)),
    ((6, 9), (1, 3), (3, 2), (0, 1))])
def test_pool_out_is_caffes(hw, kernel, stride, pad):
    ho, wo, windows = reference.caffe_windows(*hw, kernel, stride, pad)
    assert pool_out(hw, kernel, stride, pad) == (ho, wo)
    # Every window holds a pixel (pool_empty_window is false for all of these).
    assert all(h1 > h0 and w1 > w0 for (h0, h1, w0, w1), _ in windows.values())
    assert not pool_empty_window(hw, kernel, stride, pad)


def test_pool_empty_window_without_padding():
    # Caffe: ceil((6 - 1) / 3) + 1 = 3 outputs, the last window starting at pixel 6 of 6.
    assert pool_out((6, 6), (1, 1), (3, 3), (0, 0)) == (3, 3)
    assert pool_empty_window((6, 6), (1, 1), (3, 3), (0, 0))
    # Padding one side corrects both sides, as Caffe does.
    assert pool_out((7, 6), (2, 1), (2, 3), (1, 0)) == (4, 2)


@pytest.mark.parametrize("kwargs,shape", [
    (dict(kernel_size=3, padding=1), (2, 4, 8, 8)),
    (dict(kernel_size=(3, 5), stride=(2, 1), padding=(0, 2)), (1, 4, 9, 7)),
    (dict(kernel_size=3, dilation=2, groups=2), (2, 4, 9, 9)),
    (dict(kernel_size=5, padding=2, tiling="random", num_tiles=5), (2, 4, 8, 8)),
    (dict(kernel_size=3, stride=2, padding=1, tiling="alternate", num_tiles=4), (2, 4, 9, 7)),
    (dict(kernel_size=3, padding=1, tiling="image_pad", num_tiles=4), (2, 4, 8, 8)),
    (dict(kernel_size=3, padding=1, tiling="perforated", num_tiles=3), (3, 4, 6, 6)),
])
def test_conv_output_shape_without_running(kwargs, shape):
    conv = TiledConv2d(4, 6, **kwargs)
    assert conv.output_shape(shape) == tuple(conv(torch.randn(shape)).shape)


def test_tiled_conv_module_is_the_reference(device):
    conv = TiledConv2d(3, 5, 3, stride=2, padding=1, tiling="random", num_tiles=3).to(device)
    conv = conv.double()
    x = torch.randn(2, 3, 9, 9, dtype=F64, device=device)
    gen = torch.Generator(device).manual_seed(5)
    y = conv(x, generator=gen)
    gen.manual_seed(5)
    assignment = conv.scheme.assign(2, 5, 5, training=True, device=x.device, generator=gen)
    torch.testing.assert_close(
        y, reference.tiled_conv(x, conv.weight, conv.bias, assignment, (2, 2), (1, 1)))


def test_untiled_conv_is_torchs_layout_and_op():
    conv = TiledConv2d(4, 6, 3, padding=2, dilation=2, groups=2).double()
    assert conv.weight.shape == (6, 2, 3, 3) and conv.bias.shape == (6,) and not conv.tiled
    x = torch.randn(2, 4, 7, 7, dtype=F64)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 2, 2, 2))


def test_fillers_fill_each_replica_on_its_own():
    seen = []

    def weight_filler(replica):
        seen.append(tuple(replica.shape))
        replica.fill_(len(seen))

    conv = TiledConv2d(2, 3, 3, tiling="random", num_tiles=4, weight_filler=weight_filler,
                       bias_filler=lambda b: b.fill_(-1))
    assert seen == [(3, 2, 3, 3)] * 4
    assert [float(conv.weight[t].detach().mean()) for t in range(4)] == [1, 2, 3, 4]
    assert torch.all(conv.bias == -1)
    untiled = TiledConv2d(2, 3, 3, weight_filler=lambda w: seen.append(tuple(w.shape)))
    assert seen[-1] == (3, 2, 3, 3) and untiled.weight.shape == (3, 2, 3, 3)


def test_default_initialisation_is_torchs():
    torch.manual_seed(0)
    conv = TiledConv2d(8, 16, 3, tiling="random", num_tiles=4)
    bound = 1 / math.sqrt(8 * 9)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.97 * bound
    linear = Linear(50, 200)
    bound = 1 / math.sqrt(50)  # torch.nn.Linear's: kaiming_uniform(a=sqrt 5), bias 1/sqrt(fan_in)
    assert bound * 0.97 < linear.weight.abs().max() <= bound
    assert bound * 0.9 < linear.bias.abs().max() <= bound and linear.bias.min() < 0
    assert conv.bias.abs().max() <= bound and not torch.equal(conv.weight[0], conv.weight[1])


def test_analog_conv_module_with_ideal_arrays_is_the_tiled_conv():
    conv = TiledConv2d(3, 4, 3, padding=1, tiling="random", num_tiles=2,
                       rpu_config=perfect()).double()
    assert conv.arrays is not None and conv.arrays.dw_up.shape == (2, 4, 27)
    x = torch.randn(2, 3, 6, 6, dtype=F64, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    y = conv(x, generator=gen)
    gen.manual_seed(1)
    assignment = conv.scheme.assign(2, 6, 6, training=True, device=x.device, generator=gen)
    torch.testing.assert_close(
        y, reference.tiled_conv(x, conv.weight, conv.bias, assignment, (1, 1), (1, 1)))
    y.sum().backward()
    assert conv.weight.grad is None and len(conv.arrays.pending) == 1  # pulses, not a gradient
    assert x.grad is not None and conv.bias.grad is not None


def test_linear_digital_transpose_and_analog():
    lin = Linear(6, 4, transpose=True).double()
    x = torch.randn(3, 2, 6, dtype=F64)
    assert lin.weight.shape == (6, 4)
    torch.testing.assert_close(lin(x), x @ lin.weight + lin.bias)
    assert lin.output_shape((3, 2, 6)) == (3, 2, 4)
    analog = Linear(6, 4, rpu_config=perfect()).double()
    torch.testing.assert_close(analog(x), x @ analog.weight.t() + analog.bias)
    assert len(analog.state_blobs()) == 5 and lin.state_blobs() == []


@pytest.mark.parametrize("method", ["max", "ave", "stochastic", "mixed"])
@pytest.mark.parametrize("kernel,stride,pad,out_hw", [
    ((3, 3), (2, 2), (1, 1), (5, 5)),
    ((2, 2), (2, 2), (1, 1), (5, 5)),    # 9 rows: the last window would start in the padding
    ((3, 1), (2, 3), (1, 0), (5, 3))])   # padding one side corrects both (Caffe)
def test_pool_module_geometry_and_values(method, kernel, stride, pad, out_hw):
    pool = Pool2d(method, kernel, stride, pad, channels=3).double().eval()
    x = torch.randn(2, 3, 9, 8, dtype=F64)
    y = pool(x)
    assert pool.output_shape(tuple(x.shape)) == tuple(y.shape) == (2, 3, *out_hw)
    if method == "mixed":
        torch.testing.assert_close(pool.beta.detach(), torch.full((3,), 0.2, dtype=F64))
        expected = reference.mixed_pool(x, pool.beta.detach(), kernel, stride, pad)
    elif method == "stochastic":
        expected = reference.stochastic_pool_test(x, kernel, stride, pad)
    else:
        windows = reference.caffe_windows(9, 8, kernel, stride, pad)[2]
        expected = torch.empty(2, 3, *out_hw, dtype=F64)
        for (oy, ox), ((h0, h1, w0, w1), count) in windows.items():
            win = x[:, :, h0:h1, w0:w1]
            expected[:, :, oy, ox] = win.amax((2, 3)) if method == "max" else \
                win.sum((2, 3)) / count
    torch.testing.assert_close(y, expected)


def test_pool_ops_refuse_an_empty_last_window():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(RuntimeError, match="leaves the last window of the 3x3 output outside"):
        rapa.mixed_pool(x, torch.zeros(2), 1, 3, 0)
    with pytest.raises(RuntimeError, match="leaves the last window of the 3x3 output outside"):
        rapa.stochastic_pool(x, 1, 3, 0, False)


def test_lrn_module_shapes():
    lrn = LRN(3, 0.5, 0.75, 2.0, "within_channel")
    assert lrn.output_shape((2, 3, 5, 5)) == (2, 3, 5, 5)
    with pytest.raises(ValueError, match="needs a 4D input"):
        lrn.output_shape((2, 3, 5))


@pytest.mark.parametrize("make,message", [
    (lambda: TiledConv2d(4, 6, 3, groups=2, tiling="random", num_tiles=2),
     "a tiled convolution supports neither group nor dilation"),
    (lambda: TiledConv2d(4, 6, 3, dilation=2, rpu_config=perfect()),
     "an analog convolution supports neither group nor dilation"),
    (lambda: TiledConv2d(4, 6, 3, tiling="image_pad", num_tiles=4, rpu_config=perfect()),
     "tiling 'image_pad' reads other regions as zero"),
    (lambda: TiledConv2d(4, 6, 3, groups=4), r"group 4 must divide the input channels \(4\) "
                                             r"and num_output \(6\)"),
    (lambda: TiledConv2d(4, 6, 0), "kernel_size, stride and dilation must be >= 1"),
    (lambda: TiledConv2d(4, 6, (3, 3, 3)), "'kernel_size' must be an int or two ints"),
    (lambda: TiledConv2d(4, 6, 3, tiling="none", num_tiles=2), "'none' has exactly 1 tile"),
    (lambda: Linear(6, 4, transpose=True, rpu_config=perfect()), "transpose must be false"),
    (lambda: Pool2d("median", 3), "unknown pooling method 'median'"),
    (lambda: Pool2d("max", 3, 2, 3), r"pad \(3, 3\) must be >= 0 and smaller than the kernel"),
    (lambda: Pool2d("mixed", 3, 2), "mixed pooling needs channels"),
    (lambda: Pool2d("mixed", 3, 2, channels=2, mu=float("inf")), "mu must be finite and > 0"),
    (lambda: LRN(4), "local_size must be odd"),
])
def test_bad_arguments_raise_value_errors_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("module,shape,message", [
    (TiledConv2d(4, 6, 3), (2, 3, 8, 8), "the input has 3 channels, the convolution takes 4"),
    (TiledConv2d(4, 6, 9), (2, 4, 8, 8), r"kernel \(9, 9\) with pad \(0, 0\) does not fit"),
    (TiledConv2d(4, 6, 3, padding=1, tiling="image_overlap", num_tiles=4), (2, 4, 7, 8),
     "needs the output sides divisible by 2, got 7x8"),
    (TiledConv2d(4, 6, 2, tiling="image_pad", num_tiles=4), (2, 4, 9, 9),
     "needs the input sides divisible by 2, got 9x9"),
    (Pool2d("max", 3, 2), (2, 3, 2, 2), r"kernel \(3, 3\) is larger than the padded input"),
    (Pool2d("max", (1, 6), 1, (0, 2)), (1, 1, 1, 1), r"kernel \(1, 6\) is larger than the "
                                                     r"padded input"),
    (Pool2d("max", 1, 3), (2, 3, 6, 6), r"a stride larger than the kernel without padding "
                                        r"leaves Caffe's last window \(3, 3\) outside"),
    (Pool2d("stochastic", 1, 3), (2, 3, 6, 6), "without padding leaves"),
    (Pool2d("mixed", 3, 2, channels=4), (2, 3, 8, 8), "the input has 3 channels, mixed pooling"),
    (Linear(6, 4), (3, 5), "the input's last dimension must be 6"),
])
def test_inputs_that_do_not_fit_are_named_before_running(module, shape, message):
    with pytest.raises(ValueError, match=message):
        module.output_shape(shape)


def test_output_shape_checks_consume_no_random_draws():
    conv = TiledConv2d(4, 6, 3, padding=1, tiling="random", num_tiles=4)
    state = torch.get_rng_state()
    conv.output_shape((2, 4, 8, 8))
    assert torch.equal(torch.get_rng_state(), state)


def test_modules_train_in_a_plain_torch_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        TiledConv2d(3, 8, 3, padding=1, tiling="random", num_tiles=4), torch.nn.ReLU(),
        Pool2d("mixed", 3, 2, channels=8), LRN(3, 1e-4, 0.75, 1.0, "within_channel"),
        torch.nn.Flatten(), Linear(8 * 4 * 4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert rapa.nn.TiledConv2d is TiledConv2d


def test_asymmetric_pooling_geometry_and_small_mixtures():
    pool = Pool2d("ave", (3, 1), 1, (1, 0))
    x = torch.randn(2, 3, 1, 5, dtype=F64)
    assert pool.output_shape((2, 3, 1, 5)) == tuple(pool(x).shape) == (2, 3, 1, 5)
    torch.testing.assert_close(pool(x), x / 3)  # each window: the pixel and two pad rows
    mixed = Pool2d("mixed", 2, 2, channels=1)  # float32 beta, float64 input
    y = mixed(torch.randn(1, 1, 4, 4, dtype=F64))
    assert y.dtype == F64 and mixed.beta.shape == (1,)


def test_stochastic_pooling_draws_from_the_generator_given():
    pool = Pool2d("stochastic", 2, 2).train()
    x = torch.rand(2, 3, 8, 8) + 0.1
    a = pool(x, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    b = pool(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_lrn_defaults_are_caffes():
    x = torch.randn(2, 7, 4, 4, dtype=F64)
    torch.testing.assert_close(LRN()(x), torch.nn.LocalResponseNorm(5, 1.0, 0.75, 1.0)(x))
    torch.testing.assert_close(LRN(1, 2.0, 0.5, 3.0)(x), x / (3 + 2 * x * x) ** 0.5)
    with pytest.raises(ValueError, match="alpha, beta and k must be finite"):
        LRN(3, beta=float("nan"))


@pytest.mark.parametrize("make,message", [
    (lambda: TiledConv2d(3, 4, 3.0), "'kernel_size' must be an int or two ints, got 3.0"),
    (lambda: TiledConv2d(3, 4, 3, stride=(1, 2, 3)), "'stride' must be an int or two ints"),
    (lambda: TiledConv2d(3, 4, 3, stride=None), "'stride' must be an int or two ints"),
    (lambda: TiledConv2d(3.5, 4, 3), r"in_channels must be >= 1 \(an int\), got 3.5"),
    (lambda: Linear(3.0, 2), r"in_features must be >= 1 \(an int\), got 3.0"),
    (lambda: Pool2d("max", 2.0), "'kernel_size' must be an int or two ints"),
    (lambda: Pool2d("max", 3, (1, 2, 3)), "'stride' must be an int or two ints"),
    (lambda: LRN(5.0), r"local_size must be >= 1 \(an int\)"),
])
def test_sizes_must_be_ints(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_ints_are_ints():
    import numpy as np
    conv = TiledConv2d(np.int64(3), 4, np.int64(3), stride=(np.int32(1), 2))
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 2)


def test_tiled_conv_names_an_input_of_the_wrong_rank():
    conv = TiledConv2d(3, 4, 3, tiling="random", num_tiles=2)
    with pytest.raises(RuntimeError, match="argument 'input' must be 4-D"):
        conv(torch.randn(3, 8, 8))


def test_analog_linear_of_an_empty_batch():
    lin = Linear(6, 4, rpu_config=perfect())
    assert lin(torch.randn(0, 6)).shape == (0, 4)


def test_modules_describe_themselves():
    assert repr(TiledConv2d(3, 4, 3, padding=1, bias=False, rpu_config=perfect())).endswith(
        "TiledConv2d(\n  3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False, "
        "analog\n  (scheme): NoTiling(num_tiles=1)\n  (arrays): AnalogArrays()\n)")
    assert "dilation=(2, 2), groups=2" in repr(TiledConv2d(4, 4, 3, dilation=2, groups=2))
    assert repr(Linear(3, 2)) == "Linear(in_features=3, out_features=2, bias=True)"
    assert repr(Pool2d("mixed", 3, 2, channels=4)) == \
        "Pool2d(mixed, kernel_size=(3, 3), stride=(2, 2), padding=(0, 0), mu=10)"
    assert repr(LRN(3, 0.5, 0.75, 2.0, "within_channel")) == \
        "LRN(3, alpha=0.5, beta=0.75, k=2, within_channel)"
    assert repr(LRN()) == "LRN(5, alpha=1, beta=0.75, k=1, across_channels)"
    assert repr(Pool2d("max", 2, 2)) == \
        "Pool2d(max, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(Linear(3, 2, bias=False, rpu_config=perfect())).startswith(
        "Linear(\n  in_features=3, out_features=2, bias=False, analog")
    assert repr(TiledConv2d(3, 4, 3, tiling="random", num_tiles=2)).startswith(
        "TiledConv2d(\n  3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0)\n  (scheme): "
        "Random(num_tiles=2)")


def test_softmax_loss_normalizations_over_another_axis():
    from rapa.nn import SoftmaxWithLoss
    scores = torch.randn(2, 3, 4, dtype=F64)        # 2 x 3 predictions over 4 classes (axis 2)
    labels = torch.tensor([[0, 1, 5], [3, 5, 2]])   # 5 = ignored
    logp = torch.log_softmax(scores, 2)
    picked = torch.stack([logp[i, j, labels[i, j]] for i in range(2) for j in range(3)
                          if labels[i, j] != 5])
    total = -picked.sum()
    for norm, divisor in (("valid", 4), ("full", 6), ("batch_size", 6), ("none", 1)):
        got = SoftmaxWithLoss(axis=2, ignore_label=5, normalization=norm)(scores, labels)
        torch.testing.assert_close(got, total / divisor)  # batch_size: Caffe's outer_num, 2 x 3
    x, y = torch.randn(5, 4, dtype=F64), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(SoftmaxWithLoss()(x, y), F.cross_entropy(x, y))


def test_accuracy_and_its_vote_over_another_axis():
    from rapa.nn import Accuracy
    assert Accuracy()(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5
    acc = Accuracy(top_k=1, axis=2)
    scores = torch.zeros(2, 3, 4, dtype=F64)
    scores[..., 2] = 1  # every prediction says class 2
    labels = torch.tensor([[2, 2, 0], [2, 1, 2]])
    assert acc(scores, labels) == pytest.approx(4 / 6) and acc(scores, labels).dtype == F64
    # Three passes: the first says class 0 everywhere, the other two class 2: the vote is 2.
    first = torch.zeros(2, 3, 4, dtype=F64)
    first[..., 0] = 5
    vote = acc.vote_accuracy([first, scores, scores], labels)
    assert vote == pytest.approx(4 / 6) and vote.dtype == F64
    # A tie of votes goes to the larger mean probability, whichever class index it has.
    tie = [torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    assert Accuracy().vote_accuracy(tie, torch.tensor([2])) == 1
    assert Accuracy().vote_accuracy(tie[::-1], torch.tensor([2])) == 1
    ignoring = Accuracy(axis=2, ignore_label=0)
    assert ignoring.vote_accuracy([first, scores, scores], labels) == pytest.approx(4 / 5)
    assert ignoring(first, labels).dtype == F64 and ignoring(first, labels) == 0


@pytest.mark.parametrize("scheme,tiles", [("random", 65), ("perforated", 100), ("alternate", 81)])
def test_more_tiles_than_patches_are_refused(scheme, tiles):
    conv = TiledConv2d(3, 4, 3, padding=1, tiling=scheme, num_tiles=tiles)
    with pytest.raises(ValueError, match=f"'{scheme}' has {tiles} tiles, but the output has 64 "
                                         rf"patches \(8x8\) per image: {tiles - 64} tiles"):
        conv.output_shape((2, 3, 8, 8))
    assert TiledConv2d(3, 4, 3, padding=1, tiling=scheme,
                       num_tiles=64).output_shape((2, 3, 8, 8)) == (2, 4, 8, 8)
