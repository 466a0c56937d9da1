"""Inference model size: bits held per value, layer by layer; HIC devices' write-erase cycles.

Joshi et al. (2021) compare HIC and FP32 nets by it. What an inference model holds counts:
every learned blob (lr_mult > 0) and every state blob of a layer (BatchNorm statistics, a
fixed tile partition), not the constants of the architecture (blobs with lr_mult 0, e.g. the
option-A shortcut's fixed selection) nor the arrays' own device state. Weights on HIC arrays
(hic_param) count at the bits their devices hold (one per binary cell, log2 levels per
multi-level device, two of them: rapa.analog.hic); every other value (digital weights, biases,
statistics, RPU arrays' weights, whose analog conductances have no bit count) at 32 bits,
floating point's. The FP32 column is the same net with every value at 32 bits.

With --weights (a trained model of a HIC net), per HIC layer: the write-erase cycles (RESETs)
of its binary cells and of its multi-level devices, maximum, mean and 99.9th percentile, the
maximum as a fraction of hic_param's endurance, and the transfers its weights' range cut
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


def _held(layer) -> tuple[int, float]:
    """(values, bits) that an inference model of `layer` holds."""
    count, total, device_state = 0, 0.0, 0
    for blob in layer.learnable():
        if blob.arrays is not None:
            device_state += len(blob.arrays.state_blobs())
        elif blob.spec.lr_mult == 0:  # a constant of the architecture
            continue
        n = blob.blob.numel()
        bits = (blob.arrays.config.device_bits() if isinstance(blob.arrays, HICArrays)
                else 32.0)
        count, total = count + n, total + n * bits
    state = layer.state_blobs()
    for blob in state[:len(state) - device_state]:  # the arrays' blobs come last
        count, total = count + blob.numel(), total + 32.0 * blob.numel()
    return count, total


def run(args):
    net = Net.from_file(args.model, pb.TEST)
    try:
        if args.weights:
            load_weights(net, args.weights)
        rows = {}
        for e in net.entries:
            count, total = _held(e.layer)
            if count:
                rows[e.layer.layer_name] = (count, total)
        if not rows:
            raise RapaError(f"{args.model}: the net holds no learned or state blobs")
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
    every = {"binary": [], "multi-level": []}
    for name, a in hic:
        first = True
        for kind, flat in _per_kind(a, a.reset_count):
            every[kind].append((flat, a.config.endurance))
            _row(name, kind, flat, flat.max().item() / a.config.endurance, width,
                 int(a.saturations.sum()) if first else "")
            first = False
    if len(hic) > 1:  # the whole net's devices
        for kind, parts in every.items():
            if parts:
                flat = torch.cat([f for f, _ in parts])
                worst = max(f.max().item() / e for f, e in parts)
                _row("all layers", kind, flat, worst, width,
                     sum(int(a.saturations.sum()) for _, a in hic) if kind == "binary" or
                     not every["binary"] else "")
    # SET events: one per switching attempt of a binary cell, one per level a multi-level
    # device is programmed to, or with programming "pulsed" one per SET pulse.
    pulsed = [name for name, a in hic if a.pulsed]
    print("\nSET events per device" + (f" (SET pulses in {', '.join(pulsed)}: programming "
                                        f"\"pulsed\")" if pulsed else "") + ":")
    print(f"{'layer':<{width}} {'devices':<12} {'max':>8} {'mean':>9} {'99.9%':>8}")
    every = {"binary": [], "multi-level": []}
    for name, a in hic:
        for kind, flat in _per_kind(a, a.set_count):
            every[kind].append(flat)
            _row(name, kind, flat, None, width, None)
    if len(hic) > 1:
        for kind, parts in every.items():
            if parts:
                _row("all layers", kind, torch.cat(parts), None, width, None)


def _per_kind(arrays: HICArrays, counts) -> list:
    """(kind, counts flattened in float64) of the binary cells, then of the multi-level
    devices, of one of the arrays' count blobs; none for binary cells where there are none."""
    nb = arrays.config.binary_cells
    return [(kind, part.double().flatten()) for kind, part in
            (("binary", counts[:nb]), ("multi-level", counts[nb:])) if part.numel()]


def _row(name, kind, flat, worst, width, saturations) -> None:
    """One table row; worst None: the row without the endurance and saturation columns."""
    q = torch.quantile(flat[:2 ** 24], 0.999).item()  # quantile's input limit
    row = (f"{name:<{width}} {kind:<12} {flat.max().item():>8.0f} {flat.mean().item():>9.2f} "
           f"{q:>8.0f}")
    print(row if worst is None else f"{row} {worst:>14.2e} {saturations:>12}")
