"""Analog training throughput of the Full net: rapa against aihwkit and plain torch.

    python bench/bench_analog.py [--device cpu|cuda] [--batch 128] [--seconds 20]
                                 [--aihwkit-python PATH] [--devices-per-weight N]

Nets (one step = forward, backward, update; the same in-memory batch):
  rapa none      prototxt/cifar10/none_max_rpu.prototxt: every Convolution and the
                 InnerProduct on analog arrays, with the preset set to gokmen_vlasov_2016
                 (the nets' own rasch_2019 has 4 times the states), pulsed updates
  rapa random    prototxt/cifar10/random_max_rpu.prototxt: the same with random tiling
                 (16, 4, 1): 21 arrays
  aihwkit        the Full net of AnalogConv2d/AnalogLinear with aihwkit's ConstantStepDevice
                 and default IO/update parameters (the same Gokmen & Vlasov values), AnalogSGD;
                 run by bench/aihwkit_full.py under --aihwkit-python (aihwkit 1.1.0 needs
                 torch 2.10.0: a separate environment, CPU only), skipped without it or on
                 --device cuda
  torch.nn       the hand-written floating-point Full net (bench_nets.py), torch.optim.SGD
  rapa none, conv1 x N   with --devices-per-weight N: rapa none with N devices per weight in
                 conv1 (Gokmen et al. 2017; update policy all: N times conv1's pulses)
  ..., graphed   on CUDA, each of the above (but aihwkit) also with its whole step recorded
                 once as a CUDA graph and replayed (rapa.cuda_graph, as rapa train runs it;
                 --no-graph leaves them out)
Each is timed for --seconds per round, in turns, over --rounds rounds; figures are medians.
With --profile N, N steps of each rapa net then run under torch.profiler, and the ops (and on
CUDA the kernels) that took the most time of their own are listed: where a step's time goes.
All of them, aihwkit's process included, run with freed memory kept for reuse (rapa.allocator,
as the rapa command does; glibc's own settings for aihwkit), or with --system-malloc all with
glibc's defaults.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

import rapa  # noqa: F401
from rapa.allocator import KEEP_FREED_ENV

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_nets import (add_malloc_option, data_tree, graphed, memory_setting, net_step,  # noqa: E402
                        torch_step)
from bench_ops import bench_device  # noqa: E402

# The rate of bench/aihwkit_full.py: with bit-length management it sets how many pulses an
# update takes, so the two must match.
LR = 0.001


def analog_step(path, batch, device, first_layer_devices=1):
    def edit(layer):
        # aihwkit's SingleRPUConfig defaults: the Gokmen & Vlasov device, no weight scaling.
        for sub in (layer.convolution_param, layer.inner_product_param):
            if sub.HasField("rpu_param"):
                sub.rpu_param.Clear()
                sub.rpu_param.preset = "gokmen_vlasov_2016"
                if layer.name == "conv1" and first_layer_devices > 1:
                    sub.rpu_param.device.devices_per_weight = first_layer_devices
    # Plain SGD: the biases' update; the weights take the arrays' pulsed update.
    return net_step(path, batch, device, edit=edit, lr=LR, momentum=0.0, weight_decay=0.0,
                    pixels=True)[0]


def rate(step, batch, seconds, device):
    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        count += batch
        if count % (batch * 20) == 0:  # bounds the queue of launched work on a GPU
            sync()
    sync()
    return count / (time.perf_counter() - t0)


def profile(name, step, steps, device):
    """The top ops of `steps` steps by their own time: device time on CUDA, else CPU time."""
    from torch.profiler import ProfilerActivity
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    wall = (time.perf_counter() - t0) / steps
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(f"\n{name}: {steps} steps under the profiler, {wall * 1e3:.1f} ms a step (with its "
          f"overhead); ops by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--aihwkit-python", default=os.environ.get("AIHWKIT_PYTHON"))
    p.add_argument("--devices-per-weight", type=int, default=1,
                   help="also time rapa none with this many devices per weight in conv1")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="then profile N steps of each rapa net (torch.profiler)")
    p.add_argument("--no-graph", action="store_true",
                   help="on CUDA, leave out the steps recorded as CUDA graphs")
    add_malloc_option(p)
    args = p.parse_args()
    device = bench_device(args.device)
    if device.type != "cpu":
        args.aihwkit_python = None
    kept, memory = memory_setting(args)
    aihwkit_env = dict(os.environ, **(KEEP_FREED_ENV if kept else {}))
    torch.manual_seed(0)
    os.chdir(data_tree())  # the nets' Data layers open the prototxt's relative LMDB paths
    steps = {
        "rapa none": analog_step(ROOT / "prototxt/cifar10/none_max_rpu.prototxt", args.batch,
                                 device),
        "rapa random": analog_step(ROOT / "prototxt/cifar10/random_max_rpu.prototxt", args.batch,
                                   device),
        "torch.nn": torch_step(args.batch, device),
    }
    if args.devices_per_weight > 1:
        steps[f"rapa none, conv1 x {args.devices_per_weight}"] = analog_step(
            ROOT / "prototxt/cifar10/none_max_rpu.prototxt", args.batch, device,
            args.devices_per_weight)
    if device.type == "cuda" and not args.no_graph:
        for name in list(steps):
            try:
                steps[f"{name}, graphed"] = graphed(steps[name])
            except SystemExit as e:  # said, and the other nets still timed
                print(f"{name}: {e}", flush=True)
    results = {k: [] for k in list(steps) + (["aihwkit"] if args.aihwkit_python else [])}
    for _ in range(args.rounds):
        for name, step in steps.items():
            results[name].append(rate(step, args.batch, args.seconds, device))
        if args.aihwkit_python:
            out = subprocess.run([args.aihwkit_python, str(ROOT / "bench/aihwkit_full.py"),
                                  "speed", str(args.batch), str(args.seconds)],
                                 capture_output=True, text=True, check=True, env=aihwkit_env)
            results["aihwkit"].append(float(out.stdout.split()[-1]))
    for name, step in steps.items():  # before the figures, which end the output
        if args.profile and name.startswith("rapa") and not name.endswith("graphed"):
            profile(name, step, args.profile, device)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Analog training throughput, images/s ({device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, median of {args.rounds} rounds of {args.seconds:g} s, {memory})")
    ref_name = "aihwkit" if "aihwkit" in med else "torch.nn"
    ref = med[ref_name]
    for name, value in med.items():
        ratio = f"{value / ref:6.2f}x {ref_name}"
        print(f"  {name:<22} {value:9.1f}  {ratio}")


if __name__ == "__main__":
    main()
