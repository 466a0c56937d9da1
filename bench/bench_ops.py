"""Forward+backward time of rapa.tiled_conv against torch conv2d, side by side in one run.

    python bench/bench_ops.py [--device cpu|cuda] [--batch 100] [--repeat 10]

Every repetition runs the variants in turn, and each figure is a median over the repetitions.
The three conv layers of the paper's Full CIFAR net at batch 100 (5x5 kernels, padding 2):
3->32 on 32x32 with T=16, 32->32 on 16x16 with T=4, 32->64 on 8x8 with T=1, each with a fresh
random assignment. "naive" is the obvious implementation for scale: T dense convolutions,
masked and summed (T times the arithmetic). Ratios are tiled / conv2d: below 1 is faster.
Also times mixed_pool and stochastic_pool against max_pool2d on the pooled shapes.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import rapa

LAYERS = [  # (name, in channels, out channels, side, tiles)
    ("conv1", 3, 32, 32, 16),
    ("conv2", 32, 32, 16, 4),
    ("conv3", 32, 64, 8, 1),
]


def bench_device(name: str) -> torch.device:
    """--device checked as the rapa tools check it: one line and exit where it cannot run."""
    from rapa.device import device_named
    from rapa.errors import RapaError
    try:
        return device_named(name)
    except RapaError as e:
        raise SystemExit(f"{pathlib.Path(sys.argv[0]).name}: {e}") from None


def timed(fns, device, repeat, warmup=3, inner=1):
    """Median milliseconds of each function (per call, over `inner` calls a sample). The
    functions take turns within every repetition, so that all of them see the same conditions
    of a shared machine."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, samples in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples.append((time.perf_counter() - start) / inner)
    return [statistics.median(samples) * 1e3 for samples in times]


def fwd_bwd(make_output, leaves):
    def step():
        for leaf in leaves:
            leaf.grad = None
        out = make_output()
        out.backward(torch.ones_like(out))
    return step


def bench_conv(device, batch, repeat):
    rows = []
    for name, cin, cout, side, tiles in LAYERS:
        x = torch.randn(batch, cin, side, side, device=device, requires_grad=True)
        w = torch.randn(tiles, cout, cin, 5, 5, device=device, requires_grad=True)
        b = torch.randn(tiles, cout, device=device, requires_grad=True)
        w1 = w[0].detach().clone().requires_grad_()
        b1 = b[0].detach().clone().requires_grad_()
        a = rapa.random_assign(batch, side, side, tiles, device=device)
        masks = [(a == t).unsqueeze(1).float() for t in range(tiles)]

        def naive():
            return sum(F.conv2d(x, w[t], b[t], 1, 2) * masks[t] for t in range(tiles))

        dense, tiled, slow = timed([fwd_bwd(lambda: F.conv2d(x, w1, b1, 1, 2), [x, w1, b1]),
                                    fwd_bwd(lambda: rapa.tiled_conv(x, w, b, a, 1, 2), [x, w, b]),
                                    fwd_bwd(naive, [x, w, b])], device, repeat)
        rows.append((f"{name} {cin}->{cout} {side}x{side} T={tiles}", dense, tiled, slow))
    return rows


def bench_pool(device, batch, repeat):
    rows = []
    for name, channels, side in [("pool1", 32, 32), ("pool2", 32, 16)]:
        x = torch.rand(batch, channels, side, side, device=device, requires_grad=True)
        beta = torch.full((channels,), 0.2, device=device, requires_grad=True)
        dense, mixed, stoch = timed(
            [fwd_bwd(lambda: F.max_pool2d(x, 3, 2, 0, ceil_mode=True), [x]),
             fwd_bwd(lambda: rapa.mixed_pool(x, beta, 3, 2, 0), [x, beta]),
             fwd_bwd(lambda: rapa.stochastic_pool(x, 3, 2, 0, True), [x])], device, repeat)
        rows.append((f"{name} {channels}x{side}x{side} 3/2", dense, mixed, stoch))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    device = bench_device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, median of {args.repeat} interleaved runs, forward+backward, ms")
    rows = bench_conv(device, args.batch, args.repeat)
    print(f"{'layer':32} {'conv2d':>8} {'tiled':>8} {'ratio':>6} {'naive':>8} {'ratio':>6}")
    for label, dense, tiled, slow in rows:
        print(f"{label:32} {dense:8.2f} {tiled:8.2f} {tiled / dense:6.2f} {slow:8.2f} {slow / dense:6.2f}")
    total_dense = sum(r[1] for r in rows)
    total_tiled = sum(r[2] for r in rows)
    total_naive = sum(r[3] for r in rows)
    print(f"{'all three layers':32} {total_dense:8.2f} {total_tiled:8.2f} "
          f"{total_tiled / total_dense:6.2f} {total_naive:8.2f} {total_naive / total_dense:6.2f}")
    print(f"\n{'pooling':32} {'maxpool':>8} {'mixed':>8} {'ratio':>6} {'stoch.':>8} {'ratio':>6}")
    for label, dense, mixed, stoch in bench_pool(device, args.batch, args.repeat):
        print(f"{label:32} {dense:8.2f} {mixed:8.2f} {mixed / dense:6.2f} {stoch:8.2f} {stoch / dense:6.2f}")


if __name__ == "__main__":
    main()
