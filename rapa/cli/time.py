"""Time a net layer by layer (Caffe's `caffe time`) and print the paper's analog time model.

Forward and backward times per layer, averaged over --iterations passes of --phase (TRAIN by
default; its data layers read one batch, reused) after 2 passes of warm-up; images/s is the
batch over the sum of the layers' times (the solver's update left out); a Scale whose
BatchNorm applies it in its own pass shows 0 (its time is the BatchNorm's). The analog model
(paper Fig. 1): per conv layer the patches np per image, the MACs, the tiles nt, the array
operations per tile ceil(np/nt), and the resulting speed-up; the net's analog time is the
slowest layer's count when layers are pipelined, or their sum when not.
"""
import torch

from ..device import device_named
from ..errors import RapaError
from ..net import Net
from ..proto import pb
from ..timing import analog_model, time_layers
from .options import count, word


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--iterations", type=count(), default=20,
                   help="timed passes, after 2 of warm-up (default 20)")
    p.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST"),
                   help="the net's phase to time (default TRAIN)")
    p.add_argument("--device", type=word, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--forward-only", action="store_true",
                   help="no backward pass (a net without a loss layer is timed so anyway)")


def run(args):
    device = device_named(args.device)
    phase = pb.TRAIN if args.phase == "TRAIN" else pb.TEST
    net = Net.from_file(args.model, phase)
    net.to_device(device)
    net.train(phase == pb.TRAIN)
    forward_only = args.forward_only
    if not forward_only and not any(any(e.loss_weights) for e in net.entries):
        print(f"note: {args.model} has no loss in its {args.phase} phase (no layer with a "
              f"loss weight: a deploy net?): forward times only")
        forward_only = True
    try:
        with torch.set_grad_enabled(not forward_only):
            times = time_layers(net, args.iterations, device, backward=not forward_only)
    finally:
        net.close()
    if not times:
        raise RapaError(f"{args.model}: no layers to time in the {args.phase} phase")
    batch = next((s[0] for s in net.blob_shapes.values() if s), 1)
    print(f"{net.name or args.model}: {args.phase}, batch {batch}, {device}, mean of "
          f"{args.iterations} iterations")
    width = max([12] + [len(t.name) for t in times])
    # Without a backward pass the backward column would only hold zeros: left out.
    columns = [("forward ms", 11, "forward_ms")]
    if not forward_only:
        columns.append(("backward ms", 12, "backward_ms"))
    print(f"{'layer':<{width}} {'type':<16}" + "".join(f" {h:>{w}}" for h, w, _ in columns))
    for t in times:
        print(f"{t.name:<{width}} {t.type:<16}"
              + "".join(f" {getattr(t, a):>{w}.3f}" for _, w, a in columns))
    totals = [sum(getattr(t, a) for t in times) for _, _, a in columns]
    print(f"{'total':<{width + 17}}" + "".join(f" {v:>{w}.3f}" for v, (_, w, _) in
                                                zip(totals, columns))
          + (f"   ({batch / sum(totals) * 1e3:.0f} images/s)" if sum(totals) > 0 else ""))
    analog = analog_model(net)
    if analog:
        print("\nanalog arrays (one matrix-vector product per patch, constant time each):")
        print(f"{'layer':<{width}} {'patches np':>10} {'MACs':>12} {'tiles nt':>9} "
              f"{'np per tile':>12} {'speed-up':>9}")
        for a in analog:
            print(f"{a.name:<{width}} {a.patches:>10} {a.macs:>12} {a.tiles:>9} "
                  f"{a.per_tile:>12} {a.speedup:>9.1f}")
        base = [x.patches for x in analog]
        tiled = [x.per_tile for x in analog]
        operations = f"{sum(tiled)} array operation" + ("s" if sum(tiled) != 1 else "")
        print(f"per image: {operations} in sequence ({sum(base)} untiled, "
              f"{sum(base) / sum(tiled):.1f}x); pipelined over layers: {max(tiled)} "
              f"({max(base)} untiled, {max(base) / max(tiled):.1f}x)")
    return 0
