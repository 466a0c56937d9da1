"""The residual nets of nets/resnet.py against a plain torch ResNet (He et al. 2016, section 4.2)
computed from the same weights, for both shortcut options, untiled and tiled."""
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

from rapa.net import Net
from rapa.proto import pb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "nets"))
import resnet  # noqa: E402

F64 = torch.float64


def build(depth, width, tiling, shortcut, batch=4):
    param = resnet.resnet_net(depth, width, tiling, (4, 4, 1), shortcut, batch=batch)
    param = resnet.with_inputs(param, batch)
    net = Net(param, pb.TRAIN).double()
    net.train()
    return net


def reference(net, x, depth, width, shortcut, assignments):
    """He et al.'s CIFAR ResNet in plain torch ops, reading the rapa net's blobs by layer
    name; `assignments` gives each tiled convolution's tile per output pixel."""
    def conv(name, h, stride):
        m = net.layer(name).module
        if not m.tiled:
            return F.conv2d(h, m.weight, None, stride, m.padding)
        a = assignments[name]
        out = 0
        for t in range(m.weight.shape[0]):
            out = out + F.conv2d(h, m.weight[t], None, stride, m.padding) * \
                (a == t).unsqueeze(1).to(h.dtype)
        return out

    def bn_scale(name, h):
        h = F.batch_norm(h, None, None, training=True, eps=1e-5)
        s = net.layer(f"{name}_scale").module
        return h * s.weight.view(1, -1, 1, 1) + s.bias.view(1, -1, 1, 1)

    h = F.relu(bn_scale("conv1", conv("conv1", x, 1)))
    n, c = (depth - 2) // 6, 16 * width
    for stage in range(3):
        out = 16 * width * 2 ** stage
        for block in range(n):
            b = f"stage{stage + 1}_block{block + 1}"
            stride = 2 if stage and not block else 1
            y = F.relu(bn_scale(f"{b}_conv1", conv(f"{b}_conv1", h, stride)))
            y = bn_scale(f"{b}_conv2", conv(f"{b}_conv2", y, 1))
            if stride == 1 and out == c:
                short = h
            elif shortcut == "A":  # every other pixel, zero channels
                short = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 0, out - c))
            else:
                short = bn_scale(f"{b}_proj", conv(f"{b}_proj", h, stride))
            h = F.relu(y + short)
            c = out
    fc = net.layer("fc").module
    return F.linear(h.mean((2, 3)), fc.weight, fc.bias)


@pytest.mark.parametrize("depth,width,tiling,shortcut", [
    (8, 1, "none", "A"), (8, 2, "none", "B"), (14, 1, "random", "A"), (8, 1, "alternate", "B")])
def test_resnet_is_he_et_al_s(depth, width, tiling, shortcut):
    torch.manual_seed(0)
    net = build(depth, width, tiling, shortcut)
    with torch.no_grad():  # non-trivial scales and biases
        for b in net.learnable():
            if b.name.endswith("_scale/0") or b.name.endswith("_scale/1"):
                b.blob.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 32, 32, dtype=F64, requires_grad=True)
    label = torch.tensor([1, 2, 3, 4])
    drawn = {}
    for e in net.entries:  # record the assignments the tiled convolutions draw
        m = e.layer.module
        if getattr(m, "tiled", False):
            assign = m.scheme.assign

            def recording(*a, _assign=assign, _name=e.layer.layer_name, **k):
                drawn[_name] = _assign(*a, **k)
                return drawn[_name]
            m.scheme.assign = recording
    blobs = net({"data": x, "label": label})
    expected = reference(net, x, depth, width, shortcut, drawn)
    torch.testing.assert_close(blobs["fc"], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(blobs["loss"], F.cross_entropy(expected, label))
    g, = torch.autograd.grad(blobs["loss"], x)
    g_ref, = torch.autograd.grad(F.cross_entropy(expected, label), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    # Option A learns nothing in its shortcut; every 3x3 convolution is tiled or none is.
    fixed = [b for b in net.learnable() if b.spec.lr_mult == 0]
    assert all(("_short_" in b.name) for b in fixed) and (shortcut == "A") == bool(fixed)
    tiled = {e.layer.layer_name for e in net.entries if getattr(e.layer.module, "tiled", False)}
    assert (tiling != "none") == bool(tiled) and all(name.count("conv") for name in tiled)


def he_et_al_parameters(depth, width=1, classes=10):
    """Learned parameters of a CIFAR ResNet with option A shortcuts: 3x3 convolutions without
    bias, a scale and a bias per BatchNorm channel, the classifier."""
    n, total, c = (depth - 2) // 6, 3 * 9 * 16 * width + 2 * 16 * width, 16 * width
    for stage in range(3):
        out = 16 * width * 2 ** stage
        for _ in range(n):
            total += c * out * 9 + out * out * 9 + 4 * out
            c = out
    return total + c * classes + classes


@pytest.mark.parametrize("depth,width,millions", [(20, 1, 0.27), (32, 1, 0.46), (20, 2, 1.07)])
def test_parameter_counts_are_he_et_al_s(depth, width, millions):
    net = build(depth, width, "none", "A")
    learned = sum(b.blob.numel() for b in net.learnable() if b.spec.lr_mult)
    assert learned == he_et_al_parameters(depth, width)
    assert round(learned / 1e6, 2) == millions  # He et al.'s Table 6: 0.27M, 0.46M


def test_bad_depth_and_shortcut():
    with pytest.raises(ValueError, match="depth must be 6 n \\+ 2"):
        resnet.resnet_net(21)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        resnet.resnet_net(20, shortcut="C")
