"""Inference on the CPU in numpy: each cell's update, the per-token step, and the reading loop.

A recurrence is a loop of small matmuls and element-wise operations — for one stream, (1 × H) @ (H × G·H) per
character — and at that size what a call costs matters as much as its arithmetic, and numpy's calls cost less
than torch's (the figures: BENCHMARKS.md, "The CPU loops in numpy"). So on the CPU, when no gradient is
recorded, these loops run in numpy on arrays that share memory with the model's tensors (no copies);
otherwise, and on other devices, the same math runs in torch (model/cells.py, model/recurrence.py).

Each ``*_update(xw, state, layer, out)`` advances one layer by one step: ``xw`` (n, G·H) is ``X_t W_xh + b_h``,
``state`` the layer's (n, H) arrays before the step, and the new ones are written into ``out``, which must
not share memory with ``state`` (a matmul must never write into its own input).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["CPUStep", "LayerArrays", "on_cpu", "read_sequence"]

Arrays = tuple[np.ndarray, ...]


def on_cpu(*tensors: Tensor) -> bool:
    """Whether numpy can run the loop on these tensors in place: CPU memory, a float type numpy has."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


@dataclass
class LayerArrays:
    """One layer's parameters as numpy views of its tensors."""

    w_xh: np.ndarray
    b_h: np.ndarray
    w_hh: np.ndarray
    b_hn: np.ndarray | None = None  # GRU only

    @classmethod
    def of(cls, layer) -> LayerArrays:
        b_hn = getattr(layer, "b_hn", None)
        return cls(
            layer.w_xh.detach().numpy(),
            layer.b_h.detach().numpy(),
            layer.w_hh.detach().numpy(),
            None if b_hn is None else b_hn.detach().numpy(),
        )


def _sigmoid_(x: np.ndarray) -> None:
    """σ(x) = (1 + tanh(x / 2)) / 2, in place (numpy has no sigmoid; this form never overflows)."""
    x *= 0.5
    np.tanh(x, out=x)
    x *= 0.5
    x += 0.5


def rnn_update(xw: np.ndarray, state: Arrays, layer: LayerArrays, out: Arrays) -> None:
    """``H_t = tanh(X_t W_xh + b_h + H_{t-1} W_hh)``."""
    h_new = out[0]
    np.matmul(state[0], layer.w_hh, out=h_new)
    h_new += xw
    np.tanh(h_new, out=h_new)


def gru_update(xw: np.ndarray, state: Arrays, layer: LayerArrays, out: Arrays) -> None:
    """``r, z = σ(·)``, ``n = tanh(X W_xn + b_n + r ⊙ (H W_hn + b_hn))``, ``H_t = n + z ⊙ (H_{t-1} - n)``."""
    h = state[0]
    hidden = h.shape[-1]
    hw = h @ layer.w_hh  # (n, 3H)
    rz = xw[:, : 2 * hidden] + hw[:, : 2 * hidden]
    _sigmoid_(rz)
    n = hw[:, 2 * hidden :]
    n += layer.b_hn
    n *= rz[:, :hidden]
    n += xw[:, 2 * hidden :]
    np.tanh(n, out=n)
    h_new = out[0]
    np.subtract(h, n, out=h_new)
    h_new *= rz[:, hidden:]
    h_new += n


def lstm_update(xw: np.ndarray, state: Arrays, layer: LayerArrays, out: Arrays) -> None:
    """Gates i, f, g, o from ``X W_xh + b_h + H W_hh``; ``C_t = f ⊙ C_{t-1} + i ⊙ g``, ``H_t = o ⊙ tanh(C_t)``."""
    h, c = state
    hidden = h.shape[-1]
    gates = h @ layer.w_hh  # (n, 4H)
    gates += xw
    _sigmoid_(gates[:, : 2 * hidden])  # i, f
    _sigmoid_(gates[:, 3 * hidden :])  # o
    g = gates[:, 2 * hidden : 3 * hidden]
    np.tanh(g, out=g)
    h_new, c_new = out
    np.multiply(gates[:, hidden : 2 * hidden], c, out=c_new)
    g *= gates[:, :hidden]
    c_new += g
    np.tanh(c_new, out=h_new)
    h_new *= gates[:, 3 * hidden :]


UPDATES: dict[str, Callable[[np.ndarray, Arrays, LayerArrays, Arrays], None]] = {
    "rnn": rnn_update,
    "gru": gru_update,
    "lstm": lstm_update,
}


def read_sequence(cell: str, xw: Tensor, state: tuple[Tensor, ...], layer) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer over a whole sequence: ``xw`` (T, B, G·H) and the state before it → outputs (T, B, H) and the
    final state, as the layer's ``recurrence`` gives them (CPU tensors, no gradient)."""
    update, arrays = UPDATES[cell], LayerArrays.of(layer)
    steps, batch = xw.shape[:2]
    outputs = torch.empty(steps, batch, layer.hidden_size, dtype=xw.dtype)
    xs, hs = xw.detach().numpy(), outputs.numpy()
    current = tuple(s.detach().numpy() for s in state)
    # h_t is written straight into the outputs; the LSTM's c alternates between two buffers.
    cells = [np.empty_like(current[1]) for _ in range(2)] if len(current) == 2 else None
    for t, (x_t, h_t) in enumerate(zip(xs, hs)):
        out = (h_t,) if cells is None else (h_t, cells[t % 2])
        update(x_t, current, arrays, out)
        current = out
    final = tuple(torch.from_numpy(a.copy()) for a in current) if steps else state
    return outputs, final


class CPUStep:
    """One decoding step for n independent streams: read one token per stream, return the new state and the
    logits for each stream's next token. The first layer's ``X W_xh + b_h`` is a row of a table precomputed for
    every token (the one-hot product is a row lookup)."""

    def __init__(self, model):
        self.update = UPDATES[model.config.cell]
        first = model.layers[0]
        with torch.no_grad():
            self.table = (first.w_xh + first.b_h).numpy()  # (V, G·H), a fresh array
        self.layers = [LayerArrays.of(layer) for layer in model.layers]
        self.w_y, self.b_y = model.w_y.detach().numpy(), model.b_y.detach().numpy()

    def __call__(
        self, tokens: np.ndarray | slice, state: Arrays, new: Arrays | None = None, logits: np.ndarray | None = None
    ) -> tuple[Arrays, np.ndarray]:
        """``tokens`` (n,) integer ids — or, for one stream, ``slice(id, id + 1)``, a view instead of a
        gathered copy — and ``state``, (L, n, H) arrays before them → the state after them and the logits
        (n, V), written into ``new`` and ``logits`` when given (``new`` must not share memory with ``state``),
        else into fresh arrays. ``state`` is left as it was."""
        if new is None:
            new = tuple(np.empty_like(s) for s in state)
        x = self.table[tokens]  # (n, G·H): the first layer's X W_xh + b_h
        for l, layer in enumerate(self.layers):
            xw = x if l == 0 else x @ layer.w_xh + layer.b_h
            self.update(xw, tuple(s[l] for s in state), layer, tuple(s[l] for s in new))
            x = new[0][l]
        logits = np.matmul(x, self.w_y, out=logits)
        logits += self.b_y
        return new, logits
