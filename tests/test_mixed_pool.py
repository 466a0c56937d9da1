"""rapa::mixed_pool against max and average pooling (Caffe geometry) and their mixture."""
import pytest
import torch

import rapa
import reference

F64 = torch.float64
GEOMETRIES = [((3, 3), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0)),
              ((4, 4), (3, 3), (2, 1))]


@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES)
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (32, 32)])
def test_matches_mixture_of_max_and_average(device, kernel, stride, padding, size):
    x = torch.randn(3, 4, *size, dtype=F64, device=device)
    beta = torch.randn(4, dtype=F64, device=device) * 0.3
    got = rapa.mixed_pool(x, beta, kernel, stride, padding)
    torch.testing.assert_close(got, reference.mixed_pool(x, beta, kernel, stride, padding))


def test_limits_are_max_and_average_pooling(device):
    x = torch.randn(2, 3, 16, 16, dtype=F64, device=device)
    big = torch.full((3,), 100.0, dtype=F64, device=device)
    got_max = rapa.mixed_pool(x, big, 3, 2, 0)
    got_avg = rapa.mixed_pool(x, -big, 3, 2, 0)
    torch.testing.assert_close(got_max, torch.nn.functional.max_pool2d(x, 3, 2, 0, ceil_mode=True))
    torch.testing.assert_close(got_avg, torch.nn.functional.avg_pool2d(
        x, 3, 2, 0, ceil_mode=True, count_include_pad=True))
    # mu scales beta: the paper's mu = 10 and beta0 = 2 / mu give a = sigmoid(2)
    beta0 = torch.full((3,), 0.2, dtype=F64, device=device)
    a = torch.sigmoid(torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(rapa.mixed_pool(x, beta0, 3, 2, 0),
                               a * got_max + (1 - a) * got_avg)


@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES[:3])
def test_gradcheck_input_and_beta(device, kernel, stride, padding):
    x = torch.randn(2, 3, 7, 6, dtype=F64, device=device, requires_grad=True)
    beta = torch.randn(3, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, b: rapa.mixed_pool(x, b, kernel, stride, padding, mu=3.0), (x, beta))


def test_gradients_match_reference(device):
    x = torch.randn(4, 5, 16, 16, dtype=F64, device=device, requires_grad=True)
    beta = torch.randn(5, dtype=F64, device=device, requires_grad=True)
    got = rapa.mixed_pool(x, beta, 3, 2, 1)
    want = reference.mixed_pool(x, beta, (3, 3), (2, 2), (1, 1))
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (x, beta), g), torch.autograd.grad(want, (x, beta), g)):
        torch.testing.assert_close(a, b)


def test_opcheck_and_compile(device):
    x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
    beta = torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.rapa.mixed_pool.default, (x, beta, [3, 3], [2, 2], [1, 1]),
                          {"mu": 10.0})
    f = torch.compile(lambda x, b: rapa.mixed_pool(x, b, 3, 2, 1).sum(), fullgraph=True,
                      backend="aot_eager")
    f(x, beta).backward()
    assert x.grad is not None and beta.grad is not None


def test_module_starts_biased_to_max(device):
    pool = rapa.nn.Pool2d("mixed", 3, 2, channels=4).to(device)
    torch.testing.assert_close(pool.beta.detach(), torch.full((4,), 0.2, device=device))


def test_bad_input(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    with pytest.raises(RuntimeError, match=r"'beta' must have shape \(C,\) = \(3,\)"):
        rapa.mixed_pool(x, torch.zeros(4, device=device), 3, 2)
    with pytest.raises(RuntimeError, match="'beta' has dtype"):
        rapa.mixed_pool(x, torch.zeros(3, dtype=F64, device=device), 3, 2)
    with pytest.raises(RuntimeError, match="'padding' .* must be smaller than 'kernel'"):
        rapa.mixed_pool(x, torch.zeros(3, device=device), 3, 2, 3)
    with pytest.raises(RuntimeError, match="'input' must be 4-D"):
        rapa.mixed_pool(x[0], torch.zeros(3, device=device), 3, 2)
