"""rapa.max_pool: torch's max pooling (ceil mode), faster on the CPU, with the same values and
gradients: dense torch is the reference, ties and NaN included."""
import pytest
import torch
import torch.nn.functional as F

import rapa

F64 = torch.float64
GEOMETRIES = [  # (size, kernel, stride, padding)
    ((3, 4, 32, 32), 3, 2, 0),   # the Full net's pool1
    ((2, 5, 9, 7), 3, 2, 1),
    ((2, 3, 8, 8), (2, 3), (2, 1), (1, 0)),
    ((1, 2, 5, 5), 5, 1, 2),
]


def reference(x, kernel, stride, padding):
    return F.max_pool2d(x, kernel, stride, padding, ceil_mode=True)


def values_and_grads(fn, x, g):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    out.backward(g)
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("inputs", ["distinct", "relu", "integers"])
@pytest.mark.parametrize("size,kernel,stride,padding", GEOMETRIES)
def test_same_values_and_gradients_as_torch(device, dtype, inputs, size, kernel, stride, padding):
    x = torch.randn(size, dtype=dtype, device=device)
    if inputs == "relu":  # many windows of tied zeros: the first one must win, as in torch
        x = x.relu()
    elif inputs == "integers":
        x = torch.randint(-2, 3, size, device=device).to(dtype)
    out_ref = reference(x, kernel, stride, padding)
    g = torch.randn_like(out_ref)
    want = values_and_grads(lambda t: reference(t, kernel, stride, padding), x, g)
    got = values_and_grads(lambda t: rapa.max_pool(t, kernel, stride, padding), x, g)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.no_grad():
        assert torch.equal(rapa.max_pool(x, kernel, stride, padding), out_ref)
    assert got[0].is_contiguous() and got[1].is_contiguous()


def test_nan_propagates_and_takes_the_gradient(device):
    x = torch.randn(1, 2, 6, 6, dtype=F64, device=device)
    x[0, 1, 2, 3] = float("nan")
    g = torch.randn(1, 2, 3, 3, dtype=F64, device=device)
    want = values_and_grads(lambda t: reference(t, 3, 2, 0), x, g)
    got = values_and_grads(lambda t: rapa.max_pool(t, 3, 2, 0), x, g)
    torch.testing.assert_close(got[0], want[0], equal_nan=True, rtol=0, atol=0)
    assert torch.equal(got[1], want[1])
    assert got[0][0, 1].isnan().any()


def test_gradcheck_and_non_contiguous_input(device):
    x = torch.randn(2, 3, 7, 9, dtype=F64, device=device).transpose(2, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rapa.max_pool(t, 3, 2, 1), (x,))
    torch.testing.assert_close(rapa.max_pool(x, 3, 2, 1), reference(x, 3, 2, 1), rtol=0, atol=0)


def test_pooling_layer_max_uses_it(monkeypatch):
    from rapa.layers import pooling
    from rapa.nn import pooling as pool_module
    from rapa.proto import pb
    calls = []
    monkeypatch.setattr(pool_module, "max_pool", lambda *a: calls.append(a) or reference(*a))
    lp = pb.LayerParameter(name="pool1", type="Pooling", bottom=["x"], top=["y"])
    lp.pooling_param.pool = pb.PoolingParameter.MAX
    lp.pooling_param.kernel_size, lp.pooling_param.stride = 3, 2
    layer = pooling.Pooling(lp, [(2, 3, 8, 8)], pb.TRAIN)
    x = torch.randn(2, 3, 8, 8)
    (y,) = layer(x)
    assert len(calls) == 1 and torch.equal(y, reference(x, 3, 2, 0))
