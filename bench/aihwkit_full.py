"""The Full net on aihwkit's analog layers, for comparison with rapa (bench/bench_analog.py).

Runs in an environment with aihwkit 1.1.0 (and its torch 2.10.0), never in rapa's:
    AIHWKIT_PYTHON=/path/to/env/bin/python python bench/bench_analog.py
    python bench/aihwkit_full.py speed BATCH SECONDS
prints the training throughput (forward, backward, AnalogSGD) in images/s.
The configuration is aihwkit's SingleRPUConfig with ConstantStepDevice and its default IO and
update parameters: the Gokmen & Vlasov (2016) values that rapa's GokmenVlasov2016 preset uses.
"""
import sys
import time

import torch
import torch.nn.functional as F
from aihwkit.nn import AnalogConv2d, AnalogLinear
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.configs import ConstantStepDevice, SingleRPUConfig


class LRNWithin(torch.nn.Module):
    def forward(self, x):
        return x * (1 + 5e-5 * F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)) ** -0.75


def full_net(config):
    return torch.nn.Sequential(
        AnalogConv2d(3, 32, 5, padding=2, rpu_config=config), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True), LRNWithin(),
        AnalogConv2d(32, 32, 5, padding=2, rpu_config=config), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True), LRNWithin(),
        AnalogConv2d(32, 64, 5, padding=2, rpu_config=config), torch.nn.ReLU(),
        torch.nn.AvgPool2d(3, 2, ceil_mode=True), torch.nn.Flatten(),
        AnalogLinear(64 * 4 * 4, 10, rpu_config=config))


def speed(batch, seconds):
    torch.manual_seed(0)
    model = full_net(SingleRPUConfig(device=ConstantStepDevice()))
    opt = AnalogSGD(model.parameters(), lr=0.001)
    opt.regroup_param_groups(model)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    step()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        count += batch
    print(count / (time.perf_counter() - t0))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "speed":
        sys.exit("usage: aihwkit_full.py speed BATCH SECONDS")
    speed(int(sys.argv[2]), float(sys.argv[3]))
