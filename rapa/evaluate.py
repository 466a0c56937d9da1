"""Testing a net: the outputs averaged over batches (Caffe), and RAPA's majority vote.

Voting (paper section 3.1): each batch is run `votes` times, each pass with its own random
tile assignment; every pass votes for its top class and the class with most votes wins (a tie
goes to the class with the larger mean softmax probability; rapa.nn.loss.vote_ranking). Each
layer that scores predictions (the layer contract's `votes`: Accuracy) scores the vote as it
scores one pass (its top_k and ignore_label). The single-assignment accuracy is that of the
first pass, so both come from the same run.

The sums stay on the device until the last batch (the host never waits for the GPU in
between); with `graph` a batch's passes are recorded once as a CUDA graph and replayed for the
next batches (rapa.cuda_graph), the graph kept with the net for its later tests.
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
def reread(net: Net, iterations: int) -> Optional[str]:
    """Where `iterations` batches read past the end of one of `net`'s databases (its Data
    layer then starts over, as Caffe's does): one line saying how many images are read again,
    and so count twice in the averages; None where they do not."""
    for layer in net.data_layers():
        read = iterations * layer.batch_size
        if layer.records and read > layer.records:
            return (f"{iterations} batch{'es' if iterations != 1 else ''} of "
                    f"{layer.batch_size} read {read} images, "
                    f"the database of layer '{layer.layer_name}' holds {layer.records}: "
                    f"{read - layer.records} are read again (they count twice)")
    return None


def test_net(net: Net, iterations: int, votes: int = 1, progress_label: str = "",
             progress: bool | None = None, stop: Optional[Callable[[], bool]] = None,
             graph: bool = False, say: Callable[[str], None] = print
             ) -> Optional[TestResult]:
    """The outputs averaged over `iterations` batches from the start of the test data; None
    when `stop()` turned true before the last batch (an interrupted run, as Caffe's "Test
    interrupted"). `graph` (CUDA; weights changed in place only between calls): the batch's
    passes replayed as a CUDA graph; `say` gets its one-line notice if it cannot be."""
    net.eval()
    for layer in net.data_layers():
        layer.seek(0)  # every test sees the same images
    voters = [(e.layer, e.bottoms[0], e.bottoms[1], e.tops[0]) for e in net.entries
              if e.layer.votes] if votes > 1 else []

    def one_batch(batches: list[dict]) -> tuple:
        """The batch's output sums, then each voter's vote accuracy (float64, device)."""
        data = batches[0]
        blobs = net(dict(data))
        sums = [blobs[name].float().sum().double() for name in net.output_names]
        passes = {scores: [blobs[scores]] for _, scores, _, _ in voters}
        for _ in range(votes - 1 if voters else 0):
            more = net(dict(data))
            for scores in passes:
                passes[scores].append(more[scores])
        return tuple(sums + [layer.vote_accuracy(passes[scores], blobs[label]).double()
                             for layer, scores, label, _ in voters])

    run = one_batch
    if graph:
        from .cuda_graph import GraphedStep
        if votes not in net.test_graphs:
            net.test_graphs[votes] = GraphedStep(one_batch, say=say)
        run = net.test_graphs[votes]
    bar = Progress(iterations, progress_label or "test", enabled=progress)
    images, totals = 0, None
    for i in range(iterations):
        if stop is not None and stop():
            bar.close()
            net.train()
            return None
        data = net.read_data()
        results = run([data])
        if results:
            batch = torch.stack(results)  # a copy: a replay overwrites the graph's outputs
            totals = batch if totals is None else totals + batch
        images += next(iter(data.values())).shape[0] if data else 0
        bar.update(i + 1)
    bar.close()
    net.train()
    values = totals.tolist() if totals is not None else []
    names = list(net.output_names)
    return TestResult({k: v / iterations for k, v in zip(names, values)},
                      {top: v / iterations for (*_, top), v in zip(voters, values[len(names):])},
                      images)
