"""Testing a net: the outputs averaged over batches (Caffe), and RAPA's majority vote.

Voting (paper section 3.1): each batch is run `votes` times, each pass with its own random
tile assignment; every pass votes for its top class and the class with most votes wins (a tie
goes to the class with the larger mean softmax probability; rapa.nn.loss.vote_ranking). Each
layer that scores predictions (the layer contract's `votes`: Accuracy) scores the vote as it
scores one pass (its top_k and ignore_label). The single-assignment accuracy is that of the
first pass, so both come from the same run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .net import Net
from .progress import Progress


@dataclass
class TestResult:
    outputs: dict[str, float] = field(default_factory=dict)
    vote_accuracy: dict[str, float] = field(default_factory=dict)
    images: int = 0


@torch.no_grad()
def test_net(net: Net, iterations: int, votes: int = 1, progress_label: str = "",
             progress: bool | None = None,
             stop: Optional[Callable[[], bool]] = None) -> Optional[TestResult]:
    """The outputs averaged over `iterations` batches from the start of the test data; None
    when `stop()` turned true before the last batch (an interrupted run, as Caffe's "Test
    interrupted")."""
    net.eval()
    for layer in net.data_layers():
        layer.seek(0)  # every test sees the same images
    sums: dict[str, float] = {}
    vote_hits: dict[str, float] = {}
    voters = [(e.layer, e.bottoms[0], e.bottoms[1], e.tops[0]) for e in net.entries
              if e.layer.votes]
    bar = Progress(iterations, progress_label or "test", enabled=progress)
    images = 0
    for i in range(iterations):
        if stop is not None and stop():
            bar.close()
            net.train()
            return None
        data = net.read_data()
        blobs = net(dict(data))
        for name in net.output_names:
            sums[name] = sums.get(name, 0.0) + float(blobs[name].float().sum())
        if votes > 1 and voters:
            passes = {scores: [blobs[scores]] for _, scores, _, _ in voters}
            for _ in range(votes - 1):
                more = net(dict(data))
                for scores in passes:
                    passes[scores].append(more[scores])
            for layer, scores, label, top in voters:
                hit = layer.vote_accuracy(passes[scores], blobs[label])
                vote_hits[top] = vote_hits.get(top, 0.0) + float(hit)
        images += next(iter(data.values())).shape[0] if data else 0
        bar.update(i + 1)
    bar.close()
    net.train()
    return TestResult({k: v / iterations for k, v in sums.items()},
                      {k: v / iterations for k, v in vote_hits.items()}, images)
