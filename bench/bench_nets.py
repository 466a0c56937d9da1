"""Training throughput of the paper's Full net, and the throughput of the data path.

    python bench/bench_nets.py [--device cpu|cuda] [--batch 10 100] [--repeat 30]

Nets (one training step = forward, backward, Caffe's SGD update; the same in-memory batch):
  rapa random   prototxt/cifar10/random_max.prototxt: random tiling (16, 4, 1), built by rapa
  rapa plain    prototxt/cifar10/none_max.prototxt: the same net with plain Convolution
  torch.nn      the same net written by hand in torch.nn, trained with torch.optim.SGD
The variants take turns within every repetition; figures are medians. Ratios are against the
hand-written net: above 1 is faster. On CUDA a second table has each step recorded as a CUDA
graph and replayed (rapa.cuda_graph.GraphedStep, what rapa train does), against the
hand-written net's graph.
Data path: batches of the training LMDB (data/cifar10, or a synthetic one of the same shape)
read, decoded and augmented (mirror, brightness, mean; and strong augmentation) by the
background prefetcher's threads or worker processes (--data-threads, --data-processes), and on
CUDA copied to the GPU from page-locked memory, consumed as fast as they come; with the CPU time
the training process itself spends per image (what the workers take off it).
Freed memory is kept for reuse, as the rapa command does (rapa.allocator); --system-malloc
measures with glibc's defaults.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import resource
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import rapa  # noqa: F401
from rapa.allocator import keep_freed_memory
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import read_text
from rapa.sgd import SGD

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from bench_ops import bench_device, timed  # noqa: E402  (bench/ is on the path when run as a script)


class LRNWithin(torch.nn.Module):
    def forward(self, x):
        return x * (1 + 5e-5 * F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)) ** -0.75


def handwritten_full() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 5, padding=2), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True), LRNWithin(),
        torch.nn.Conv2d(32, 32, 5, padding=2), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, ceil_mode=True), LRNWithin(),
        torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(),
        torch.nn.AvgPool2d(3, 2, ceil_mode=True), torch.nn.Flatten(),
        torch.nn.Linear(64 * 4 * 4, 10))


def data_tree() -> pathlib.Path:
    if (ROOT / "data/cifar10/cifar10_train_lmdb").exists():
        return ROOT
    from datasets import cifar_tree
    tmp = pathlib.Path(tempfile.mkdtemp())
    cifar_tree(tmp, n_train=2000, n_test=100)
    return tmp


def net_step(path, batch, device, *, edit=None, lr=1e-4, momentum=0.9, weight_decay=1e-4,
             pixels=False):
    """(step, net): one training step (forward, backward, rapa's SGD at `lr`) of the net at
    `path` with its Data layers' batch set to `batch`, on one in-memory batch: Gaussian inputs
    of std 50, or with `pixels` uniform in [-128, 127] (mean-subtracted pixels' range).
    edit(layer), when given, changes each layer's parameters before the net is built. The
    benchmarks of bench_analog.py and bench_hic.py build theirs with it too."""
    param = read_text(path, pb.NetParameter())
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.batch_size = batch
        if edit is not None:
            edit(layer)
    net = Net(param, pb.TRAIN, source=str(path)).to_device(device)
    net.train()
    x = (torch.rand(batch, 3, 32, 32, device=device) * 255 - 128 if pixels
         else torch.randn(batch, 3, 32, 32, device=device) * 50)
    y = torch.randint(0, 10, (batch,), device=device)
    sgd = SGD(net.learnable(), momentum=momentum, weight_decay=weight_decay)
    rate = torch.tensor(lr, dtype=torch.float64, device=device)  # read on the device, as
    # rapa train's rate is (a CUDA graph can hold the step)

    def step():
        loss = net.loss(net({"data": x, "label": y}))
        loss.backward()
        sgd.step(rate)
    return step, net


def torch_step(batch, device):
    model = handwritten_full().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device) * 50
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def graphed(step):
    """`step` recorded as a CUDA graph (warm-up and recording done here), as rapa train
    records its step; returns the replay."""
    from rapa.cuda_graph import GraphedStep
    g = GraphedStep(lambda batches: (step(),), warmup=3)
    for _ in range(4):
        g([])
    if g.failed:
        raise SystemExit(f"bench_nets: the step could not be recorded: {g.failed}")
    return lambda: g([])


def add_malloc_option(parser):
    parser.add_argument("--system-malloc", action="store_true",
                        help="glibc's default allocation (every large buffer paged in anew)")


def memory_setting(args) -> tuple[bool, str]:
    """Freed memory kept for reuse unless --system-malloc: (whether it is, a label)."""
    kept = not args.system_malloc and keep_freed_memory()
    return kept, "freed memory kept" if kept else "system malloc"


def bench_nets(device, batches, repeat, memory):
    print(f"Training throughput, images/s ({device}, {torch.get_num_threads()} threads, "
          f"median of {repeat}, {memory})")
    print(f"{'batch':>5} {'rapa random':>12} {'rapa plain':>11} {'torch.nn':>9} "
          f"{'random/nn':>10} {'plain/nn':>9}")
    nets = []
    for batch in batches:
        random_step, n1 = net_step(ROOT / "prototxt/cifar10/random_max.prototxt", batch, device)
        plain_step, n2 = net_step(ROOT / "prototxt/cifar10/none_max.prototxt", batch, device)
        nets += [n1, n2]
        inner = max(1, 200 // batch)
        ms = timed([random_step, plain_step, torch_step(batch, device)], device, repeat,
                   inner=inner)
        ips = [batch * 1e3 / t for t in ms]
        print(f"{batch:>5} {ips[0]:>12.0f} {ips[1]:>11.0f} {ips[2]:>9.0f} "
              f"{ips[0] / ips[2]:>10.2f} {ips[1] / ips[2]:>9.2f}")
    if device.type == "cuda":
        print("\nEach step recorded as a CUDA graph and replayed (ratios against torch.nn's graph)")
        print(f"{'batch':>5} {'rapa random':>12} {'rapa plain':>11} {'torch.nn':>9} "
              f"{'random/nn':>10} {'plain/nn':>9}")
        for batch in batches:
            random_step, n1 = net_step(ROOT / "prototxt/cifar10/random_max.prototxt", batch,
                                       device)
            plain_step, n2 = net_step(ROOT / "prototxt/cifar10/none_max.prototxt", batch, device)
            nets += [n1, n2]
            steps = [graphed(random_step), graphed(plain_step), graphed(torch_step(batch, device))]
            ms = timed(steps, device, repeat, inner=max(1, 2000 // batch))
            ips = [batch * 1e3 / t for t in ms]
            print(f"{batch:>5} {ips[0]:>12.0f} {ips[1]:>11.0f} {ips[2]:>9.0f} "
                  f"{ips[0] / ips[2]:>10.2f} {ips[1] / ips[2]:>9.2f}")
    for n in nets:
        n.close()


def bench_data(batches, device, preparers=(("threads", 1),), seconds=3.0):
    root = data_tree()
    print(f"\nData path, images/s (LMDB {root / 'data/cifar10/cifar10_train_lmdb'}, read + "
          f"decode + transform" + (f" + copy to {device}" if device.type != "cpu" else "") + ")")
    for strong, batch, (kind, n) in ((s, b, p) for s in (False, True) for b in batches
                                     for p in preparers):
        param = pb.NetParameter()
        layer = param.layer.add(name="data", type="Data", top=["data", "label"])
        layer.data_param.source = str(root / "data/cifar10/cifar10_train_lmdb")
        layer.data_param.batch_size = batch
        setattr(layer.data_param, kind, n)
        tp = layer.transform_param
        tp.mean_file = str(root / "data/cifar10/mean.binaryproto")
        tp.mirror, tp.brightness = True, 20
        if strong:
            tp.strong_augmentation.max_scale = 1.3
        net = Net(param, pb.TRAIN).to_device(device)
        # As a net with a 10-class loss has it: each batch's labels are range-checked.
        net.layer("data").limit_labels(10, None, "the loss")
        for _ in range(3 * net.layer("data").prefetcher.chunk_batches):  # workers started
            net.read_data()
        count, t0, cpu0 = 0, time.perf_counter(), own_cpu_seconds()
        while time.perf_counter() - t0 < seconds:
            count += net.read_data()["data"].shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = count / (time.perf_counter() - t0)
        cpu_per_image = (own_cpu_seconds() - cpu0) / count
        net.close()
        what = "mirror+brightness+mean" + (" +strong" if strong else "")
        print(f"  batch {batch:>4}, {what:<30} {n:>2} {kind:<9} {rate:>9.0f} img/s, "
              f"{cpu_per_image * 1e6:5.1f} us of the training process's CPU per image")


def own_cpu_seconds() -> float:
    """CPU time of this process, its threads included, its worker processes not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[10, 100])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--skip-nets", action="store_true")
    p.add_argument("--data-threads", type=int, nargs="+", default=[1, 2],
                   help="prefetch threads of the data path's runs (data_param.threads)")
    p.add_argument("--data-processes", type=int, nargs="*", default=[2],
                   help="worker processes of the data path's runs (data_param.processes)")
    add_malloc_option(p)
    args = p.parse_args()
    _, memory = memory_setting(args)
    device = bench_device(args.device)
    torch.manual_seed(0)
    os.chdir(data_tree())  # the nets' Data layers open the prototxt's relative LMDB paths
    if not args.skip_nets:
        bench_nets(device, args.batch, args.repeat, memory)
    if not args.skip_data:
        bench_data(args.batch, device, [("threads", n) for n in args.data_threads] +
                   [("processes", n) for n in args.data_processes])


if __name__ == "__main__":
    main()
