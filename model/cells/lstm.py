"""The long short-term memory cell, gates i, f, g, o along the columns in PyTorch's order:

i, f, o = σ(X_t W_x{i,f,o} + H_{t-1} W_h{i,f,o} + b_{i,f,o})
g       = tanh(X_t W_xg + H_{t-1} W_hg + b_g)
C_t     = f ⊙ C_{t-1} + i ⊙ g
H_t     = o ⊙ tanh(C_t)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from model.cells.layer import RecurrentLayer, State, numpy_sigmoid_, recurrent_weight_grad, tanh_from_sigmoid_

__all__ = ["LSTMLayer"]


class LSTMLayer(RecurrentLayer):
    cell = "lstm"
    num_gates = 4
    num_state_tensors = 2
    fused_op = torch._VF.lstm

    def fused_call(self, inputs: Tensor, state: State, params: list[Tensor], recording: bool):
        outputs, h, c = self.fused_op(inputs, [s[None] for s in state], params, True, 1, 0.0, recording, False, False)
        return outputs, (h[0], c[0])

    def step(self, x: Tensor, state: State, w_hh: Tensor) -> State:
        (h, c), H = state, self.hidden_size
        w_xi, w_xf, w_xg, w_xo = self.w_xh.split(H, dim=1)
        w_hi, w_hf, w_hg, w_ho = w_hh.split(H, dim=1)
        b_i, b_f, b_g, b_o = self.b_h.split(H)
        i = torch.sigmoid(x @ w_xi + h @ w_hi + b_i)
        f = torch.sigmoid(x @ w_xf + h @ w_hf + b_f)
        o = torch.sigmoid(x @ w_xo + h @ w_ho + b_o)
        g = torch.tanh(x @ w_xg + h @ w_hg + b_g)
        c = f * c + i * g
        return o * torch.tanh(c), c

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor, recording: bool) -> tuple[Tensor, State]:
        if recording:
            outputs, c = _LSTMRecurrence.apply(xw, w_hh, *state)
            return outputs, (outputs[-1], c)
        return _lstm_steps(xw, w_hh, *state)

    @staticmethod
    def numpy_update(xw: np.ndarray, state, layer, out) -> None:
        h, c = state
        hidden = h.shape[-1]
        gates = h @ layer.w_hh  # (n, 4H)
        gates += xw
        numpy_sigmoid_(gates[:, : 2 * hidden])  # i, f
        numpy_sigmoid_(gates[:, 3 * hidden :])  # o
        g = gates[:, 2 * hidden : 3 * hidden]
        np.tanh(g, out=g)
        h_new, c_new = out
        np.multiply(gates[:, hidden : 2 * hidden], c, out=c_new)
        g *= gates[:, :hidden]
        c_new += g
        np.tanh(c_new, out=h_new)
        h_new *= gates[:, 3 * hidden :]


def _lstm_steps(xw: Tensor, w_hh: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, State]:
    """Nothing to record: the equations a step at a time over the projected inputs ``xw`` (T, B, 4H), each
    step's tensors small and in cache (see gru.py's ``_gru_steps``)."""
    outputs = []
    for xw_t in xw.unbind(0):
        i, f, g, o = torch.addmm(xw_t, h, w_hh).chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def _lstm_forward(xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor):
    """xw: (T, B, 4H) input projections with the bias added. Returns the activated gates (T, B, 4H) and
    H_t, C_t, tanh(C_t) for every step (T, B, H)."""
    steps, batch, width = xw.shape
    hidden = width // 4
    gates = xw.clone()  # step t turns gates[t] into i, f, g, o in place
    states, cells, tanh_cells = (xw.new_empty(steps, batch, hidden) for _ in range(3))
    h, c = h0, c0
    for a, h_t, c_t, tanh_c in zip(gates.unbind(0), states.unbind(0), cells.unbind(0), tanh_cells.unbind(0)):
        a.addmm_(h, w_hh)
        i, f, g, o = a.chunk(4, dim=1)
        g.mul_(2)
        a.sigmoid_()  # i, f, o; and σ(2 Z_g)
        tanh_from_sigmoid_(g)
        torch.mul(f, c, out=c_t).addcmul_(i, g)
        tanh_from_sigmoid_(torch.mul(c_t, 2, out=tanh_c).sigmoid_())
        torch.mul(o, tanh_c, out=h_t)
        h, c = h_t, c_t
    return gates, states, cells, tanh_cells


class _LSTMRecurrence(torch.autograd.Function):
    """The forward pass above, and BPTT from the saved gates, states and cells."""

    @staticmethod
    def forward(ctx, xw: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor):
        gates, states, cells, tanh_cells = _lstm_forward(xw, w_hh, h0, c0)
        ctx.save_for_backward(w_hh, h0, c0, gates, states, cells, tanh_cells)
        return states, cells[-1].clone()  # a copy: a caller keeping C_T must not keep the whole (T, B, H)

    @staticmethod
    def backward(ctx, grad_states: Tensor, grad_c: Tensor | None):
        w_hh, h0, c0, gates, states, cells, tanh_cells = ctx.saved_tensors
        steps = len(states)
        grad_z = torch.empty_like(gates)  # dL/dZ_t, the four gates' pre-activations: (T, B, 4H)
        grad_cell = grad_c.clone() if grad_c is not None else torch.zeros_like(c0)  # dL/dC_t, carried back
        grad_h = torch.empty_like(h0)
        derivative = torch.empty_like(gates[0])  # σ' or tanh' of each gate at step t: (B, 4H)
        one = gates.new_ones(())
        w_hh_t = w_hh.t().contiguous()  # a transposed copy: the per-step products run ~10 % faster than on a view
        for t in range(steps - 1, -1, -1):
            i, f, g, o = gates[t].chunk(4, dim=1)
            d_i, d_f, d_g, d_o = derivative.chunk(4, dim=1)
            z_i, z_f, z_g, z_o = grad_z[t].chunk(4, dim=1)
            tanh_c = tanh_cells[t]
            if t < steps - 1:  # dL/dH_t = upstream + dL/dZ_{t+1} W_hh^T
                torch.addmm(grad_states[t], grad_z[t + 1], w_hh_t, out=grad_h)
            else:
                grad_h.copy_(grad_states[t])
            torch.addcmul(gates[t], gates[t], gates[t], value=-1, out=derivative)  # σ' = σ - σ² (i, f, o)
            torch.addcmul(one, g, g, value=-1, out=d_g)  # tanh' = 1 - g²
            torch.addcmul(one, tanh_c, tanh_c, value=-1, out=z_i).mul_(o)  # (z_i as scratch) o ⊙ tanh'(C_t)
            grad_cell.addcmul_(grad_h, z_i)  # dL/dC_t = from C_{t+1} + from H_t
            torch.mul(d_o, tanh_c, out=z_o).mul_(grad_h)
            torch.mul(d_i, g, out=z_i).mul_(grad_cell)
            torch.mul(d_f, cells[t - 1] if t > 0 else c0, out=z_f).mul_(grad_cell)
            torch.mul(d_g, i, out=z_g).mul_(grad_cell)
            grad_cell.mul_(f)  # becomes dL/dC_{t-1}
        grad_h0 = grad_z[0] @ w_hh_t if ctx.needs_input_grad[2] else None
        grad_w_hh = recurrent_weight_grad(h0, states, grad_z) if ctx.needs_input_grad[1] else None
        return grad_z, grad_w_hh, grad_h0, grad_cell
