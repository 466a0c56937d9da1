"""A training step recorded once as a CUDA graph and replayed at every later iteration.

At the paper's batch of 10 a step of the Full net is a few hundred small kernels, and the GPU
waits for the host to launch them; replaying the whole step (forward, backward, the update of
every parameter) as one graph removes that wait. This is torch.cuda.graph's whole-network
capture (PyTorch's "CUDA Graphs" notes): warm-up iterations on a side stream, then the step is
recorded on static input buffers, and each later iteration copies its batch into them and
replays.

What the graph keeps exactly: the arithmetic, and the random draws, since torch's CUDA
generator gives a recorded kernel a fresh offset at every replay (random tiling, dropout,
stochastic pooling, analog noise draw anew, the numbers an eager step would draw), and so does
a generator of the solver's own once registered with the graph (`generators`: the pulsed
updates' seeds); the learning rate, which the updates read from a device tensor that the
solver fills before each replay. What cannot be recorded: a step that copies a number to the
host or whose shapes depend on the data (the HIC update). The solver keeps those out
(rapa.solver.Solver._graphed_step, graph_kept_off). A step that fails while being
recorded runs without a graph from then on, said in one line, where the failure left CUDA as
it was (an error of the Python code); where it broke the recording itself (an op that waits
for the device), RecordingFailed says why, and the run must start again without a graph.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

Batches = list[dict[str, torch.Tensor]]


def graph_kept_off(learnables) -> list[str]:
    """The layers (sorted names) of `learnables` (Net.learnable()) whose arrays cannot be in a
    graph: their update decides on the host (HIC; RPU arrays are `capturable`). A net with
    any of them runs without one, in training and in `rapa test`."""
    return sorted({b.name.rsplit("/", 1)[0] for b in learnables
                   if b.arrays is not None and not b.arrays.capturable})


class RecordingFailed(RuntimeError):
    """The step could not be recorded, and the recording's failure leaves this process's CUDA
    memory pool unfit to go on (torch's allocator still counts the recording as under way)."""


def _first_cause(error: BaseException) -> str:
    """The message of the exception that started a chain (a failed recording reports its own
    error on top of the one that broke it), on one line."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return " ".join(str(error).split())[:300] or type(error).__name__


class GraphedStep:
    """`step(batches)` -> tuple of device tensors, recorded at its `warmup + 1`-th call and
    replayed after that. Every call does one real step: the warm-up calls run eagerly on a
    side stream, the recording call records and then replays once. `batches`: one dict per
    pass of top name -> tensor on `device` (default: that of the first tensor given), the same
    shapes at every call. The returned tensors are the graph's own and are overwritten by the
    next replay: read or copy them before calling again. `say` gets the one-line notice when
    the step runs on without a graph; RecordingFailed is raised where it cannot.
    `generators`: torch.Generators on the device, other than its default one, that the step
    draws from (the solver's generator of the pulsed updates' seeds): registered with the
    graph, so that each replay draws afresh from them too."""

    def __init__(self, step: Callable[[Batches], tuple], warmup: int = 3,
                 say: Callable[[str], None] = print, device: Optional[torch.device] = None,
                 generators: tuple = ()):
        self.step, self.warmup, self.say = step, warmup, say
        self.generators = tuple(generators)
        self.device = torch.device(device) if device is not None else None
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: Optional[Batches] = None
        self.outputs: Optional[tuple] = None
        self.failed: Optional[str] = None  # why recording failed: eager from then on
        self.stream: Optional[torch.cuda.Stream] = None

    def __call__(self, batches: Batches) -> tuple:
        if self.failed is not None:
            return self.step(batches)
        if self.device is None:
            given = [t for batch in batches for t in batch.values()]
            self.device = given[0].device if given else torch.device(
                "cuda", torch.cuda.current_device())
        # Streams, the recording and the replays on the step's device, whichever is current.
        with torch.cuda.device(self.device):
            if self.graph is not None:
                for static, batch in zip(self.inputs, batches):
                    for name, value in batch.items():
                        static[name].copy_(value)
                self.graph.replay()
                return self.outputs
            if self.stream is None:
                self.stream = torch.cuda.Stream(self.device)
            self.calls += 1
            if self.calls <= self.warmup:
                # On the side stream the recording will use: the libraries (cuBLAS, cuDNN, the
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
        for generator in self.generators:
            graph.register_generator_state(generator)
        before = torch.cuda.current_stream()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with torch.cuda.graph(graph, stream=self.stream):
                    outputs = self.step(self.inputs)
            empty = [w for w in caught if "CUDA Graph is empty" in str(w.message)]
            for w in caught:  # the step's own warnings, said as they would have been
                if w not in empty:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if empty:
                # Its kernels ran on another device, unrecorded: the step has been done once.
                raise RecordingFailed("the CUDA graph recorded nothing (the step's work ran on "
                                      "a device other than the graph's)")
        except Exception as e:  # noqa: BLE001 - every failure to record ends here
            clean = torch.cuda.current_stream() == before and not isinstance(e, RecordingFailed)
            torch.cuda.set_stream(before)
            self.inputs = None
            if not clean:
                raise RecordingFailed(_first_cause(e)) from None
            self.failed = _first_cause(e)
            self.say(f"CUDA graph: the step could not be recorded ({self.failed}): running "
                     f"without a graph")
            return self.step(batches)
        self.graph, self.outputs = graph, outputs
        graph.replay()  # recording ran nothing: this is the step of this call
        return outputs
