"""rapa::analog_conv and its input gradient (the CPU's fused analog convolution) against the
row-by-row reference they replace there: rapa::analog_mvm over F.unfold's patch rows (itself
tested against aihwkit's rules in test_analog_ops.py), then each array's output scale and the
bias, and backward F.fold of the rows' transposed products. With dyadic inputs and weights the
forward pass must agree bit for bit (noise, DAC, ADC, noise and bound management included);
the input gradient to float64 rounding (the fold adds scaled rows in another order)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import rapa
from rapa.analog import AnalogArrays, HICConfig, IOParameters, RPUConfig
from rapa.analog.arrays import _rows_analog_conv, analog_conv, patch_rows
from rapa.analog.ops import analog_conv_forward, analog_conv_input_grad, analog_mvm
from rapa.nn import TiledConv2d
from conftest import run_with_cpu_isa

F64 = torch.float64


def dyadic(shape, scale=64, high=16):
    return torch.randint(-high, high + 1, shape).to(F64) / scale


def reference_forward(x, weight, bias, assignment, out_scale, stride, padding, io, seed):
    """analog_mvm over the patch rows, times alpha_t, plus b_t; -1: 0. (N, O, Ho, Wo)."""
    n, o = x.shape[0], weight.shape[1]
    ho, wo = assignment.shape[1:]
    rows = patch_rows(x, weight.shape[3:], padding, stride)
    tile = assignment.reshape(-1)
    y = analog_mvm(rows, weight.reshape(*weight.shape[:2], -1), tile, io, seed=seed)
    kept = (tile >= 0).to(x.dtype).unsqueeze(1)
    y = y * out_scale[tile.clamp_min(0)].unsqueeze(1)
    if bias is not None:
        y = y + bias[tile.clamp_min(0)] * kept
    return y.view(n, ho, wo, o).permute(0, 3, 1, 2)


def reference_input_grad(grad, x, weight, assignment, out_scale, stride, padding, io, seed):
    o = weight.shape[1]
    tile = assignment.reshape(-1)
    d = grad.permute(0, 2, 3, 1).reshape(-1, o) * out_scale[tile.clamp_min(0)].unsqueeze(1)
    rows = analog_mvm(d, weight.reshape(*weight.shape[:2], -1), tile, io, transposed=True,
                      seed=seed)
    cols = rows.view(x.shape[0], -1, rows.shape[1]).transpose(1, 2)
    return F.fold(cols, x.shape[2:], weight.shape[3:], padding=padding, stride=stride)


CASES = [  # (N, C, H, W, O, T, kernel, stride, padding)
    (2, 3, 9, 9, 8, 1, (5, 5), (1, 1), (2, 2)),
    (2, 5, 8, 7, 7, 3, (3, 5), (2, 1), (0, 2)),  # odd sizes, stride, one-sided padding
    (1, 32, 6, 6, 40, 2, (3, 3), (1, 1), (1, 1)),  # K and O past one panel's columns
]
IOS = {
    "default": IOParameters(),
    "bound management": IOParameters(out_bound=0.1, bound_management="iterative"),
    "no noise management": IOParameters(noise_management="none", inp_bound=4.0),
    "coarse converters": IOParameters(inp_res=0.09, out_res=0.07, out_bound=0.5,
                                      bound_management="iterative"),
    # A limit that is a power of two: the last repeat is the one at the limit itself.
    "bound management to 4": IOParameters(out_bound=0.1, bound_management="iterative",
                                           max_bm_factor=4.0, max_bm_res=1.0),
    "perfect": IOParameters(is_perfect=True),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", list(IOS))
def test_the_fused_convolution_is_the_row_by_row_one_exactly(case, name):
    torch.manual_seed(sum(case[:5]) + len(name))
    n, c, h, w, o, t, kernel, stride, padding = case
    io = IOS[name]
    x = dyadic((n, c, h, w))
    weight = dyadic((t, o, c, *kernel), scale=256)
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    assignment = torch.randint(-1 if t > 1 else 0, t, (n, ho, wo))
    out_scale = torch.tensor([0.5, 2.0, 1.0])[:t].to(F64)
    bias = dyadic((t, o))
    seed = torch.tensor([1234])
    y = analog_conv_forward(x, weight, bias, assignment, out_scale, stride, padding, io,
                            seed=seed)
    ref = reference_forward(x, weight, bias, assignment, out_scale, stride, padding, io, seed)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ref)
    grad = dyadic((n, o, ho, wo))
    gx = analog_conv_input_grad(grad, x, weight, assignment, out_scale, stride, padding, io,
                                seed=seed)
    gref = reference_input_grad(grad, x, weight, assignment, out_scale, stride, padding, io,
                                seed)
    # Noise management's scales are not dyadic: the fold's sums, in another order, round.
    torch.testing.assert_close(gx, gref, rtol=1e-13, atol=1e-13)
    # The rule under test changes the numbers: outputs move off the exact product.
    exact = reference_forward(x, weight, bias, assignment, out_scale, stride, padding,
                              IOS["perfect"], seed)
    assert (name == "perfect") == torch.equal(y, exact)
    if name.startswith("bound management") or name == "coarse converters":  # rows repeated
        plain = dataclasses.replace(io, bound_management="none")
        assert not torch.equal(y, analog_conv_forward(x, weight, bias, assignment, out_scale,
                                                      stride, padding, plain, seed=seed))


def test_outputs_below_the_bound_that_round_beyond_it_saturate():
    """With a bound that is no multiple of the ADC's step (0.5 = 7.69 steps of 0.065), an
    output of 0.49 rounds to 0.52, beyond it: bound management repeats that row, as the
    reference does; 0.2 and 0.3 alone would not."""
    io = IOParameters(out_res=0.065, out_bound=0.5, out_noise=0.0,
                      bound_management="iterative")
    x = torch.ones(1, 1, 1, 1, dtype=F64)
    one = torch.zeros(1, 1, 1, dtype=torch.long)
    scale, seed = torch.ones(1, dtype=F64), torch.tensor([1])
    outputs = []
    for w in ([0.2, 0.3, 0.49, 0.495], [0.2, 0.3, 0.2, 0.3]):
        weight = torch.tensor(w, dtype=F64).view(1, 4, 1, 1, 1)
        y = analog_conv_forward(x, weight, None, one, scale, (1, 1), (0, 0), io, seed=seed)
        ref = reference_forward(x, weight, None, one, scale, (1, 1), (0, 0), io, seed)
        assert torch.equal(y, ref)
        outputs.append(y.flatten())
    step = 0.065
    # Repeated at half the input: 0.2 reads 0.1 -> 0.13 (2 steps) -> 0.26; unrepeated 0.195.
    assert torch.allclose(outputs[0][0], torch.tensor(4 * step, dtype=F64))
    assert torch.allclose(outputs[1][0], torch.tensor(3 * step, dtype=F64))


def test_float32_and_the_backward_bound_management():
    """float32 (the training dtype) with generic values: the forward is the same numbers
    (the ADC absorbs the products' rounding), the input gradient agrees to the fold's
    rounding; bound management in the backward pass (rapa's option) repeats rows there."""
    torch.manual_seed(3)
    x = torch.randn(3, 4, 10, 10)
    weight = torch.randn(2, 6, 4, 3, 3) * 0.3
    assignment = torch.randint(-1, 2, (3, 10, 10))
    scale, seed = torch.tensor([0.7, 1.3]), torch.tensor([99])
    io = IOParameters(out_bound=3.0, bound_management="iterative")
    y = analog_conv_forward(x, weight, None, assignment, scale, (1, 1), (1, 1), io, seed=seed)
    ref = reference_forward(x, weight, None, assignment, scale, (1, 1), (1, 1), io, seed)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn(3, 6, 10, 10)
    gx = analog_conv_input_grad(grad, x, weight, assignment, scale, (1, 1), (1, 1), io,
                                seed=seed)
    gref = reference_input_grad(grad, x, weight, assignment, scale, (1, 1), (1, 1), io, seed)
    torch.testing.assert_close(gx, gref, rtol=1e-5, atol=1e-5)


def test_zero_patches_dropped_patches_and_nan():
    """An all-zero patch outputs its bias alone (noise management skips it, as analog_mvm's
    zero rows), a dropped one 0, and a NaN pixel reaches the outputs of the patches that read
    it, as in the reference."""
    x = torch.zeros(1, 2, 6, 6, dtype=F64)
    x[0, :, 3:, 3:] = 1.0
    x[0, 1, 5, 5] = float("nan")
    weight = torch.full((2, 3, 2, 3, 3), 0.25, dtype=F64)
    assignment = torch.zeros(1, 6, 6, dtype=torch.long)
    assignment[0, 5, 5] = -1
    bias = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    scale, seed = torch.ones(2, dtype=F64), torch.tensor([5])
    y = analog_conv_forward(x, weight, bias, assignment, scale, (1, 1), (1, 1), IOParameters(),
                            seed=seed)
    ref = reference_forward(x, weight, bias, assignment, scale, (1, 1), (1, 1), IOParameters(),
                            seed)
    torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(y[0, :, 1, 1], bias[0])  # its patch holds zeros only
    assert torch.equal(y[0, :, 5, 5], torch.zeros(3, dtype=F64))  # dropped
    nan = y[0].isnan().any(0)
    assert nan[4:, 4:].sum() == 3 and nan.sum() == 3  # (4, 4), (4, 5), (5, 4)


def test_bad_arguments_name_what_is_wrong():
    x, w = torch.zeros(1, 2, 5, 5), torch.zeros(2, 3, 2, 3, 3)
    a, scale = torch.zeros(1, 5, 5, dtype=torch.long), torch.ones(2)
    io = IOParameters()
    bad = a.clone()
    bad[0, 1, 1] = 2
    with pytest.raises(RuntimeError, match="'assignment' holds 2"):
        analog_conv_forward(x, w, None, bad, scale, (1, 1), (1, 1), io)
    with pytest.raises(RuntimeError, match="'out_scale' must be \\(T,\\) = \\(2,\\)"):
        analog_conv_forward(x, w, None, a, torch.ones(3), (1, 1), (1, 1), io)
    with pytest.raises(RuntimeError, match="'assignment' must have shape"):
        analog_conv_forward(x, w, None, a[:, :4], scale, (1, 1), (1, 1), io)
    with pytest.raises(RuntimeError, match="'grad_output' must have shape"):
        analog_conv_input_grad(torch.zeros(1, 3, 4, 5), x, w, a, scale, (1, 1), (1, 1), io)
    with pytest.raises(RuntimeError, match="'seed' must hold one value"):
        analog_conv_forward(x, w, None, a, scale, (1, 1), (1, 1), io,
                            seed=torch.tensor([1, 2]))


def test_opcheck():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 3, 3, 3)
    a, scale, seed = torch.randint(-1, 2, (2, 6, 6)), torch.tensor([1.0, 2.0]), torch.tensor([3])
    args = list(IOParameters().op_args().values())
    torch.library.opcheck(torch.ops.rapa.analog_conv,
                          (x, w, torch.randn(2, 4), a, scale, seed, [1, 1], [1, 1], *args))
    torch.library.opcheck(torch.ops.rapa.analog_conv_input_grad,
                          (torch.randn(2, 4, 6, 6), x, w, a, scale, seed, [1, 1], [1, 1], *args))


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_cpu_kernel_variant(isa):
    """RAPA_CPU_ISA selects the narrower builds of the kernels: the same numbers."""
    code = (
        "import torch, rapa\n"
        "from rapa.analog import IOParameters\n"
        "from rapa.analog.ops import analog_conv_forward, analog_conv_input_grad\n"
        "from test_analog_conv import reference_forward, reference_input_grad, dyadic\n"
        "torch.manual_seed(0)\n"
        "x, w = dyadic((2, 32, 7, 7)), dyadic((2, 36, 32, 3, 3), scale=256)\n"
        "a, s, seed = torch.randint(-1, 2, (2, 7, 7)), torch.tensor([0.5, 2.0]).double(), "
        "torch.tensor([8])\n"
        "io = IOParameters(out_bound=2.0, bound_management='iterative')\n"
        "y = analog_conv_forward(x, w, None, a, s, (1, 1), (1, 1), io, seed=seed)\n"
        "assert torch.equal(y, reference_forward(x, w, None, a, s, (1, 1), (1, 1), io, seed))\n"
        "g = dyadic((2, 36, 7, 7))\n"
        "gx = analog_conv_input_grad(g, x, w, a, s, (1, 1), (1, 1), io, seed=seed)\n"
        "torch.testing.assert_close(gx, reference_input_grad(g, x, w, a, s, (1, 1), (1, 1), io, seed), rtol=1e-13, atol=1e-13)\n")
    run_with_cpu_isa(isa, code)


def rows_path(conv, x, generator_seed):
    """The module's output and gradients the row-by-row way (the CUDA path, run here on the
    CPU): patch rows, ArrayProducts.matmul, bias; the same seeds drawn in the same order as
    the fused path."""
    torch.manual_seed(generator_seed)
    h, w = x.shape[2:]
    ho = (h + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    wo = (w + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    return _rows_analog_conv(x, conv.weight3(), conv.bias, None, (ho, wo), conv.kernel_size,
                             conv.stride, conv.padding, conv.arrays, None)


@pytest.mark.parametrize("kind", ["rpu", "hic"])
def test_a_module_records_what_its_arrays_learn_from_as_the_rows_would(kind):
    """TiledConv2d on the CPU (fused) against the row-by-row path: the same output, input and
    bias gradients, and the same update record: the rows' (x, d) for RPU arrays (made from the
    kept image), d x^T summed for HIC arrays."""
    torch.manual_seed(0)
    config = RPUConfig() if kind == "rpu" else HICConfig(weight_range=0.5)
    conv = TiledConv2d(3, 5, 3, padding=1, rpu_config=config).double()
    x = torch.randn(2, 3, 7, 7, dtype=F64)
    target = torch.randn(2, 5, 7, 7, dtype=F64)
    results = []
    for fused in (True, False):
        # A channels-last input (as an analog layer hands on): the kept image is plain.
        xi = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        conv.zero_grad()
        torch.manual_seed(4)
        out = conv(xi) if fused else rows_path(conv, xi, 4)
        ((out - target) ** 2).sum().backward()
        (entry,) = conv.arrays.pending
        conv.arrays.pending.clear()
        results.append((out.detach(), xi.grad, conv.bias.grad.clone(), entry))
    (y, gx, gb, fused_entry), (y_ref, gx_ref, gb_ref, rows_entry) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-12, atol=1e-12)
    if kind == "rpu":
        assert fused_entry[0].is_contiguous()
        for mine, theirs in zip(fused_entry.rows(), rows_entry):
            assert torch.equal(mine, theirs)
    else:
        x_rows, d, _ = rows_entry
        torch.testing.assert_close(fused_entry, (d.t() @ x_rows).unsqueeze(0), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("path", ["fused", "rows"])
def test_tiled_outputs_and_bias_gradients_per_array(path):
    """analog_conv with tiles (some patches dropped): the output is the reference's, and each
    array's bias gradient sums the output gradient over that array's patches only (array 0
    included, dropped patches in none), as autograd through the reference gives; the CPU's
    fused kernels and the rows' path of the GPU (laid out for the largest array's count)."""
    torch.manual_seed(2)
    t, o, c = 3, 4, 2
    arrays = AnalogArrays(RPUConfig(), (t, o, c * 9)).double()
    arrays.out_scale.copy_(torch.tensor([0.5, 2.0, 1.0]))
    x = torch.randn(2, c, 6, 6, dtype=F64, requires_grad=True)
    weight3 = (torch.randn(t, o, c * 9, dtype=F64) * 0.2).requires_grad_()
    bias = torch.randn(t * o, dtype=F64, requires_grad=True)
    tile = torch.randint(-1, t, (2, 6, 6))
    tile[0, 0, 0], tile[0, 0, 1] = 0, -1
    g = torch.randn(2, o, 6, 6, dtype=F64)
    torch.manual_seed(9)
    if path == "fused":
        out = analog_conv(x, weight3, bias, tile, (3, 3), (1, 1), (1, 1), arrays)
    else:
        largest = int(torch.bincount(tile[tile >= 0], minlength=t).max())
        out = _rows_analog_conv(x, weight3, bias, tile, (6, 6), (3, 3), (1, 1), (1, 1), arrays,
                                largest)
    (out * g).sum().backward()
    torch.manual_seed(9)
    b = bias.detach().clone().requires_grad_()
    ref = reference_forward(x.detach(), weight3.detach().view(t, o, c, 3, 3), b.view(t, o), tile,
                            arrays.out_scale, (1, 1), (1, 1), arrays.config.forward, None)
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert (bias.grad.view(t, o) != 0).all()


def test_a_bound_management_limit_that_could_overflow_is_refused():
    """A reduction that doubles past float32's range would repeat a saturating row forever."""
    with pytest.raises(ValueError, match="max_bm_factor must be in \\[1, 1e30\\]"):
        IOParameters(max_bm_factor=float("inf")).check("forward")
    x, w = torch.zeros(1, 2, 5, 5), torch.zeros(1, 3, 2, 3, 3)
    args = dict(IOParameters().op_args(), max_bm_factor=1e39)
    with pytest.raises(RuntimeError, match="'max_bm_factor' must be in \\[1, 2e30\\]"):
        torch.ops.rapa.analog_conv(x, w, None, torch.zeros(1, 5, 5, dtype=torch.long),
                                   torch.ones(1), torch.tensor([1]), [1, 1], [1, 1], **args)


def test_a_wrong_channel_count_is_named():
    conv = TiledConv2d(3, 5, 3, padding=1, rpu_config=RPUConfig())
    with pytest.raises(ValueError, match="must be \\(N, C, H, W\\) with C = 3 channels"):
        conv(torch.randn(2, 4, 8, 8))
