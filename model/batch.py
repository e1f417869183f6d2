"""Many streams, one step: the decoding step for a batch of independent sequences (continuous batching).

Each row of the batch is one sequence with its own state. A step reads one token per row and gives the logits
(n, V) for every row's next token, and the greedy choice from them (argmax, never ``<unk>``): one (n × H) @
(H × H) matmul per layer instead of n matvecs, which is where batching wins (a matvec is bound by reading W_hh;
a matmul reuses it n times). The step runs as :class:`model.cpu_step.CPUStep` (numpy) on the CPU, as a replayed
CUDA graph (:class:`model.graph_step.GraphStep`) on a CUDA device, and as the model's forward pass on one
token elsewhere (or on CUDA past the largest captured size).

The rows live in buffers allocated for a capacity, not per step: a step writes into them, rows join in bulk
(:meth:`BatchDecoder.add_many`: one copy per state tensor for all that join) and leave in bulk
(:meth:`BatchDecoder.keep`: one gather). A row's state never depends on the other rows, and a state handed in
(a prefix cache's, say) is copied, never modified.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.cells import State
from model.cpu_step import CPUStep
from model.decode import has_fast_step
from model.graph_step import GraphStep, capture_sizes
from model.lm import RNNLM
from model.sampling import greedy_choice

__all__ = ["BatchDecoder"]


class BatchDecoder:
    """``graph_rows``: on a CUDA device, capture the step in CUDA graphs for batches up to this many rows
    (0: never)."""

    def __init__(self, model: RNNLM, capacity: int = 8, graph_rows: int = 0):
        self.model = model
        self.fast = has_fast_step(model)
        self.cpu_step = CPUStep(model) if self.fast else None
        self.graph = None
        if graph_rows > 0 and model.device.type == "cuda":
            self.graph = GraphStep(model, capture_sizes(graph_rows))
            self._host_greedy = torch.empty(self.graph.capacity, dtype=torch.long, pin_memory=True)
            self._host_record = torch.empty(self.graph.record.shape, dtype=torch.long, pin_memory=True)
        self.n = 0
        self.steps_in_graphs = 0  # steps replayed from a graph (the rest ran eagerly)
        self._vocab = model.config.vocab_size
        self._capacity = 0
        self._state: State = ()
        self._spare: State = ()  # the CPU step's second state buffer: it writes the new state there, then they swap
        self._logits: Tensor | None = None
        self._choices = np.ones(0, dtype=np.int64)  # the greedy choice from each row's logits
        self._on_graph = False
        if self.graph is not None:
            self._use_graph_buffers()
        else:
            self._allocate(max(capacity, 1))

    # -- storage ------------------------------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        """Buffers for ``capacity`` rows, holding the current rows."""
        n = self.n
        fresh = self.model.init_state(capacity)
        for new, old in zip(fresh, self._state):
            new[:, :n].copy_(old[:, :n])
        logits = torch.zeros(capacity, self._vocab, device=self.model.device, dtype=self.model.w_y.dtype)
        if self._logits is not None:
            logits[:n].copy_(self._logits[:n])
        self._state, self._logits = fresh, logits
        self._spare = self.model.init_state(capacity) if self.fast else ()
        choices = np.ones(capacity, dtype=np.int64)
        choices[:n] = self._choices[:n]
        self._choices = choices
        self._capacity = capacity
        self._on_graph = False
        if self.fast:
            self._arrays = [tuple(s.numpy() for s in self._state), tuple(s.numpy() for s in self._spare)]
            self._logits_array = self._logits.numpy()

    def _use_graph_buffers(self) -> None:
        """Move the rows into the graphs' static buffers (they fit)."""
        g, n = self.graph, self.n
        for mine, theirs in zip(g.state, self._state):
            mine[:, :n].copy_(theirs[:, :n])
        if self._logits is not None:
            g.logits[:n].copy_(self._logits[:n])
        choices = np.ones(g.capacity, dtype=np.int64)
        choices[:n] = self._choices[:n]
        g.tokens[:n].copy_(torch.from_numpy(choices[:n]))  # the next inputs, as a step feeds them back
        self._state, self._logits, self._choices = g.state, g.logits, choices
        self._capacity, self._on_graph = g.capacity, True

    # -- rows -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @property
    def state(self) -> State:
        """The rows' states, each (L, n, H): views, valid until the next step or change of rows."""
        return tuple(s[:, : self.n] for s in self._state)

    @property
    def logits(self) -> Tensor:
        """Every row's scores for its next token, (n, V): a view, valid until the next step or change of rows."""
        return self._logits[: self.n]

    @property
    def choices(self) -> np.ndarray:
        """The greedy choice from every row's logits, (n,) ids: a view, valid until the next step."""
        return self._choices[: self.n]

    def add(self, state: State, logits: Tensor | None = None) -> int:
        """Append one sequence's state (each tensor (L, 1, H)) as the last row; returns its row index."""
        return self.add_many([state], [logits])

    def add_many(self, states: list[State], logits: list[Tensor | None]) -> int:
        """Append one row per state (each tensor (L, 1, H)), with the logits (V,) it gives for its next token (None:
        zeros, for a row whose next input is already known); returns the first new row's index."""
        first, k = self.n, len(states)
        end = first + k
        if end > self._capacity:
            self._allocate(max(2 * end, 8))
        device = self.model.device
        for j, mine in enumerate(self._state):
            parts = torch.cat([s[j] for s in states], dim=1)  # (L, k, H): one copy in for all that join
            mine[:, first:end].copy_(parts)
        given = [i for i, x in enumerate(logits) if x is not None]
        self._logits[first:end].zero_()
        self._choices[first:end] = 1  # a row without logits reads a forced id next: its choice is never used
        if given:
            rows = torch.stack([logits[i].reshape(-1) for i in given]).to(device, self._logits.dtype)
            index = torch.tensor(given, device=device) + first
            self._logits.index_copy_(0, index, rows)
            self._choices[first + np.array(given)] = greedy_choice(rows.cpu().numpy())
        if self._on_graph:  # the new rows' next inputs on the device: their choices, as a step feeds them back
            self.graph.tokens[first:end].copy_(torch.from_numpy(self._choices[first:end]))
        self.n = end
        if self.graph is not None and not self._on_graph and end <= self.graph.capacity:
            self._use_graph_buffers()
        return first

    def keep(self, rows) -> None:
        """Keep only these rows (increasing indices), in this order: the others leave the batch."""
        rows = np.asarray(rows, dtype=np.int64)
        m = len(rows)
        if m == self.n and (m == 0 or rows[-1] == m - 1):
            return
        if m:
            index = torch.from_numpy(rows).to(self.model.device)
            for s in self._state:
                s[:, :m] = s.index_select(1, index)  # one gather per state tensor for all that stay
            self._logits[:m] = self._logits.index_select(0, index)
            self._choices[:m] = self._choices[rows]
            if self._on_graph:
                tokens = self.graph.tokens
                tokens[:m] = tokens.index_select(0, index)
        self.n = m
        if self.graph is not None and not self._on_graph and m <= self.graph.capacity:
            self._use_graph_buffers()

    def row_state(self, row: int) -> State:
        """A copy of one row's state, (L, 1, H) per tensor."""
        return tuple(s[:, row : row + 1].clone() for s in self._state)

    def set_row_state(self, row: int, state: State, logits: Tensor) -> None:
        """Overwrite one row's state (each (L, 1, H)) and its next-token logits (V,)."""
        for mine, theirs in zip(self._state, state):
            mine[:, row : row + 1].copy_(theirs)
        self._logits[row].copy_(logits.reshape(-1))
        self._choices[row] = int(greedy_choice(self._logits[row].cpu().numpy()))
        if self._on_graph:
            self.graph.tokens[row] = int(self._choices[row])

    # -- the step -------------------------------------------------------------------------------------------
    def step(self, tokens, fed_back_except: np.ndarray | None = None) -> Tensor:
        """Read ``tokens`` (n,) ids, one per row (numpy or torch); return the logits (n, V) for each row's next
        token (a view, valid until the next step) and update :attr:`choices`.

        ``fed_back_except``: the caller promises that ``tokens`` equals :attr:`choices` except at these rows
        — on a CUDA graph the choices are already the next input on the device, so only these rows are sent."""
        n = self.n
        if n == 0:
            return self._logits[:0]
        if self.fast:
            return self._numpy_step(np.asarray(tokens))
        if self._on_graph:
            return self._graph_step(tokens, fed_back_except)
        ids = torch.as_tensor(tokens).to(self.model.device).reshape(-1, 1)
        with torch.inference_mode():
            logits, new = self.model(ids, self.state)
            for mine, theirs in zip(self._state, new):
                mine[:, :n].copy_(theirs)
            self._logits[:n].copy_(logits[:, 0])
            self._choices[:n] = (logits[:, 0, 1:].argmax(-1) + 1).cpu().numpy()
        return self._logits[:n]

    @property
    def burst_steps(self) -> int:
        """Greedy steps :meth:`burst` runs at once for this batch (0: none; step one at a time)."""
        if self._on_graph and self.n and self.graph.has_burst(self.n):
            return self.graph.burst_steps
        return 0

    def burst(self) -> np.ndarray:
        """:attr:`burst_steps` greedy steps, every row reading its choice each step: the ids read, (k, n), and
        :attr:`choices` after the last. One launch and one copy to the host."""
        g, n, k = self.graph, self.n, self.graph.burst_steps
        g.run_burst(n)
        self.steps_in_graphs += k
        host = self._host_record
        host[:, :n].copy_(g.record[:, :n], non_blocking=True)
        torch.cuda.current_stream(g.tokens.device).synchronize()
        record = host[:, :n].numpy()
        self._choices[:n] = record[k]
        return record[:k]

    def _numpy_step(self, tokens: np.ndarray) -> Tensor:
        n = self.n
        current, spare = self._arrays
        self.cpu_step(
            tokens,
            tuple(s[:, :n] for s in current),
            tuple(s[:, :n] for s in spare),
            self._logits_array[:n],
        )
        self._arrays.reverse()
        self._state, self._spare = self._spare, self._state
        self._choices[:n] = greedy_choice(self._logits_array[:n])
        return self._logits[:n]

    def _graph_step(self, tokens, fed_back_except: np.ndarray | None) -> Tensor:
        g, n = self.graph, self.n
        device_tokens = g.tokens
        if fed_back_except is None:
            device_tokens[:n].copy_(torch.as_tensor(tokens).reshape(-1), non_blocking=True)
        elif len(fed_back_except):
            rows = torch.from_numpy(np.ascontiguousarray(fed_back_except, dtype=np.int64))
            values = torch.from_numpy(np.ascontiguousarray(np.asarray(tokens)[fed_back_except], dtype=np.int64))
            device_tokens.index_copy_(0, rows.to(g.tokens.device), values.to(g.tokens.device))
        g.run(n)
        self.steps_in_graphs += 1
        host = self._host_greedy
        host[:n].copy_(g.greedy[:n], non_blocking=True)  # the one copy to the host a step
        torch.cuda.current_stream(g.tokens.device).synchronize()
        self._choices[:n] = host[:n].numpy()
        return self._logits[:n]
