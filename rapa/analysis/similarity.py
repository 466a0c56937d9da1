"""Similarity of a tiled layer's kernel replicas (paper section 3.4, Fig. 6A): for each filter
(output channel), the mean correlation coefficient between all pairs of its replicas across
tiles, averaged over the filters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import RapaError
from ..net import Net


def filter_similarity(weight: Tensor) -> Tensor:
    """Per filter, the mean Pearson correlation of all pairs of its replicas.

    weight (T, O, ...) with T >= 2 replicas of O filters -> (O,) in float64. A replica with no
    spread (all values equal) has no correlation coefficient: it counts as 1 with an equal
    replica (two dead copies of a filter are the same filter) and as 0 with any other."""
    t, o = weight.shape[:2]
    raw = weight.detach().double().reshape(t, o, -1).transpose(0, 1)  # (O, T, K)
    x = raw - raw.mean(2, keepdim=True)
    norm = x.norm(dim=2, keepdim=True)
    flat = norm.squeeze(2) == 0                                       # (O, T)
    x = torch.where(norm > 0, x / norm.clamp_min(1e-300), 0.0)
    corr = x @ x.transpose(1, 2)                                      # (O, T, T)
    both_flat = flat.unsqueeze(2) & flat.unsqueeze(1)
    equal = (raw.unsqueeze(2) == raw.unsqueeze(1)).all(3)
    corr = torch.where(both_flat & equal, 1.0, corr)
    pairs = torch.triu_indices(t, t, offset=1)
    return corr[:, pairs[0], pairs[1]].mean(1)


@dataclass
class LayerSimilarity:
    layer: str
    tiles: int                      # kernel replicas
    similarity: Optional[float]     # mean over filters; None without pairs
    per_filter: list[float]


def net_similarity(net: Net) -> tuple[list[LayerSimilarity], list[str]]:
    """Every layer with kernel replicas, and notes on the layers skipped (untiled ones)."""
    out, notes = [], []
    for e in net.entries:
        replicas = e.layer.kernel_replicas()
        if replicas is None:
            if e.layer.array_work() is not None:  # a convolution or inner product, untiled
                notes.append(f"{e.layer.layer_name}: untiled, skipped")
            continue
        weight = replicas[0]
        if not torch.isfinite(weight).all():
            raise RapaError(f"layer '{e.layer.layer_name}': its weights hold NaN or infinite "
                            f"values")
        if weight.shape[0] < 2:
            out.append(LayerSimilarity(e.layer.layer_name, int(weight.shape[0]), None, []))
            notes.append(f"{e.layer.layer_name}: one kernel replica, no pairs to compare")
            continue
        per_filter = filter_similarity(weight)
        out.append(LayerSimilarity(e.layer.layer_name, int(weight.shape[0]),
                                   float(per_filter.mean()), per_filter.tolist()))
    return out, notes
