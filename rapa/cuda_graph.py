"""A training step recorded once as a CUDA graph and replayed at every later iteration.

At the paper's batch of 10 a step of the Full net is a few hundred small kernels, and the GPU
waits for the host to launch them; replaying the whole step (forward, backward, the update of
every parameter) as one graph removes that wait. This is torch.cuda.graph's whole-network
capture (PyTorch's "CUDA Graphs" notes): warm-up iterations on a side stream, then the step is
recorded on static input buffers, and each later iteration copies its batch into them and
replays.

What the graph keeps exactly: the arithmetic, and the random draws, since torch's CUDA
generator gives a recorded kernel a fresh offset at every replay (random tiling, dropout,
stochastic pooling draw anew, the numbers an eager step would draw); the learning rate, which
the update reads from a device tensor that the solver fills before each replay. What cannot be
recorded: a step that copies a number to the host or whose shapes depend on the data. The
solver keeps those out (rapa.solver.Solver._graphed_step) or, where recording fails, trains
without a graph from then on, saying why in one line.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Batches = list[dict[str, torch.Tensor]]


class GraphedStep:
    """`step(batches)` -> tuple of device tensors, recorded at its `warmup + 1`-th call and
    replayed after that. Every call does one real step: the warm-up calls run eagerly on a
    side stream, the recording call records and then replays once. `batches`: one dict per
    pass of top name -> tensor on the device, the same shapes at every call. The returned
    tensors are the graph's own and are overwritten by the next replay: read or copy them
    before calling again. `say` gets the one-line notice when recording fails."""

    def __init__(self, step: Callable[[Batches], tuple], warmup: int = 3,
                 say: Callable[[str], None] = print):
        self.step, self.warmup, self.say = step, warmup, say
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: Optional[Batches] = None
        self.outputs: Optional[tuple] = None
        self.failed: Optional[str] = None  # why recording failed: eager from then on
        self.stream = torch.cuda.Stream()

    def __call__(self, batches: Batches) -> tuple:
        if self.failed is not None:
            return self.step(batches)
        if self.graph is not None:
            for static, batch in zip(self.inputs, batches):
                for name, value in batch.items():
                    static[name].copy_(value)
            self.graph.replay()
            return self.outputs
        self.calls += 1
        if self.calls <= self.warmup:
            # On a side stream, as the recording will be: the libraries (cuBLAS, cuDNN, the
            # autograd engine) make their one-time choices and allocations here.
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                outputs = self.step(batches)
            torch.cuda.current_stream().wait_stream(self.stream)
            return outputs
        return self._record(batches)

    def _record(self, batches: Batches) -> tuple:
        self.inputs = [{name: value.clone() for name, value in batch.items()}
                       for batch in batches]
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the data readers' threads may use CUDA while this one records.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.step(self.inputs)
        except Exception as e:  # noqa: BLE001 - any failure to record means: run eagerly
            self.failed = " ".join(str(e).split()) or type(e).__name__
            self.inputs = None
            self.say(f"CUDA graph: the training step could not be recorded ({self.failed[:300]})"
                     f": training without a graph")
            return self.step(batches)
        self.graph, self.outputs = graph, outputs
        graph.replay()  # recording ran nothing: this is the step of this call
        return outputs
