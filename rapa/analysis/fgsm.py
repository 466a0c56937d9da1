"""Robustness to the fast gradient sign method (Goodfellow et al. 2014), as the paper's section
3.5 and Fig. 7 use it (after Cisse et al. 2017).

For the test images the net classifies correctly, each image's pixels x (the values before mean
subtraction and scaling, 0-255 for Caffe's image databases) are perturbed to
    x' = clip(x + epsilon sign(grad_x loss), 0, 255),
with the cross-entropy of the scores the net's Accuracy layer reads; the result is the
fraction of those images still classified correctly, and the signal-to-noise ratio
    SNR = 20 log10(||x|| / ||x' - x||)  [dB], averaged over the images.
With random tiling the gradient is taken through one random assignment and every
classification (before and after the attack) draws fresh ones: one, or the majority of
`votes` (the choice the README documents).
Against a baseline (another net's result), the reduction of the gap to perfect robustness at
each SNR is (acc - acc_base) / (1 - acc_base), acc_base interpolated at that SNR.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RapaError
from ..layers import DataLayer
from ..net import Net
from ..nn.loss import vote
from ..progress import Progress


@dataclass
class FgsmPoint:
    epsilon: float
    snr_db: float      # mean over the attacked images (inf at epsilon 0)
    accuracy: float    # of the attacked images, still classified correctly


@dataclass
class FgsmResult:
    images: int        # test images seen
    attacked: int      # of them classified correctly before the attack
    clean_accuracy: float
    votes: int
    points: list[FgsmPoint] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain JSON: an infinite SNR (epsilon 0) or an undefined value is null."""
        return finite_or_null(asdict(self))

    @staticmethod
    def from_json(data) -> "FgsmResult":
        """The result to_json wrote. Raises ValueError, KeyError or TypeError (naming the
        field) for anything else."""
        def number(value, what, integer=False):
            kinds = (int,) if integer else (int, float)
            if type(value) not in kinds:
                raise TypeError(f"{what} is {json.dumps(value)}, not "
                                f"{'an integer' if integer else 'a number'}")
            return value

        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise TypeError("not an object with a list of 'points'")
        points = []
        for i, p in enumerate(data["points"]):
            if not isinstance(p, dict) or set(p) != {"epsilon", "snr_db", "accuracy"}:
                raise TypeError(f"points[{i}] is not an object of epsilon, snr_db, accuracy")
            snr = math.inf if p["snr_db"] is None else number(p["snr_db"], f"points[{i}].snr_db")
            points.append(FgsmPoint(number(p["epsilon"], f"points[{i}].epsilon"), snr,
                                    number(p["accuracy"], f"points[{i}].accuracy")))
        return FgsmResult(number(data["images"], "images", True),
                          number(data["attacked"], "attacked", True),
                          number(data["clean_accuracy"], "clean_accuracy"),
                          number(data["votes"], "votes", True), points)


def finite_or_null(value):
    """value with every non-finite float (inf, NaN) replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value


def baseline_curve(baseline: FgsmResult) -> tuple[tuple, tuple]:
    """The baseline's (SNRs, accuracies), sorted by SNR, of its points with a finite SNR;
    RapaError where there are fewer than two (nothing to interpolate)."""
    base = sorted((p.snr_db, p.accuracy) for p in baseline.points if math.isfinite(p.snr_db))
    if len(base) < 2:
        raise RapaError("the baseline needs at least two points with a finite SNR")
    snrs, accs = zip(*base)
    return snrs, accs


def gap_reduction(result: FgsmResult, baseline: FgsmResult) -> list[float]:
    """Per point of `result`: (acc - acc_base) / (1 - acc_base), the baseline's accuracy
    interpolated at the point's SNR (NaN outside the baseline's SNR range or where the
    baseline is perfect)."""
    snrs, accs = baseline_curve(baseline)
    out = []
    for p in result.points:
        if not (math.isfinite(p.snr_db) and snrs[0] <= p.snr_db <= snrs[-1]):
            out.append(float("nan"))
            continue
        acc_base = float(np.interp(p.snr_db, snrs, accs))
        out.append((p.accuracy - acc_base) / (1 - acc_base) if acc_base < 1 else float("nan"))
    return out


def _roles(net: Net) -> tuple[DataLayer, str, str, str]:
    """The data layer, its image top, and the scores and labels the Accuracy layer reads."""
    data = [e for e in net.entries if isinstance(e.layer, DataLayer)]
    voters = [e for e in net.entries if e.layer.votes]
    if len(data) != 1 or not voters:
        raise RapaError(f"{net.source}: FGSM needs one Data layer and an Accuracy layer in the "
                        f"TEST phase (found {len(data)} and {len(voters)})")
    return data[0].layer, data[0].tops[0], voters[0].bottoms[0], voters[0].bottoms[1]


def _classify(net, feed, image, x, scores, labels, votes) -> torch.Tensor:
    passes = []
    for _ in range(votes):
        out = net({**feed, image: x})
        passes.append(out[scores].movedim(1, -1).reshape(-1, out[scores].shape[1]))
    predicted = vote(passes) if votes > 1 else passes[0].argmax(1)
    return predicted == feed[labels].reshape(-1).long()


def snr_db(pixels: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """20 log10(||x|| / ||x' - x||) per image (batch first), in dB; inf where x' = x."""
    signal = pixels.flatten(1).norm(dim=1)
    noise = (moved - pixels).flatten(1).norm(dim=1)
    return 20 * torch.log10(signal / noise)


def loss_sign(net: Net, feed: dict, image: str, scores: str, labels: str) -> torch.Tensor:
    """sign(grad of the summed cross-entropy of `scores` against `labels` with respect to the
    net's input `image`), one forward and backward pass (one random assignment)."""
    x = feed[image].detach().clone().requires_grad_()
    out = net({**feed, image: x})
    s = out[scores].movedim(1, -1).reshape(-1, out[scores].shape[1])
    loss = F.cross_entropy(s.float(), feed[labels].reshape(-1).long(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(net: Net, iterations: Optional[int], epsilons: list[float], votes: int = 1,
         pixel_range: tuple[float, float] = (0.0, 255.0), progress=None) -> FgsmResult:
    """The attack over `iterations` test batches of `net` (TEST phase, weights loaded; None:
    the whole test database). Each image is attacked once: more batches than the database
    holds are refused."""
    if min(epsilons) < 0:
        raise RapaError(f"--epsilon must be >= 0, got {min(epsilons):g}")
    data_layer, image, scores, labels = _roles(net)
    mean, scale = data_layer.input_normalization()
    if scale <= 0:
        raise RapaError(f"layer '{data_layer.layer_name}': FGSM needs transform_param.scale > 0")
    records, batch = data_layer.records, data_layer.batch_size
    if iterations is None:
        iterations = -(-records // batch)
    if records and iterations * batch > records + batch - 1:  # each image once: no wrapping
        raise RapaError(f"--iterations {iterations}: the test database holds {records} images, "
                        f"{-(-records // batch)} batches of {batch}")
    net.eval()
    data_layer.seek(0)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    mean = mean.to(device)
    low, high = pixel_range
    hits = [0] * len(epsilons)
    snr_sums, snr_counts = [0.0] * len(epsilons), [0] * len(epsilons)
    seen = attacked = 0
    bar = Progress(iterations, "fgsm", enabled=progress)
    for it in range(iterations):
        feed = net.read_data()
        x = feed[image]
        with torch.no_grad():
            correct = _classify(net, feed, image, x, scores, labels, votes)
        seen += x.shape[0]
        if correct.numel() != x.shape[0]:
            raise RapaError(f"{net.source}: FGSM needs one prediction per image")
        sign = loss_sign(net, feed, image, scores, labels)
        pixels = x.detach() / scale + mean
        slack = 1e-3 * (high - low)  # float rounding of the reconstruction
        if pixels.min() < low - slack or pixels.max() > high + slack:
            raise RapaError(f"--pixel-range {low:g} {high:g}: the test images' pixels (before "
                            f"mean subtraction and scale) span [{float(pixels.min()):g}, "
                            f"{float(pixels.max()):g}]; give their valid range")
        keep = correct.nonzero().squeeze(1)
        attacked += int(keep.numel())
        if keep.numel() == 0:
            bar.update(it + 1)
            continue
        pixels, sign = pixels[keep], sign[keep]
        sub = {k: v[keep] for k, v in feed.items()}
        for i, eps in enumerate(epsilons):
            moved = (pixels + eps * sign).clamp(low, high)
            with torch.no_grad():
                hits[i] += int(_classify(net, sub, image, (moved - mean) * scale, scores,
                                         labels, votes).sum())
            snr = snr_db(pixels, moved)
            finite = torch.isfinite(snr)
            snr_sums[i] += float(snr[finite].sum())
            snr_counts[i] += int(finite.sum())
        bar.update(it + 1)
    bar.close()
    if attacked == 0:
        raise RapaError(f"{net.source}: no test image was classified correctly: nothing to "
                        f"attack")
    points = [FgsmPoint(eps, snr_sums[i] / snr_counts[i] if snr_counts[i] else math.inf,
                        hits[i] / attacked) for i, eps in enumerate(epsilons)]
    return FgsmResult(seen, attacked, attacked / seen, votes, points)
