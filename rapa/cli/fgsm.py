"""Robustness to the fast gradient sign method (paper section 3.5, Fig. 7).

The test images the net classifies correctly are perturbed by epsilon times the sign of the
loss gradient, in pixel values (0-255 for Caffe's image databases: the net's input before mean
subtraction and scaling, clipped to that range); printed per epsilon: the signal-to-noise
ratio 20 log10(||x|| / ||delta||) in dB and the accuracy on the perturbed images. With random
tiling the gradient is taken through one random assignment and every classification draws a
fresh one (or --votes K of them, the majority deciding). With --baseline (another net's
--json), the reduction of the gap to perfect robustness, (acc - acc_base) / (1 - acc_base),
at each SNR.
"""
import json
import math
import pathlib

import torch

from ..analysis.fgsm import (FgsmResult, baseline_curve, fgsm, finite_or_null,
                             gap_reduction)
from ..device import device_named
from ..errors import RapaError
from .similarity import load_net
from .options import figure_written, count, figure_path, finite, output_path, seed, word


def add_arguments(p):
    p.add_argument("--model", required=True, help="net prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--iterations", type=count(),
                   help="test batches (default: the whole test database, each image once)")
    p.add_argument("--epsilon", type=finite(0.0), nargs="+", required=True,
                   help="perturbation sizes in pixel values, e.g. 0 1 2 4 8")
    p.add_argument("--votes", type=count(), default=1, help="random assignments per decision")
    p.add_argument("--pixel-range", type=finite(), nargs=2, default=(0.0, 255.0),
                   metavar=("LOW", "HIGH"), help="valid pixel values (default 0 255)")
    p.add_argument("--baseline", help="another net's --json result to compare with")
    p.add_argument("--json", type=output_path, help="write the result to this JSON file")
    p.add_argument("--plot", type=figure_path, help="draw accuracy against SNR to this PNG")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random assignments")
    p.add_argument("--device", type=word, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true")


def read_baseline(path) -> FgsmResult:
    try:
        with open(path) as f:
            result = FgsmResult.from_json(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
        raise RapaError(f"{path}: not a rapa fgsm --json result ({e})") from None
    try:  # before the attack, not after it
        baseline_curve(result)
    except RapaError as e:
        raise RapaError(f"{path}: {e}") from None
    return result


def draw(result, baseline, path, label, baseline_label="baseline"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RapaError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(5, 4))
    for res, name in ((result, label), (baseline, baseline_label)):
        if res is None:
            continue
        pts = sorted((p.snr_db, 100 * p.accuracy) for p in res.points if math.isfinite(p.snr_db))
        if pts:
            ax.plot(*zip(*pts), marker=".", label=name)
    # Cisse et al. 2017's threshold of human perception, where the paper reads Fig. 7 off.
    ax.axvline(33, color="gray", linestyle=":", linewidth=1)
    ax.set(xlabel="SNR [dB]", ylabel="accuracy on perturbed images [%]", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args):
    if args.pixel_range[0] >= args.pixel_range[1]:
        raise RapaError("--pixel-range takes LOW < HIGH")
    if min(args.epsilon) < 0:
        raise RapaError(f"--epsilon must be >= 0, got {min(args.epsilon):g}")
    baseline = read_baseline(args.baseline) if args.baseline else None
    torch.manual_seed(args.seed)
    net = load_net(args.model, args.weights, seed=args.seed)
    net.to_device(device_named(args.device))
    try:
        result = fgsm(net, args.iterations, list(args.epsilon), args.votes,
                      tuple(args.pixel_range), progress=False if args.no_progress else None)
    finally:
        net.close()
    gaps = gap_reduction(result, baseline) if baseline else None
    print(f"{result.images} images, {result.attacked} classified correctly (clean accuracy "
          f"{result.clean_accuracy:.4f}{f', {args.votes} votes' if args.votes > 1 else ''}) "
          f"and attacked")
    head = f"{'epsilon':>8} {'SNR dB':>8} {'accuracy':>9}" + (" gap reduction" if gaps else "")
    print(head)
    for i, p in enumerate(result.points):
        line = f"{p.epsilon:>8g} {p.snr_db:>8.2f} {p.accuracy:>9.4f}"
        if gaps:
            line += f" {gaps[i]:>13.1%}" if math.isfinite(gaps[i]) else f" {'-':>13}"
        print(line)
    if gaps and not all(math.isfinite(g) for g in gaps):
        print("(gap reduction '-': the SNR lies outside the baseline's SNR range, or the "
              "baseline is perfect there)")
    if args.json:
        out = result.to_json()
        if gaps:
            out["gap_reduction"] = finite_or_null(gaps)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, allow_nan=False)
    if args.plot:
        draw(result, baseline, args.plot, pathlib.Path(args.model).stem,
             pathlib.Path(args.baseline).stem if args.baseline else "baseline")
        print(f"wrote {figure_written(args.plot)}")
    return 0
