"""Inference on the CPU in numpy: the per-token step and the reading loop, around each cell's ``numpy_update``.

A recurrence is a loop of small matmuls and element-wise operations — for one stream, (1 × H) @ (H × G·H) per
character — and at that size what a call costs matters as much as its arithmetic, and numpy's calls cost less
than torch's (the figures: BENCHMARKS.md, "Decoding in the engine"). So on the CPU, when no gradient is
recorded, these loops run in numpy on arrays that share memory with the model's tensors (no copies);
otherwise, and on other devices, the same math runs in torch (model/cells/).

A cell's ``numpy_update(xw, state, layer, out)`` (in its module in model/cells/) advances one layer by one
step: ``xw`` (n, G·H) is ``X_t W_xh + b_h``, ``state`` the layer's (n, H) arrays before the step, and the new
ones are written into ``out``, which must not share memory with ``state`` (a matmul must never write into its
own input).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["CPUStep", "on_cpu", "read_sequence"]

Arrays = tuple[np.ndarray, ...]


def on_cpu(*tensors: Tensor) -> bool:
    """Whether numpy can run the loop on these tensors in place: CPU memory, a float type numpy has."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


def read_sequence(xw: Tensor, state: tuple[Tensor, ...], layer) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer over a whole sequence: ``xw`` (T, B, G·H) and the state before it → outputs (T, B, H) and the
    final state, as the layer's other paths give them (CPU tensors, no gradient)."""
    update, arrays = layer.numpy_update, layer.numpy_arrays()
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
        self.update = model.layers[0].numpy_update
        first = model.layers[0]
        with torch.no_grad():
            self.table = (first.w_xh + first.b_h).numpy()  # (V, G·H), a fresh array
        self.layers = [layer.numpy_arrays() for layer in model.layers]
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
