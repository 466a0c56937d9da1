"""Training throughput of CIFAR ResNet-32 (He et al. 2016) built by rapa from prototxt, against
the same net written by hand in torch.nn, in one run.

    python bench/bench_resnet.py [--device cpu|cuda] [--batch 128] [--repeat 10] [--width 1]

Nets (one training step = forward, backward, SGD with momentum and weight decay; the same
in-memory batch):
  rapa none     nets/resnet.py's ResNet-32 (option A shortcuts), untiled: Convolution,
                BatchNorm, Scale, ReLU, Eltwise, Concat layers
  rapa random   the same with random tiling (16, 4, 1) on every 3x3 convolution
  torch.nn      the same net by hand: Conv2d (no bias), BatchNorm2d (affine), ReLU; the
                option A shortcut as x[:, :, ::2, ::2] and zero channels (F.pad)
The variants take turns within every repetition; figures are medians. Ratios are against
torch.nn: above 1 is faster.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

import rapa  # noqa: F401
from rapa.allocator import keep_freed_memory
from rapa.net import Net
from rapa.proto import pb
from rapa.sgd import SGD

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "nets"))
from bench_ops import bench_device, timed  # noqa: E402  (bench/ is on the path when run as a script)
import resnet  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.pad = cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if not self.pad else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.pad))
        return F.relu(y + short)


def handwritten_resnet(depth=32, width=1, classes=10) -> torch.nn.Module:
    n, c = (depth - 2) // 6, 16 * width
    layers = [torch.nn.Conv2d(3, c, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(c),
              torch.nn.ReLU()]
    for stage in range(3):
        out = 16 * width * 2 ** stage
        for block in range(n):
            layers.append(Block(c, out, 2 if stage and not block else 1))
            c = out
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, classes)]
    return torch.nn.Sequential(*layers)


def rapa_step(tiling, batch, width, device):
    param = resnet.with_inputs(resnet.resnet_net(32, width, tiling, (16, 4, 1), batch=batch),
                               batch)
    net = Net(param, pb.TRAIN).to_device(device)
    net.train()
    sgd = SGD(net.learnable(), momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device) * 50
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        net.loss(net({"data": x, "label": y})).backward()
        sgd.step(0.01)
    return step


def torch_step(batch, width, device):
    model = handwritten_resnet(32, width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device) * 50
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[128])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--width", type=int, default=1)
    args = p.parse_args()
    memory = "freed memory kept" if keep_freed_memory() else "system malloc"
    device = bench_device(args.device)
    torch.manual_seed(0)
    print(f"ResNet-32 (width {args.width}) training throughput, images/s ({device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}, {memory})")
    print(f"{'batch':>5} {'rapa none':>10} {'rapa random':>12} {'torch.nn':>9} "
          f"{'none/nn':>8} {'random/nn':>10}")
    for batch in args.batch:
        steps = [rapa_step("none", batch, args.width, device),
                 rapa_step("random", batch, args.width, device),
                 torch_step(batch, args.width, device)]
        ms = timed(steps, device, args.repeat, warmup=2)
        ips = [batch * 1e3 / t for t in ms]
        print(f"{batch:>5} {ips[0]:>10.0f} {ips[1]:>12.0f} {ips[2]:>9.0f} "
              f"{ips[0] / ips[2]:>8.2f} {ips[1] / ips[2]:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
