"""SoftmaxWithLoss and Accuracy with Caffe's semantics (softmax_loss_layer.cpp,
accuracy_layer.cpp), and RAPA's majority vote over several passes (paper section 3.1)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZATIONS = ("full", "valid", "batch_size", "none")
# Caffe takes log(max(prob, FLT_MIN)) in float and double alike: one prediction adds at most
# -log(FLT_MIN) = 87.34 to the loss.
LOSS_CAP = -math.log(torch.finfo(torch.float32).tiny)


def _flat(scores: Tensor, labels: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Scores (M, K) with the class axis last, and labels (M,) as int64."""
    s = scores.movedim(axis, -1)
    return s.reshape(-1, s.shape[-1]), labels.reshape(-1).long()


def _counted(target: Tensor, ignore_label: Optional[int]) -> Tensor:
    """Which predictions count: those not labelled ignore_label (all without one)."""
    if ignore_label is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_label


class SoftmaxWithLoss(torch.nn.Module):
    """Cross-entropy of softmax(scores) over `axis` against integer labels, as Caffe's
    SoftmaxWithLoss: scores (N, K, ...) and labels holding one class per prediction
    (N * ... values) -> a scalar. Labels equal to `ignore_label` add nothing. The sum is divided
    by the number of predictions ("full"), of those not ignored ("valid", Caffe's default), by
    the number of predictions per class position, i.e. the product of the dimensions before
    `axis` (N for axis 1: "batch_size"), or not at all ("none"); a divisor below 1 (nothing
    valid, an empty batch) is 1. As Caffe, one prediction adds at most -log(FLT_MIN) (LOSS_CAP),
    and its gradient is softmax - onehot even then."""

    def __init__(self, axis: int = 1, ignore_label: Optional[int] = None,
                 normalization: str = "valid"):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"rapa: unknown normalization {normalization!r}; known: "
                             f"{', '.join(NORMALIZATIONS)}")
        self.axis, self.ignore_label, self.normalization = axis, ignore_label, normalization

    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        logp = F.log_softmax(scores, self.axis).movedim(self.axis, -1)
        logp = logp.reshape(-1, logp.shape[-1])
        target = labels.reshape(-1).long()
        valid = _counted(target, self.ignore_label)
        nll = -logp.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
        # Caffe's cap on the value; its backward ignores the cap, so the gradient passes.
        nll = torch.where(nll > LOSS_CAP, LOSS_CAP + (nll - nll.detach()), nll)
        total = (nll * valid).sum()
        if self.normalization == "valid":
            return total / valid.sum().clamp_min(1)
        if self.normalization == "full":  # Caffe's get_normalizer: max(1, ...) in every mode
            return total / max(1, target.numel())
        if self.normalization == "batch_size":  # Caffe's outer_num: the axes before `axis`
            return total / max(1, math.prod(scores.shape[:self.axis]))
        return total


def vote_ranking(passes: list[Tensor]) -> Tensor:
    """Majority vote over passes: scores (M, K) per pass -> a ranking (M, K) of the classes
    whose order is the vote's: most votes first (each pass votes for its top class), a tie going
    to the larger mean softmax probability (below 1, so it only breaks ties)."""
    probs = torch.stack([torch.softmax(s.float(), 1) for s in passes])  # (P, M, K)
    counts = F.one_hot(probs.argmax(2), probs.shape[2]).sum(0).float()
    return counts + probs.mean(0) * 0.5


def vote(passes: list[Tensor]) -> Tensor:
    """The class each prediction's majority vote picks: (M,)."""
    return vote_ranking(passes).argmax(1)


class Accuracy(torch.nn.Module):
    """Caffe's Accuracy: the fraction of predictions whose `top_k` scores along `axis` hold the
    label, predictions labelled `ignore_label` left out; scores (N, K, ...) and labels (one per
    prediction) -> a scalar of the scores' dtype, 0 when no prediction counts. As Caffe's
    accuracy_layer.cpp, a prediction is a hit when fewer than `top_k` other classes score at
    least the label's score: a tie counts against the label (and a NaN label score is a hit).
    `vote_accuracy` scores the majority vote of several passes the same way."""

    def __init__(self, top_k: int = 1, axis: int = 1, ignore_label: Optional[int] = None):
        super().__init__()
        if top_k < 1:
            raise ValueError(f"rapa: top_k must be >= 1, got {top_k}")
        self.top_k, self.axis, self.ignore_label = top_k, axis, ignore_label

    def _score(self, ranking: Tensor, target: Tensor, dtype: torch.dtype) -> Tensor:
        valid = _counted(target, self.ignore_label)
        own = ranking.gather(1, torch.where(valid, target, 0).unsqueeze(1))
        # Caffe counts the classes scoring >= the label's, the label included: not topk, whose
        # order among ties is arbitrary.
        hit = (ranking >= own).sum(1) <= self.top_k
        work = torch.promote_types(dtype, torch.float32)  # Caffe divides in its Dtype
        return ((hit & valid).sum().to(work) / valid.sum().clamp_min(1).to(work)).to(dtype)

    @torch.no_grad()
    def forward(self, scores: Tensor, labels: Tensor) -> Tensor:
        s, target = _flat(scores, labels, self.axis)
        return self._score(s, target, scores.dtype)

    @torch.no_grad()
    def vote_accuracy(self, passes: list[Tensor], labels: Tensor) -> Tensor:
        """The accuracy of the majority vote (vote_ranking) over `passes`, each the scores of
        one pass, with the same top_k and ignore_label as one pass."""
        flat = [_flat(s, labels, self.axis)[0] for s in passes]
        target = labels.reshape(-1).long()
        return self._score(vote_ranking(flat), target, passes[0].dtype)
