"""HIC training throughput of the Full net against floating point, side by side.

    python bench/bench_hic.py [--device cpu|cuda] [--batch 10 128] [--seconds 10] [--rounds 3]

Nets (one step = forward, backward, update; the same in-memory batch; rate 0.001):
  FP32           prototxt/cifar10/none_max.prototxt: the digital Full net, rapa's SGD
  HIC            prototxt/cifar10/none_max_hic.prototxt: every Convolution and the
                 InnerProduct on HIC arrays (rapa.analog.hic's defaults: products through the
                 Gokmen & Vlasov periphery, the digital accumulator, transfers to the devices;
                 on the CPU the fused rapa.analog_conv and rapa.hic_update)
  HIC, tensor update   the same with the update in HICArrays' tensor code (native_update
                 off, as pulsed programming and CUDA run it): what rapa.hic_update saves
  HIC, exact products   the same with is_perfect forward and backward periphery: what the
                 accumulator and the transfers cost without the periphery's simulation (the
                 untiled convolutions then run as dense convolutions, rapa.analog.analog_conv)
  HIC, pulsed    prototxt/cifar10/none_max_hic_pulsed.prototxt: the multi-level devices
                 programmed by SET pulses (pulse and verify) instead of the statistical model
  RPU            prototxt/cifar10/none_max_rpu.prototxt: the same net on RPU arrays (pulsed
                 updates), for comparison
Each is timed for --seconds per round, in turns, over --rounds rounds; figures are medians and
every ratio is to FP32 of the same run.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys

import torch

import rapa  # noqa: F401
from rapa.allocator import keep_freed_memory
from rapa.analog import HICArrays

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_analog import rate  # noqa: E402
from bench_nets import data_tree, net_step  # noqa: E402
from bench_ops import bench_device  # noqa: E402

LR = 0.001


def hic_step(name, batch, device, exact=False, native=True):
    def edit(layer):
        for sub in (layer.convolution_param, layer.inner_product_param):
            if exact and sub.HasField("hic_param"):
                sub.hic_param.forward.is_perfect = sub.hic_param.backward.is_perfect = True
    step, net = net_step(ROOT / f"prototxt/cifar10/{name}.prototxt", batch, device, edit=edit,
                         lr=LR, momentum=0.0, weight_decay=0.0, pixels=True)
    for module in net.modules():
        if isinstance(module, HICArrays):
            module.native_update = native
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[10, 128])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    device = bench_device(args.device)
    memory = "freed memory kept" if keep_freed_memory() else "system malloc"
    os.chdir(data_tree())  # the nets' Data layers open the prototxt's relative LMDB paths
    print(f"HIC training throughput of the Full net, images/s ({device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds of "
          f"{args.seconds:g} s, {memory})")
    for batch in args.batch:
        torch.manual_seed(0)
        steps = {"FP32": hic_step("none_max", batch, device),
                 "HIC": hic_step("none_max_hic", batch, device),
                 "HIC, tensor update": hic_step("none_max_hic", batch, device, native=False),
                 "HIC, exact products": hic_step("none_max_hic", batch, device, exact=True),
                 "HIC, pulsed": hic_step("none_max_hic_pulsed", batch, device),
                 "RPU": hic_step("none_max_rpu", batch, device)}
        results = {k: [] for k in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                results[name].append(rate(step, batch, args.seconds, device))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"batch {batch}:")
        for name, value in med.items():
            print(f"  {name:<22} {value:9.1f}  {value / med['FP32']:6.2f}x FP32", flush=True)


if __name__ == "__main__":
    main()
