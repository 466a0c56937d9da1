"""rapa::tiled_conv against dense PyTorch: values, gradients, opcheck, compile, bad input."""
import pytest
import torch
import torch.nn.functional as F

import rapa
import reference

F64 = torch.float64


def make(device, n=3, c=4, h=9, w=7, t=3, o=5, k=(3, 3), dtype=F64, bias=True):
    x = torch.randn(n, c, h, w, dtype=dtype, device=device)
    weight = torch.randn(t, o, c, *k, dtype=dtype, device=device)
    b = torch.randn(t, o, dtype=dtype, device=device) if bias else None
    return x, weight, b


def out_size(h, w, k, stride, padding):
    return ((h + 2 * padding[0] - k[0]) // stride[0] + 1,
            (w + 2 * padding[1] - k[1]) // stride[1] + 1)


@pytest.mark.parametrize("stride,padding,k", [((1, 1), (0, 0), (3, 3)), ((2, 1), (1, 2), (3, 5)),
                                              ((1, 1), (2, 2), (5, 5)), ((3, 2), (0, 1), (2, 3))])
@pytest.mark.parametrize("bias", [True, False])
def test_one_tile_equals_conv2d(device, stride, padding, k, bias):
    x, weight, b = make(device, t=1, k=k, bias=bias)
    ho, wo = out_size(9, 7, k, stride, padding)
    assignment = torch.zeros(3, ho, wo, dtype=torch.int64, device=device)
    got = rapa.tiled_conv(x, weight, b, assignment, stride, padding)
    want = F.conv2d(x, weight[0], None if b is None else b[0], stride, padding)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1)), ((2, 2), (2, 1)), ((1, 2), (0, 0))])
@pytest.mark.parametrize("with_region", [False, True])
@pytest.mark.parametrize("drop", [False, True])
def test_many_tiles_match_masked_reference(device, stride, padding, with_region, drop):
    t = 4
    x, weight, b = make(device, t=t, k=(3, 3))
    ho, wo = out_size(9, 7, (3, 3), stride, padding)
    assignment = torch.randint(-1 if drop else 0, t, (3, ho, wo), device=device)
    region = torch.randint(0, t, (9, 7), device=device) if with_region else None
    x.requires_grad_(); weight.requires_grad_(); b.requires_grad_()
    got = rapa.tiled_conv(x, weight, b, assignment, stride, padding, region)
    want = reference.tiled_conv(x, weight, b, assignment, stride, padding, region)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(got)
    for g, r in zip(torch.autograd.grad(got, (x, weight, b), grad),
                    torch.autograd.grad(want, (x, weight, b), grad)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("tiles", [1, 4])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("with_region", [False, True])
def test_a_tile_capacity_changes_nothing_but_the_layout(device, tiles, drop, with_region):
    """With tile_capacity the CUDA kernels take the layout built without a copy to the host
    (and one tile masks always): values and gradients stay those of the reference."""
    x, weight, b = make(device, t=tiles)
    assignment = torch.randint(-1 if drop else 0, tiles, (3, 7, 5), device=device)
    region = torch.randint(0, tiles, (9, 7), device=device) if with_region else None
    largest = int(torch.bincount(assignment[assignment >= 0].cpu(), minlength=tiles).max())
    want = reference.tiled_conv(x, weight, b, assignment, 1, 0, region)
    grad = torch.randn_like(want)
    for capacity in (largest, min(largest + 5, assignment.numel())):
        inputs = [t.clone().requires_grad_() for t in (x, weight, b)]
        got = rapa.tiled_conv(*inputs, assignment, 1, 0, region, tile_capacity=capacity)
        torch.testing.assert_close(got, want)
        ref_inputs = [t.clone().requires_grad_() for t in (x, weight, b)]
        ref = reference.tiled_conv(*ref_inputs, assignment, 1, 0, region)
        for g, r in zip(torch.autograd.grad(got, inputs, grad),
                        torch.autograd.grad(ref, ref_inputs, grad)):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("bad", [1, -2])
def test_one_tile_with_a_capacity_checks_the_range_without_the_host(bad):
    """The path CUDA takes with a capacity (a device-side assertion, no copy to the host),
    which the CPU takes too; without a capacity the message names the value."""
    x, weight, b = make("cpu", t=1)
    assignment = torch.zeros(3, 7, 5, dtype=torch.int64)
    assignment[1, 2, 3] = bad
    with pytest.raises(RuntimeError, match=r"outside \[-1, 1\) \(one tile\)"):
        rapa.tiled_conv(x, weight, b, assignment, 1, 0, tile_capacity=105)
    with pytest.raises(RuntimeError, match=f"holds {bad}, but entries must be"):
        rapa.tiled_conv(x, weight, b, assignment, 1, 0)


@pytest.mark.parametrize("capacity", [-2, 106])
def test_a_tile_capacity_out_of_range_is_refused(device, capacity):
    x, weight, b = make(device, t=3)
    assignment = (torch.arange(105, device=device) % 3).view(3, 7, 5)
    with pytest.raises(RuntimeError, match=rf"'tile_capacity' must be -1 \(not known\) or a "
                                           rf"patch count in \[0, 105\], got {capacity}"):
        rapa.tiled_conv(x, weight, b, assignment, 1, 0, tile_capacity=capacity)


def test_a_tile_capacity_too_small_is_refused_on_the_cpu():
    x, weight, b = make("cpu", t=3)
    assignment = (torch.arange(105) % 3).view(3, 7, 5)  # 35 patches each
    with pytest.raises(RuntimeError, match="'tile_capacity' is 34, but tile 0 gets 35 patches"):
        rapa.tiled_conv(x, weight, b, assignment, 1, 0, tile_capacity=34)
    y = rapa.tiled_conv(x, weight.requires_grad_(), b, assignment, 1, 0, tile_capacity=35)
    with pytest.raises(RuntimeError, match="'tile_capacity' is 20, but tile 0 gets 35"):
        torch.ops.rapa.tiled_conv_backward(torch.ones_like(y), x, weight, assignment, [1, 1],
                                           [0, 0], None, [True, True, False], tile_capacity=20)


def test_float32_close_to_float64(device):
    x, weight, b = make(device, n=4, c=3, h=16, w=16, t=4, o=8, k=(5, 5))
    assignment = rapa.random_assign(4, 16, 16, 4, device=device)
    want = reference.tiled_conv(x, weight, b, assignment, 1, 2)
    got = rapa.tiled_conv(x.float(), weight.float(), b.float(), assignment, 1, 2)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c,o,with_region", [(32, 32, False), (32, 40, True), (16, 24, False)])
def test_paper_sized_layer_matches_reference(device, dtype, c, o, with_region):
    """Layer 2 of the paper's net at a small batch (32 -> 32 channels, 16x16, 5x5, T = 4), and
    neighbours: kw * C a multiple of the CPU kernels' vector blocks or not, O not a multiple
    of their 8-row blocks, with and without a region map, dropped patches."""
    x, weight, b = make(device, n=6, c=c, h=16, w=16, t=4, o=o, k=(5, 5))
    assignment = rapa.random_assign(6, 16, 16, 4, device=device)
    assignment[0, 3, 4] = -1
    region = torch.randint(0, 4, (16, 16), device=device) if with_region else None
    want_inputs = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_())
    got_inputs = tuple(t.detach().to(dtype).requires_grad_() for t in want_inputs)
    got = rapa.tiled_conv(*got_inputs, assignment, 1, 2, region)
    want = reference.tiled_conv(*want_inputs, assignment, 1, 2, region)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-3}
    torch.testing.assert_close(got.double(), want, **tol)
    grad = torch.randn_like(want)
    for g, r in zip(torch.autograd.grad(got, got_inputs, grad.to(dtype)),
                    torch.autograd.grad(want, want_inputs, grad)):
        torch.testing.assert_close(g.double(), r, **({} if dtype == torch.float64 else
                                                     {"rtol": 1e-4, "atol": 5e-3}))


@pytest.mark.parametrize("with_region", [False, True])
def test_gradcheck(device, with_region):
    x, weight, b = make(device, n=2, c=2, h=5, w=6, t=3, o=2, k=(3, 2))
    assignment = torch.randint(-1, 3, (2, 5, 5), device=device)
    region = torch.randint(0, 3, (5, 6), device=device) if with_region else None
    inputs = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda *a: rapa.tiled_conv(*a, assignment, (1, 1), (1, 0), region), inputs)


def test_opcheck(device):
    x, weight, b = make(device, n=2, c=3, h=6, w=6, t=2, o=4)
    assignment = torch.randint(-1, 2, (2, 6, 6), device=device)
    region = torch.randint(0, 2, (6, 6), device=device)
    for args in [(x, weight, b, assignment, [1, 1], [1, 1]),
                 (x.requires_grad_(), weight.requires_grad_(), None, assignment, [1, 1], [1, 1], region)]:
        torch.library.opcheck(torch.ops.rapa.tiled_conv.default, args)
        torch.library.opcheck(torch.ops.rapa.tiled_conv.default, args,
                              {"tile_capacity": 2 * 6 * 6})


def test_torch_compile_fullgraph(device):
    x, weight, b = make(device, n=2, c=3, h=8, w=8, t=4, o=4)
    x.requires_grad_(); weight.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, weight, b, assignment):
        return rapa.tiled_conv(x, weight, b, assignment, 1, 1).relu().sum()

    assignment = rapa.random_assign(2, 8, 8, 4, device=device)
    got = f(x, weight, b, assignment)
    got.backward()
    want = reference.tiled_conv(x, weight, b, assignment, 1, 1).relu().sum()
    torch.testing.assert_close(got, want)


def test_empty_batch(device):
    x, weight, b = make(device, n=0)
    inputs = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_())
    assignment = torch.zeros(0, 7, 5, dtype=torch.int64, device=device)
    y = rapa.tiled_conv(*inputs, assignment, 1, 0)
    assert y.shape == (0, 5, 7, 5)
    gx, gw, gb = torch.autograd.grad(y.sum(), inputs)
    assert gx.shape == x.shape and not gw.abs().sum() and not gb.abs().sum()


def expect_error(match, fn):
    with pytest.raises(RuntimeError, match=match):
        fn()


def test_bad_input_names_the_argument(device):
    x, weight, b = make(device)
    a = torch.zeros(3, 7, 5, dtype=torch.int64, device=device)
    conv = torch.ops.rapa.tiled_conv
    expect_error("'input' must be float32 or float64", lambda: conv(x.int(), weight, b, a, [1, 1], [0, 0]))
    expect_error("'weight' has dtype", lambda: conv(x, weight.float(), b, a, [1, 1], [0, 0]))
    expect_error("'weight' has 4 input channels", lambda: conv(x[:, :3], weight, b, a, [1, 1], [0, 0]))
    expect_error("'weight' must be 5-D", lambda: conv(x, weight[0], b, a, [1, 1], [0, 0]))
    expect_error("'bias' must have shape", lambda: conv(x, weight, b[:, :2], a, [1, 1], [0, 0]))
    expect_error("'assignment' must be Long", lambda: conv(x, weight, b, a.int(), [1, 1], [0, 0]))
    expect_error(r"'assignment' must have shape \(N, Ho, Wo\) = \(3, 7, 5\)",
                 lambda: conv(x, weight, b, a[:, :3], [1, 1], [0, 0]))
    expect_error("'stride' must be >= 1", lambda: conv(x, weight, b, a, [0, 1], [0, 0]))
    expect_error("'region' must have shape", lambda: conv(
        x, weight, b, a, [1, 1], [0, 0], torch.zeros(2, 2, dtype=torch.int64, device=device)))
    for bad in (3, -2):
        a_bad = a.clone()
        a_bad[1, 2, 3] = bad
        expect_error(f"'assignment' holds {bad}", lambda: conv(x, weight, b, a_bad, [1, 1], [0, 0]))
    with pytest.raises(ValueError, match="'stride' must be an int or two ints"):
        rapa.tiled_conv(x, weight, b, a, (1, 1, 1), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a second device")
def test_tensors_on_different_devices():
    x, weight, b = make("cpu")
    a = torch.zeros(3, 7, 5, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="on cuda"):
        rapa.tiled_conv(x.cuda(), weight, b, a, 1, 0)
    with pytest.raises(RuntimeError, match="'assignment' is on"):
        rapa.tiled_conv(x.cuda(), weight.cuda(), b.cuda(), a, 1, 0)


@pytest.mark.parametrize("with_region", [False, True])
def test_single_tile_with_dropped_patches_and_region(device, with_region):
    """T = 1 runs the dense kernel; dropped patches and the region map must still hold."""
    x, weight, b = make(device, t=1, k=(3, 3))
    assignment = torch.randint(-1, 1, (3, 9, 7), device=device)
    region = torch.randint(0, 2, (9, 7), device=device) if with_region else None
    inputs = (x.requires_grad_(), weight.requires_grad_(), b.requires_grad_())
    got = rapa.tiled_conv(*inputs, assignment, 1, 1, region)
    want = reference.tiled_conv(*inputs, assignment, 1, 1, region)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(got)
    for g, r in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(want, inputs, grad)):
        torch.testing.assert_close(g, r)
    small = [t.detach()[:2, :, :4, :4].clone().requires_grad_() if i == 0 else t for i, t in enumerate(inputs)]
    assert torch.autograd.gradcheck(
        lambda *a: rapa.tiled_conv(*a, assignment[:2, :4, :4], 1, 1,
                                   None if region is None else region[:4, :4]), tuple(small))
    bad = assignment.clone()
    bad[0, 0, 0] = 1
    with pytest.raises(RuntimeError, match="'assignment' holds 1"):
        rapa.tiled_conv(x, weight, b, bad, 1, 1)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_cpu_kernel_variant(isa):
    """The CPU kernels exist per instruction set; RAPA_CPU_ISA selects a narrower one."""
    from conftest import run_with_cpu_isa
    code = (
        "import torch, rapa, reference\n"
        "for c, o in ((3, 8), (32, 32)):\n"
        "    x = torch.randn(3, c, 9, 9, dtype=torch.float64, requires_grad=True)\n"
        "    w = torch.randn(4, o, c, 5, 5, dtype=torch.float64, requires_grad=True)\n"
        "    a = torch.randint(-1, 4, (3, 9, 9))\n"
        "    y = rapa.tiled_conv(x, w, None, a, 1, 2)\n"
        "    r = reference.tiled_conv(x, w, None, a, 1, 2)\n"
        "    torch.testing.assert_close(y, r)\n"
        "    for p, q in zip(torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(r.sum(), (x, w))):\n"
        "        torch.testing.assert_close(p, q)\n")
    run_with_cpu_isa(isa, code)
