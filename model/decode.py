"""One token at a time, fast: the decoding step without module dispatch, autograd or torch's per-call cost.

For the tanh RNN on the CPU each step is :class:`model.tanh_cpu.TanhStep` (numpy): ``H ← tanh(X W_xh + b_h +
H W_hh)`` per layer, where for the first layer ``X W_xh + b_h`` is one row of a precomputed table, then the
output head. GRU and LSTM models, and models on other devices, take the general path (the model's forward
pass on one token); both paths give the same logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.cells import State
from model.lm import RNNLM
from model.tanh_cpu import TanhStep, on_cpu

__all__ = ["StepDecoder", "has_fast_step"]


def has_fast_step(model: RNNLM) -> bool:
    """Whether the model decodes through :class:`TanhStep`: a tanh RNN whose weights numpy can read."""
    return model.config.cell == "rnn" and on_cpu(model.w_y)


class StepDecoder:
    """Reads one token per :meth:`step` and returns the logits (V,) for the next, valid until the next step;
    ``state`` is a copy of the state after the tokens read so far. ``tanh_step`` may be shared between
    decoders of the same model (it holds only weights)."""

    def __init__(self, model: RNNLM, state: State, tanh_step: TanhStep | None = None):
        self.model = model
        self.fast = has_fast_step(model)
        if not self.fast:
            self._state = state
            return
        self.tanh_step = tanh_step or TanhStep(model)
        h = state[0].detach().numpy()  # (L, 1, H)
        self._h = [h.copy(), np.empty_like(h)]  # the state, and the buffer the next step writes: in turn
        self._logits = np.empty((1, model.config.vocab_size), dtype=h.dtype)
        self._logits_tensor = torch.from_numpy(self._logits)[0]  # the same memory, as the (V,) step() returns

    @property
    def state(self) -> State:
        if not self.fast:
            return self._state
        return (torch.from_numpy(self._h[0].copy()),)  # (L, 1, H)

    def step(self, token: int) -> Tensor:
        if not self.fast:
            with torch.inference_mode():
                logits, self._state = self.model(torch.tensor([[token]], device=self.model.device), self._state)
            return logits[0, 0]
        h = self._h
        self.tanh_step(slice(token, token + 1), h[0], h[1], self._logits)
        h.reverse()
        return self._logits_tensor
