"""rapa::stochastic_pool: sampling law in training, the weighted average at test time."""
import pytest
import torch

import rapa
import reference

F64 = torch.float64


def test_training_picks_with_probability_proportional_to_value(device):
    # One 3x3 window with known positive values; 40,000 independent draws.
    values = torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 0.5, 0.0, 0.0, 1.5], dtype=F64)
    x = values.view(1, 1, 3, 3).expand(40000, 1, 3, 3).contiguous().to(device)
    out = rapa.stochastic_pool(x, 3, 3, 0, train=True)
    assert out.shape == (40000, 1, 1, 1)
    picked = out.flatten().cpu()
    p = values / values.sum()
    for v in values.unique():
        expected = float(p[values == v].sum())
        freq = float((picked == v).double().mean())
        assert abs(freq - expected) < 5 * (expected * (1 - expected) / 40000) ** 0.5 + 1e-12


def test_training_gradient_goes_to_the_chosen_pixel(device):
    x = torch.rand(2, 3, 9, 9, dtype=F64, device=device)
    u = torch.rand(2, 3, 4, 4, dtype=F64, device=device)
    out, index = torch.ops.rapa.stochastic_pool_train(x, u, [3, 3], [2, 2], [0, 0])
    torch.testing.assert_close(out, x.flatten(2).gather(2, index.flatten(2)).view_as(out))
    g = torch.randn_like(out)
    want = torch.zeros_like(x).flatten(2).scatter_add_(2, index.flatten(2), g.flatten(2))
    xg = x.clone().requires_grad_()
    (got,) = torch.autograd.grad(torch.ops.rapa.stochastic_pool_train(xg, u, [3, 3], [2, 2], [0, 0])[0], xg, g)
    torch.testing.assert_close(got, want.view_as(x))


def test_the_gradient_takes_the_inputs_layout_on_the_cpu():
    """A channels-last input (max_pool's) gets a channels-last gradient with the same values:
    the layers before it then read it without a transposing copy."""
    x = torch.rand(2, 3, 9, 9, dtype=F64)
    u = torch.rand(2, 3, 4, 4, dtype=F64)
    g = torch.randn(2, 3, 4, 4, dtype=F64)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        xg = x.contiguous(memory_format=layout).requires_grad_()
        out = torch.ops.rapa.stochastic_pool_train(xg, u, [3, 3], [2, 2], [0, 0])[0]
        (got,) = torch.autograd.grad(out, xg, g)
        assert got.is_contiguous(memory_format=layout)
        grads.append(got)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_training_reproducible_with_generator(device):
    x = torch.rand(2, 3, 8, 8, device=device)
    g1 = torch.Generator(device=device).manual_seed(3)
    g2 = torch.Generator(device=device).manual_seed(3)
    torch.testing.assert_close(rapa.stochastic_pool(x, 3, 2, generator=g1),
                               rapa.stochastic_pool(x, 3, 2, generator=g2))


@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1))])
def test_test_mode_is_weighted_average(device, kernel, stride, padding):
    x = torch.randn(2, 3, 9, 8, dtype=F64, device=device)
    got = rapa.stochastic_pool(x, kernel, stride, padding, train=False)
    torch.testing.assert_close(got, reference.stochastic_pool_test(x, kernel, stride, padding))


def test_all_zero_window(device):
    x = torch.zeros(1, 1, 3, 3, device=device)
    assert float(rapa.stochastic_pool(x, 3, 3, 0, train=False)) == 0.0
    assert float(rapa.stochastic_pool(x, 3, 3, 0, train=True)) == 0.0


def test_gradcheck_test_mode(device):
    x = (torch.rand(2, 2, 7, 7, dtype=F64, device=device) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: rapa.stochastic_pool(x, 3, 2, 1, train=False), (x,))


def test_opcheck(device):
    x = torch.rand(2, 3, 9, 9, device=device, requires_grad=True)
    u = torch.rand(2, 3, 5, 5, device=device)
    torch.library.opcheck(torch.ops.rapa.stochastic_pool_train.default, (x, u, [3, 3], [2, 2], [1, 1]))
    torch.library.opcheck(torch.ops.rapa.stochastic_pool_test.default, (x, [3, 3], [2, 2], [1, 1]))


@pytest.mark.parametrize("train", [False, True])
def test_compile(device, train):
    x = torch.rand(2, 3, 9, 9, device=device, requires_grad=True)
    f = torch.compile(lambda x: rapa.stochastic_pool(x, 3, 2, 0, train=train),
                      fullgraph=True, backend="aot_eager")
    out = f(x)
    out.sum().backward()
    assert out.shape == (2, 3, 4, 4) and x.grad is not None
    if train:  # every output is one of the pixels of its window, and gradients count picks
        assert torch.isin(out.detach(), x.detach()).all()
        assert float(x.grad.sum()) == out.numel()


def test_bad_input(device):
    x = torch.rand(2, 3, 9, 9, device=device)
    with pytest.raises(RuntimeError, match="'uniform' must have the output shape"):
        torch.ops.rapa.stochastic_pool_train(x, torch.rand(2, 3, 3, 3, device=device),
                                             [3, 3], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="'kernel' must be >= 1"):
        rapa.stochastic_pool(x, 0, 2)
