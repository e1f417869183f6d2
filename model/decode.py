"""One token at a time, fast: the decoding step without module dispatch, autograd or torch's per-call cost.

On the CPU each step is :class:`model.cpu_step.CPUStep` (numpy): every layer's update, where for the first
layer ``X W_xh + b_h`` is one row of a precomputed table, then the output head. Models on other devices take
the general path (the model's forward pass on one token); both paths give the same logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.cells import State
from model.cpu_step import CPUStep, on_cpu
from model.lm import RNNLM

__all__ = ["StepDecoder", "has_fast_step"]


def has_fast_step(model: RNNLM) -> bool:
    """Whether the model decodes through :class:`CPUStep`: weights numpy can read."""
    return on_cpu(model.w_y)


class StepDecoder:
    """Reads one token per :meth:`step` and returns the logits (V,) for the next, valid until the next step;
    ``state`` is a copy of the state after the tokens read so far. ``cpu_step`` may be shared between
    decoders of the same model (it holds only weights)."""

    def __init__(self, model: RNNLM, state: State, cpu_step: CPUStep | None = None):
        self.model = model
        self.fast = has_fast_step(model)
        if not self.fast:
            self._state = state
            return
        self.cpu_step = cpu_step or CPUStep(model)
        current = tuple(s.detach().numpy().copy() for s in state)  # each (L, 1, H)
        self._states = [current, tuple(np.empty_like(s) for s in current)]  # the state, the next step's: in turn
        self._logits = np.empty((1, model.config.vocab_size), dtype=current[0].dtype)
        self._logits_tensor = torch.from_numpy(self._logits)[0]  # the same memory, as the (V,) step() returns

    @property
    def state(self) -> State:
        if not self.fast:
            return self._state
        return tuple(torch.from_numpy(s.copy()) for s in self._states[0])  # each (L, 1, H)

    def step(self, token: int) -> Tensor:
        if not self.fast:
            with torch.inference_mode():
                logits, self._state = self.model(torch.tensor([[token]], device=self.model.device), self._state)
            return logits[0, 0]
        states = self._states
        self.cpu_step(slice(token, token + 1), states[0], states[1], self._logits)
        states.reverse()
        return self._logits_tensor
