"""Many streams, one step: the decoding step for a batch of independent sequences (continuous batching).

Each row of the batch is one sequence with its own state. A step reads one token per row and returns the
logits (n, V) for every row's next token: one (n × H) @ (H × H) matmul per layer instead of n matvecs, which
is where batching wins (a matvec is bound by reading W_hh; a matmul reuses it n times). On the CPU the step
is :class:`model.cpu_step.CPUStep` (numpy); on other devices the model's forward pass on one token.

Rows join and leave between steps (:meth:`BatchDecoder.add`, :meth:`BatchDecoder.keep`); a row's state never
depends on the other rows. Every step writes fresh tensors, so the states handed in (a prefix cache's, say)
are never modified.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.cells import State
from model.cpu_step import CPUStep
from model.decode import has_fast_step
from model.lm import RNNLM

__all__ = ["BatchDecoder"]


class BatchDecoder:
    def __init__(self, model: RNNLM):
        self.model = model
        self.fast = has_fast_step(model)
        self.state: State = model.init_state(0)  # each (L, n, H), no rows yet
        self.cpu_step = CPUStep(model) if self.fast else None

    def __len__(self) -> int:
        return self.state[0].shape[1]

    def add(self, state: State) -> int:
        """Append one sequence's state (each tensor (L, 1, H)) as the last row; returns its row index."""
        self.state = tuple(torch.cat([mine, theirs.to(mine.device)], dim=1) for mine, theirs in zip(self.state, state))
        return len(self) - 1

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (the others leave the batch)."""
        if rows == list(range(len(self))):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.state[0].device)
        self.state = tuple(s.index_select(1, index) for s in self.state)

    def row_state(self, row: int) -> State:
        """A copy of one row's state, (L, 1, H) per tensor."""
        return tuple(s[:, row : row + 1].clone() for s in self.state)

    def step(self, tokens: Tensor) -> Tensor:
        """Read ``tokens`` (n,), one per row; return the logits (n, V) for each row's next token."""
        if not self.fast:
            with torch.inference_mode():
                logits, self.state = self.model(tokens.to(self.model.device).reshape(-1, 1), self.state)
            return logits[:, 0]
        state, logits = self.cpu_step(tokens.numpy(), tuple(s.numpy() for s in self.state))
        self.state = tuple(torch.from_numpy(s) for s in state)
        return torch.from_numpy(logits)
