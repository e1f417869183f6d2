"""One token at a time, fast: the decoding step without module dispatch, autograd or fresh allocations.

For the tanh RNN each layer's step is ``H ← tanh(X W_xh + b_h + H W_hh)``, where for the first layer
``X W_xh + b_h`` is one row of a precomputed table. States live in two preallocated buffers per layer used in
turn, so a matmul never writes into its own input (which silently gives wrong tokens). GRU and LSTM models
take the general path (the model's forward pass on one token); both paths give the same logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.cells import State
from model.lm import RNNLM

__all__ = ["RNNStepWeights", "StepDecoder"]


class RNNStepWeights:
    """A tanh RNN's weights as its decoding step reads them, detached: the first layer's input projections
    for every token as one table (``X_t W_xh + b_h`` is a row of it), then per layer W_xh, b_h, W_hh."""

    def __init__(self, model: RNNLM):
        with torch.no_grad():
            layers = model.layers
            self.table = (layers[0].w_xh + layers[0].b_h).detach()  # (V, H)
            self.w_xh = [layer.w_xh.detach() for layer in layers]
            self.b_h = [layer.b_h.detach() for layer in layers]
            self.w_hh = [layer.w_hh.detach() for layer in layers]
            self.w_y, self.b_y = model.w_y.detach(), model.b_y.detach()


class StepDecoder:
    """Reads one token per :meth:`step` and returns the logits (V,) for the next, valid until the next step
    (the fast path reuses its buffer); ``state`` is a copy of the state after the tokens read so far."""

    def __init__(self, model: RNNLM, state: State, weights: RNNStepWeights | None = None):
        self.model = model
        self.fast = model.config.cell == "rnn"
        if not self.fast:
            self._state = state
            return
        self.weights = weights or RNNStepWeights(model)
        with torch.no_grad():  # not inference_mode: the buffers are updated in place outside it later
            h = state[0]  # (L, 1, H)
            self.buffers = [[h[l].clone(), torch.empty_like(h[l])] for l in range(len(model.layers))]  # (1, H) each
            self.current = 0
            self.logits = torch.empty(1, model.config.vocab_size, dtype=h.dtype, device=h.device)

    @property
    def state(self) -> State:
        if not self.fast:
            return self._state
        return (torch.stack([pair[self.current] for pair in self.buffers]).clone(),)  # (L, 1, H)

    def step(self, token: int) -> Tensor:
        if not self.fast:
            with torch.inference_mode():
                logits, self._state = self.model(torch.tensor([[token]], device=self.model.device), self._state)
            return logits[0, 0]
        # Fast path: every tensor here is detached, so autograd records nothing even without inference_mode
        # (whose per-call cost is a noticeable part of a 30 µs step).
        w = self.weights
        read, write = self.current, 1 - self.current
        x = w.table[token : token + 1]  # (1, H)
        for l, pair in enumerate(self.buffers):
            h_new = pair[write]
            if l == 0:
                torch.addmm(x, pair[read], w.w_hh[0], out=h_new)
            else:
                torch.addmm(w.b_h[l], x, w.w_xh[l], out=h_new)
                h_new.addmm_(pair[read], w.w_hh[l])
            h_new.tanh_()
            x = h_new
        self.current = write
        torch.addmm(w.b_y, x, w.w_y, out=self.logits)
        return self.logits[0]
