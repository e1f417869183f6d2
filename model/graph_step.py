"""The decoding step on a CUDA device, captured in CUDA graphs: one launch per step instead of a dozen.

A decoding step for n rows — every layer's update, the head ``Y = H W_y + b_y``, the greedy choice (argmax,
never ``<unk>``) and feeding the chosen token back as the next input — is a dozen small kernels; eagerly, each
costs a launch and Python's dispatch, which on a GPU take longer than the arithmetic. Captured once as a CUDA
graph, the step replays as one launch. A graph's tensors live at fixed addresses, so the step works on static
buffers: the input tokens (C,), the state (each (L, C, H)), the logits (C, V) and the greedy tokens (C,), for the
capacity C = the largest captured size. A batch of n rows replays the graph of the next captured size ≥ n (a
ladder, as vLLM's cudagraph capture sizes): rows n…size−1 are padding, computed and never read.

The step is the model's own forward pass on one token per row, recorded: the replay computes what the eager
step computes, kernel for kernel.

A *burst* is ``burst_steps`` greedy steps in one graph, for batches up to ``burst_rows`` rows: each step's
input (the previous step's greedy choice) is recorded in ``record`` (k + 1, C), whose last row is the choice
after the last step, so k tokens a row cost one launch and one copy to the host. A scheduler runs a burst
when every row is plain greedy with at least k tokens to go and nothing else waits.
"""

from __future__ import annotations

import bisect

import torch

from model.lm import RNNLM

__all__ = ["BURST_ROWS", "BURST_STEPS", "DEFAULT_SIZES", "GraphStep", "capture_sizes"]

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BURST_STEPS = 16  # greedy steps in one burst: a new request waits at most this many steps to join
BURST_ROWS = 64  # bursts are captured up to this batch size (past it a step's arithmetic outweighs its launch)


def capture_sizes(max_rows: int, sizes: tuple[int, ...] = DEFAULT_SIZES) -> tuple[int, ...]:
    """The ladder up to the first size that holds ``max_rows`` rows."""
    out = []
    for size in sorted(sizes):
        out.append(size)
        if size >= max_rows:
            break
    return tuple(out)


class GraphStep:
    """Static buffers and one captured step per size in ``sizes``. :meth:`run` replays the step for the first
    ``n`` rows: it reads ``tokens[:n]`` and ``state[:, :n]``, writes the new state there, the logits into
    ``logits[:n]`` and the greedy choice into ``greedy[:n]`` and ``tokens[:n]`` (the next step's input unless the
    caller writes others)."""

    def __init__(
        self, model: RNNLM, sizes: tuple[int, ...], burst_steps: int = BURST_STEPS, burst_rows: int = BURST_ROWS
    ):
        if model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.model = model
        self.sizes = tuple(sorted(set(sizes)))
        capacity = self.sizes[-1]
        device = model.device
        self.tokens = torch.ones(capacity, dtype=torch.long, device=device)
        self.state = model.init_state(capacity)  # each (L, C, H)
        self.logits = torch.zeros(capacity, model.config.vocab_size, device=device, dtype=model.w_y.dtype)
        self.greedy = torch.ones(capacity, dtype=torch.long, device=device)
        self.burst_steps = burst_steps
        self.record = torch.ones(burst_steps + 1, capacity, dtype=torch.long, device=device)
        self._burst_sizes = tuple(size for size in self.sizes if size <= burst_rows) if burst_steps > 1 else ()
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._bursts: dict[int, torch.cuda.CUDAGraph] = {}
        self._capture()

    @property
    def capacity(self) -> int:
        return self.sizes[-1]

    def size_for(self, n: int) -> int | None:
        """The captured size that runs ``n`` rows (None when n is past the largest)."""
        i = bisect.bisect_left(self.sizes, n)
        return self.sizes[i] if i < len(self.sizes) else None

    def run(self, n: int) -> None:
        size = self.size_for(n)
        if size is None:
            raise ValueError(f"{n} rows: more than the largest captured size, {self.capacity}")
        self._graphs[size].replay()

    def has_burst(self, n: int) -> bool:
        return self.size_for(n) in self._bursts

    def run_burst(self, n: int) -> None:
        """``burst_steps`` greedy steps for the first ``n`` rows: their inputs in ``record[:k, :n]``, the choice
        after the last in ``record[k, :n]`` (and ``greedy``, ``tokens``)."""
        self._bursts[self.size_for(n)].replay()

    def _burst(self, n: int) -> None:
        for j in range(self.burst_steps):
            self.record[j, :n].copy_(self.tokens[:n])
            self._step(n)
        self.record[self.burst_steps, :n].copy_(self.greedy[:n])

    def _step(self, n: int) -> None:
        with torch.inference_mode():
            logits, new = self.model(self.tokens[:n, None], tuple(s[:, :n] for s in self.state))
            for mine, theirs in zip(self.state, new):
                mine[:, :n].copy_(theirs)
            step_logits = logits[:, 0]
            self.logits[:n].copy_(step_logits)
            torch.add(step_logits[:, 1:].argmax(-1), 1, out=self.greedy[:n])  # greedy: never <unk> (id 0)
            self.tokens[:n].copy_(self.greedy[:n])

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side):  # warm-up outside capture: cuBLAS picks and allocates its workspaces
            for size in self.sizes:
                self._step(size)
        torch.cuda.current_stream(self.model.device).wait_stream(side)
        pool = None
        for size in reversed(self.sizes):  # the largest first: the smaller ones fit in its memory pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(size)
            pool = graph.pool()
            self._graphs[size] = graph
        for size in reversed(self._burst_sizes):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._burst(size)
            self._bursts[size] = graph
        for s in self.state:  # capture ran the steps on zeros: start clean
            s.zero_()
        self.tokens.fill_(1)
