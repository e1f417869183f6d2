"""The gated recurrent unit, gates r, z, n along the columns in PyTorch's order:

    r, z = σ(X_t W_x{r,z} + H_{t-1} W_h{r,z} + b_{r,z})
    n    = tanh(X_t W_xn + b_n + r ⊙ (H_{t-1} W_hn + b_hn))
    H_t  = (1 - z) ⊙ n + z ⊙ H_{t-1}

The extra bias ``b_hn`` (H) sits inside the reset product, as in PyTorch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from model.cells.layer import RecurrentLayer, State, numpy_sigmoid_, recurrent_weight_grad, tanh_from_sigmoid_

__all__ = ["GRULayer"]


class GRULayer(RecurrentLayer):
    cell = "gru"
    num_gates = 3
    fused_op = torch._VF.gru

    def add_cell_parameters(self) -> None:
        self.b_hn = nn.Parameter(torch.empty(self.hidden_size))  # bias of H W_hn, inside the reset product

    def fused_hidden_bias(self) -> Tensor:
        return torch.cat((self.b_hn.new_zeros(2 * self.hidden_size), self.b_hn))

    def step(self, x: Tensor, state: State, w_hh: Tensor) -> State:
        (h,), H = state, self.hidden_size
        w_xr, w_xz, w_xn = self.w_xh.split(H, dim=1)
        w_hr, w_hz, w_hn = w_hh.split(H, dim=1)
        b_r, b_z, b_n = self.b_h.split(H)
        r = torch.sigmoid(x @ w_xr + h @ w_hr + b_r)
        z = torch.sigmoid(x @ w_xz + h @ w_hz + b_z)
        n = torch.tanh(x @ w_xn + b_n + r * (h @ w_hn + self.b_hn))
        return ((1 - z) * n + z * h,)

    def recurrence(self, xw: Tensor, state: State, w_hh: Tensor, recording: bool) -> tuple[Tensor, State]:
        if recording:
            outputs = _GRURecurrence.apply(xw, w_hh, self.b_hn, state[0])
            return outputs, (outputs[-1],)
        return _gru_steps(xw, w_hh, self.b_hn, state[0])

    @staticmethod
    def numpy_update(xw: np.ndarray, state, layer, out) -> None:
        h = state[0]
        hidden = h.shape[-1]
        hw = h @ layer.w_hh  # (n, 3H)
        rz = xw[:, : 2 * hidden] + hw[:, : 2 * hidden]
        numpy_sigmoid_(rz)
        n = hw[:, 2 * hidden :]
        n += layer.b_hn
        n *= rz[:, :hidden]
        n += xw[:, 2 * hidden :]
        np.tanh(n, out=n)
        h_new = out[0]
        np.subtract(h, n, out=h_new)  # H_t = n + z ⊙ (H_{t-1} - n)
        h_new *= rz[:, hidden:]
        h_new += n


def _gru_steps(xw: Tensor, w_hh: Tensor, b_hn: Tensor, h: Tensor) -> tuple[Tensor, State]:
    """Nothing to record: the equations a step at a time over the projected inputs ``xw`` (T, B, 3H). Each
    step's tensors are small and stay in cache; the recorded forward pass below writes (T, B, ·) buffers a
    backward pass needs, which made a pass without gradients slower (BENCHMARKS.md, "Training throughput",
    tried, not kept)."""
    hidden = h.shape[-1]
    outputs = []
    for xw_t in xw.unbind(0):
        hw = h @ w_hh  # (B, 3H)
        r, z = torch.sigmoid(xw_t[:, : 2 * hidden] + hw[:, : 2 * hidden]).chunk(2, dim=1)
        n = torch.tanh(xw_t[:, 2 * hidden :] + r * (hw[:, 2 * hidden :] + b_hn))
        h = n + z * (h - n)  # (1 - z) ⊙ n + z ⊙ h
        outputs.append(h)
    return torch.stack(outputs), (h,)


def _gru_forward(xw: Tensor, w_hh: Tensor, b_hn: Tensor, h0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """xw: (T, B, 3H) input projections with b_h added. Returns the activated gates r, z, n (T, B, 3H), the
    recurrent products H_{t-1} W_hh + [0, 0, b_hn] (T, B, 3H) and the states (T, B, H)."""
    steps, batch, width = xw.shape
    hidden = width // 3
    gates = xw.clone()  # step t turns gates[t] into r, z, n in place
    hw = torch.empty_like(xw)
    states = xw.new_empty(steps, batch, hidden)
    bias = torch.cat((b_hn.new_zeros(2 * hidden), b_hn))
    h = h0
    for a, hw_t, h_t in zip(gates.unbind(0), hw.unbind(0), states.unbind(0)):
        torch.addmm(bias, h, w_hh, out=hw_t)
        rz = a[:, : 2 * hidden]
        rz.add_(hw_t[:, : 2 * hidden]).sigmoid_()
        r, z, n = a.chunk(3, dim=1)
        tanh_from_sigmoid_(n.addcmul_(r, hw_t[:, 2 * hidden :]).mul_(2).sigmoid_())
        torch.sub(h, n, out=h_t).mul_(z).add_(n)  # H_t = n + z ⊙ (H_{t-1} - n)
        h = h_t
    return gates, hw, states


class _GRURecurrence(torch.autograd.Function):
    """The forward pass above, and BPTT from the saved gates and recurrent products."""

    @staticmethod
    def forward(ctx, xw: Tensor, w_hh: Tensor, b_hn: Tensor, h0: Tensor) -> Tensor:
        gates, hw, states = _gru_forward(xw, w_hh, b_hn, h0)
        ctx.save_for_backward(w_hh, h0, gates, hw, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor):
        w_hh, h0, gates, hw, states = ctx.saved_tensors
        steps, _, hidden = states.shape
        grad_hw = torch.empty_like(gates)  # dL/d(H_{t-1} W_hh + [0, 0, b_hn]): (T, B, 3H)
        grad_n = torch.empty_like(states)  # dL/d(X_t W_xn + b_n), n's pre-activation: (T, B, H)
        grad_h = torch.empty_like(h0)
        carry = torch.zeros_like(h0)  # dL/dH_t through H_{t+1} = n + z ⊙ (H_t - n): dH_{t+1} ⊙ z_{t+1}
        scratch = torch.empty_like(h0)
        one = h0.new_ones(())
        w_hh_t = w_hh.t().contiguous()  # a transposed copy: the per-step products run ~10 % faster than on a view
        for t in range(steps - 1, -1, -1):
            r, z, n = gates[t].chunk(3, dim=1)
            hn = hw[t, :, 2 * hidden :]
            g_r, g_z, g_hn = grad_hw[t].chunk(3, dim=1)
            g_n = grad_n[t]
            h_prev = states[t - 1] if t > 0 else h0
            if t < steps - 1:  # dL/dH_t = upstream + dL/d(H_t W_hh) W_hh^T + through H_{t+1}'s z-path
                torch.addmm(grad_states[t], grad_hw[t + 1], w_hh_t, out=grad_h).add_(carry)
            else:
                torch.add(grad_states[t], carry, out=grad_h)
            torch.sub(h_prev, n, out=g_z).mul_(grad_h)
            g_z.mul_(torch.addcmul(z, z, z, value=-1, out=scratch))  # σ' = z - z²
            torch.addcmul(grad_h, grad_h, z, value=-1, out=g_n)  # dL/dn = dH_t ⊙ (1 - z)
            g_n.mul_(torch.addcmul(one, n, n, value=-1, out=scratch))  # tanh' = 1 - n²
            torch.mul(g_n, r, out=g_hn)
            torch.mul(g_n, hn, out=g_r).mul_(torch.addcmul(r, r, r, value=-1, out=scratch))
            torch.mul(grad_h, z, out=carry)
        grad_h0 = torch.addmm(carry, grad_hw[0], w_hh_t) if ctx.needs_input_grad[3] else None
        grad_w_hh = recurrent_weight_grad(h0, states, grad_hw) if ctx.needs_input_grad[1] else None
        grad_b_hn = grad_hw[:, :, 2 * hidden :].sum((0, 1)) if ctx.needs_input_grad[2] else None
        grad_xw = None
        if ctx.needs_input_grad[0]:  # dL/dxw = [dL/dr, dL/dz, dL/dn's pre-activation]: grad_hw, its n-part replaced
            grad_xw = grad_hw  # dW_hh and db_hn have been read from it
            grad_xw[:, :, 2 * hidden :] = grad_n
        return grad_xw, grad_w_hh, grad_b_hn, grad_h0
