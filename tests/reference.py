"""Plain dense PyTorch references of the rapa operators, used only by the tests."""
import torch
import torch.nn.functional as F


def tiled_conv(x, weight, bias, assignment, stride, padding, region=None):
    """T dense convolutions, each masked to the pixels of its tile (and its region)."""
    out = 0
    for t in range(weight.shape[0]):
        xt = x if region is None else x * (region == t).to(x.dtype)
        yt = F.conv2d(xt, weight[t], None if bias is None else bias[t], stride, padding)
        out = out + yt * (assignment == t).unsqueeze(1).to(x.dtype)
    return out


def mixed_pool(x, beta, kernel, stride, padding, mu=10.0):
    a = torch.sigmoid(mu * beta).view(1, -1, 1, 1)
    mx = F.max_pool2d(x, kernel, stride, padding, ceil_mode=True)
    av = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=True, count_include_pad=True)
    return a * mx + (1 - a) * av


def caffe_windows(h, w, kernel, stride, padding):
    """Caffe's pooling windows as ((h0, h1, w0, w1), divisor) per output position."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding

    def pooled(size, k, s, p):  # pooling_layer.cpp: the correction when either side is padded
        out = -(-(size + 2 * p - k) // s) + 1
        if (ph or pw) and (out - 1) * s >= size + p:
            out -= 1
        return out
    ho, wo = pooled(h, kh, sh, ph), pooled(w, kw, sw, pw)
    windows = {}
    for oy in range(ho):
        for ox in range(wo):
            hs, ws = oy * sh - ph, ox * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            count = (he - hs) * (we - ws)
            windows[oy, ox] = ((max(hs, 0), min(he, h), max(ws, 0), min(we, w)), count)
    return ho, wo, windows


def stochastic_pool_test(x, kernel, stride, padding):
    n, c, h, w = x.shape
    ho, wo, windows = caffe_windows(h, w, kernel, stride, padding)
    out = x.new_zeros((n, c, ho, wo))
    for (oy, ox), ((h0, h1, w0, w1), _) in windows.items():
        v = x[:, :, h0:h1, w0:w1].reshape(n, c, -1)
        wgt = v.clamp_min(0)
        s = wgt.sum(-1)
        out[:, :, oy, ox] = torch.where(s > 0, (wgt * v).sum(-1) / s.clamp_min(1e-300), 0)
    return out
