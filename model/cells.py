"""Recurrent layers: the notebook's tanh RNN, GRU and LSTM, with parameters named after the math.

Row-vector convention as in the notebook (``X @ W``). Each layer owns
- ``w_xh`` (in × G·H): input map; for the first layer ``in`` = vocab size and ``X_t W_xh`` is a row lookup,
- ``w_hh`` (H × G·H): recurrent map,
- ``b_h``  (G·H): one bias for both maps,
with G gates stacked along the columns in PyTorch's order, so weights exchange with torch.nn.RNN/GRU/LSTM:
- ``rnn``  (G = 1): ``H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)``
- ``gru``  (G = 3, gates r, z, n): ``r, z = σ(X_t W_x{r,z} + H_{t-1} W_h{r,z} + b_{r,z})``,
  ``n = tanh(X_t W_xn + b_n + r ⊙ (H_{t-1} W_hn + b_hn))``, ``H_t = (1 - z) ⊙ n + z ⊙ H_{t-1}``;
  the extra bias ``b_hn`` (H) sits inside the reset product, as in PyTorch.
- ``lstm`` (G = 4, gates i, f, g, o): ``C_t = f ⊙ C_{t-1} + i ⊙ g``, ``H_t = o ⊙ tanh(C_t)``.

Every layer maps inputs (T, B) token ids (first layer) or (T, B, in) floats, and a state tuple of (B, H)
tensors — ``(h,)``, or ``(h, c)`` for the LSTM — to outputs (T, B, H) and the final state tuple.
Input projections for all steps are one matmul; the Python loop runs only over the recurrence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cpu_step import on_cpu, read_sequence
from model.recurrence import gru_recurrence, lstm_recurrence, row_lookup, tanh_recurrence_

__all__ = ["CELLS", "GRULayer", "LSTMLayer", "RecurrentLayer", "RNNLayer", "State"]

State = tuple[Tensor, ...]

# When no gradient is recorded, a layer reads a sequence in numpy (model/cpu_step.py) if it is at least
# NUMPY_MIN_STEPS long and at most NUMPY_MAX_BATCH wide: numpy's calls cost less than torch's for a few rows,
# torch's two OpenMP threads share a wide batch's matmuls better, and a short call does not pay for switching
# thread pools. Training (recording a graph) stays in torch. The measurements: BENCHMARKS.md, "The CPU loops in
# numpy".
NUMPY_MIN_STEPS = 16
NUMPY_MAX_BATCH = 4


class RecurrentLayer(nn.Module):
    cell = "rnn"  # the name in CELLS
    num_gates = 1
    num_state_tensors = 1  # h, or (h, c) for the LSTM

    def __init__(self, input_size: int, hidden_size: int, weight_drop: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_drop = weight_drop  # DropConnect on W_hh while training: one mask per forward pass
        width = self.num_gates * hidden_size
        self.w_xh = nn.Parameter(torch.empty(input_size, width))
        self.w_hh = nn.Parameter(torch.empty(hidden_size, width))
        self.b_h = nn.Parameter(torch.empty(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project_inputs(self, x: Tensor) -> Tensor:
        """``X_t W_xh + b_h`` for every step at once: (T, B) ids or (T, B, in) floats -> (T, B, G·H)."""
        if x.dtype == torch.long:  # one-hot @ W_xh is a row lookup; bias folded in
            table = self.w_xh + self.b_h
            return row_lookup(table, x) if table.requires_grad else F.embedding(x, table)
        steps, batch, _ = x.shape
        return torch.addmm(self.b_h, x.reshape(steps * batch, -1), self.w_xh).view(steps, batch, -1)

    def recurrent_weights(self) -> Tensor:
        """``W_hh`` as this forward pass uses it: while training with ``weight_drop`` p, each entry is zeroed
        with probability p and the rest scaled by 1 / (1 - p) (DropConnect; the same mask for every step of the
        sequence, a fresh one per pass); otherwise ``W_hh`` itself."""
        if self.training and self.weight_drop > 0:
            return F.dropout(self.w_hh, self.weight_drop, training=True)
        return self.w_hh

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xw = self.project_inputs(x)
        w_hh = self.recurrent_weights()
        # Autograd records this layer when a gradient is wanted for its inputs, state or any parameter.
        if torch.is_grad_enabled() and any(t.requires_grad for t in (xw, *state, *self.parameters())):
            return self.recorded_recurrence(xw, state, w_hh)
        steps, batch = xw.shape[:2]
        if steps >= NUMPY_MIN_STEPS and batch <= NUMPY_MAX_BATCH and on_cpu(xw, *state) and w_hh is self.w_hh:
            return read_sequence(self.cell, xw, state, self)  # numpy's calls cost less at this size
        return self.recurrence(xw, state, w_hh)

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        """The loop over steps in torch, recording nothing."""
        raise NotImplementedError

    def recorded_recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        """The loop while autograd records: a hand-written BPTT (model/recurrence.py)."""
        raise NotImplementedError


class RNNLayer(RecurrentLayer):
    """The notebook's cell: ``H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)``."""

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        outputs = tanh_recurrence_(xw, w_hh, state[0])  # (T, B, H), written over xw
        return outputs, (outputs[-1],)

    recorded_recurrence = recurrence  # tanh_recurrence_ records its own backward when a gradient is wanted


class GRULayer(RecurrentLayer):
    cell = "gru"
    num_gates = 3

    def __init__(self, input_size: int, hidden_size: int, weight_drop: float = 0.0):
        super().__init__(input_size, hidden_size, weight_drop)
        self.b_hn = nn.Parameter(torch.empty(hidden_size))  # bias of H W_hn, inside the reset product
        self.reset_parameters()

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        hidden = self.hidden_size
        h = state[0]
        outputs = []
        for xw_t in xw.unbind(0):
            hw = h @ w_hh  # (B, 3H)
            r, z = torch.sigmoid(xw_t[:, : 2 * hidden] + hw[:, : 2 * hidden]).chunk(2, dim=1)
            n = torch.tanh(xw_t[:, 2 * hidden :] + r * (hw[:, 2 * hidden :] + self.b_hn))
            h = n + z * (h - n)  # (1 - z) ⊙ n + z ⊙ h
            outputs.append(h)
        return torch.stack(outputs), (h,)

    def recorded_recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        outputs = gru_recurrence(xw, w_hh, self.b_hn, state[0])
        return outputs, (outputs[-1],)


class LSTMLayer(RecurrentLayer):
    cell = "lstm"
    num_gates = 4
    num_state_tensors = 2

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        h, c = state
        outputs = []
        for xw_t in xw.unbind(0):
            gates = torch.addmm(xw_t, h, w_hh)  # (B, 4H)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)

    def recorded_recurrence(self, xw: Tensor, state: State, w_hh: Tensor) -> tuple[Tensor, State]:
        outputs, c = lstm_recurrence(xw, w_hh, *state)
        return outputs, (outputs[-1], c)


CELLS: dict[str, type[RecurrentLayer]] = {"rnn": RNNLayer, "gru": GRULayer, "lstm": LSTMLayer}
