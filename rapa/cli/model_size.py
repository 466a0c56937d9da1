"""Inference model size of a net: bits held per weight, layer by layer (Joshi et al. 2021's
measure), and, given a trained model of a HIC net, its devices' write-erase cycles against
their endurance.

Every learnable blob counts: weights on HIC arrays (hic_param) at the bits their devices hold
(one per binary cell, log2 levels per multi-level device, two of them: rapa.analog.hic), every
other blob (digital weights, biases, BatchNorm statistics, RPU arrays' weights, whose analog
conductances have no bit count) at 32 bits, floating point's. The FP32 column is the same net
with every blob at 32 bits. With --weights, per HIC layer: the write-erase cycles (RESETs) of
its binary cells and of its multi-level devices, maximum, mean and 99.9th percentile, and the
maximum as a fraction of hic_param's endurance; and the transfers its weights' range cut
short (saturations).
"""
import torch

from ..analog import HICArrays
from ..errors import RapaError
from ..net import Net
from ..proto import pb
from ..snapshot import load_weights


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", help="a trained .caffemodel: its HIC devices' write-erase counts")


def _bits(blob) -> float:
    return blob.arrays.config.device_bits() if isinstance(blob.arrays, HICArrays) else 32.0


def run(args):
    net = Net.from_file(args.model, pb.TEST)
    try:
        if args.weights:
            load_weights(net, args.weights)
        rows = {}
        for blob in net.learnable():
            layer = blob.name.rsplit("/", 1)[0]
            n, bits = blob.blob.numel(), _bits(blob)
            count, total = rows.get(layer, (0, 0.0))
            rows[layer] = (count + n, total + n * bits)
        if not rows:
            raise RapaError(f"{args.model}: the net has no learnable blobs")
        width = max(12, *(len(name) for name in rows))
        print(f"{net.name or args.model}: inference model size (bits held per value)")
        print(f"{'layer':<{width}} {'values':>10} {'bits/value':>10} {'KiB':>10} "
              f"{'FP32 KiB':>10}")
        for name, (count, total) in rows.items():
            print(f"{name:<{width}} {count:>10} {total / count:>10.2f} {total / 8192:>10.1f} "
                  f"{count * 32 / 8192:>10.1f}")
        count = sum(c for c, _ in rows.values())
        total = sum(t for _, t in rows.values())
        print(f"{'total':<{width}} {count:>10} {total / count:>10.2f} {total / 8192:>10.1f} "
              f"{count * 32 / 8192:>10.1f}   ({total / (count * 32):.3f} of FP32)")
        if args.weights:
            _write_erase(net, width)
    finally:
        net.close()
    return 0


def _write_erase(net: Net, width: int) -> None:
    hic = [(b.name.rsplit("/", 1)[0], b.arrays) for b in net.learnable()
           if isinstance(b.arrays, HICArrays)]
    if not hic:
        return
    print("\nwrite-erase cycles (RESETs) per device, against endurance:")
    print(f"{'layer':<{width}} {'devices':<12} {'max':>8} {'mean':>9} {'99.9%':>8} "
          f"{'max/endurance':>14} {'saturations':>12}")
    for name, a in hic:
        nb = a.config.binary_cells
        for kind, counts in (("binary", a.reset_count[:nb]), ("multi-level", a.reset_count[nb:])):
            if not counts.numel():
                continue
            flat = counts.double().flatten()
            q = torch.quantile(flat[:2 ** 24], 0.999).item()  # quantile's input limit
            print(f"{name:<{width}} {kind:<12} {flat.max().item():>8.0f} "
                  f"{flat.mean().item():>9.2f} {q:>8.0f} "
                  f"{flat.max().item() / a.config.endurance:>14.2e} "
                  f"{int(a.saturations.sum()) if kind == 'binary' else '':>12}")
