"""Recurrences with a hand-written backward pass: the notebook's tanh RNN, the GRU and the LSTM.

Autograd records several nodes per time step and computes ``dW_hh`` as T small matmuls. Here the forward pass
writes every state into preallocated (T, B, ·) tensors, and the backward pass (BPTT) loops only over what is
truly sequential, ``dH_{t-1} = dZ_t W_hh^T`` (Z_t the pre-activations); the weight gradient is then one large
matmul over all steps. The (T, B, ·) tensors come from model/workspace.py, which reuses a finished step's
buffers on the CPU instead of mapping fresh pages every step.

TANH_VIA_SIGMOID: the forward passes here compute ``tanh x`` as ``2σ(2x) - 1`` (within 2e-7 in float32), which
torch's CPU kernels run several times faster than its ``tanh`` (BENCHMARKS.md, training throughput).
"""

from __future__ import annotations

import torch

from model.workspace import buffer

__all__ = ["gru_recurrence", "lstm_recurrence", "row_lookup", "tanh_recurrence_"]


class _RowLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows = buffer("lookup.rows", (*ids.shape, table.shape[1]), table)
        torch.index_select(table, 0, ids.reshape(-1), out=rows.view(-1, table.shape[1]))
        ctx.save_for_backward(ids)
        ctx.vocab = table.shape[0]
        return rows

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):
        (ids,) = ctx.saved_tensors
        # each id's rows summed: F.embedding's own backward (twice as fast here as index_add_)
        grad_table = torch.ops.aten.embedding_dense_backward(grad_rows, ids, ctx.vocab, -1, False)
        return grad_table, None


def row_lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` — one-hot(ids) @ table — into a reusable buffer (model/workspace.py): (…, width)."""
    return _RowLookup.apply(table, ids)


def _recurrent_weight_grad(h0: torch.Tensor, states: torch.Tensor, grad_products: torch.Tensor) -> torch.Tensor:
    """dW_hh = sum_t H_{t-1}^T dL/d(H_{t-1} W_hh), as one large matmul over steps 2..T plus the first step.

    h0: (B, H); states: H_1..H_T (T, B, H); grad_products: (T, B, G·H)."""
    grad_w_hh = h0.t() @ grad_products[0]
    if len(states) > 1:
        hidden, width = states.shape[-1], grad_products.shape[-1]
        grad_w_hh.addmm_(states[:-1].reshape(-1, hidden).t(), grad_products[1:].reshape(-1, width))
    return grad_w_hh


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(xw)  # the states overwrite the input projections: no (T, B, H) copy
        states = _forward_states_(xw, w_hh, h0)
        ctx.save_for_backward(w_hh, h0, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor):
        w_hh, h0, states = ctx.saved_tensors
        steps = len(states)
        grad_z = buffer("tanh.grad_z", states.shape, states)  # dL/dZ_t, Z_t the pre-activation: (T, B, H)
        tanh_grad = torch.empty_like(h0)
        one = h0.new_ones(())
        w_hh_t = w_hh.t().contiguous()  # a transposed copy: the per-step products run ~10 % faster than on a view
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:  # dL/dH_t = upstream + dL/dZ_{t+1} W_hh^T
                torch.addmm(grad_states[t], grad_z[t + 1], w_hh_t, out=grad_z[t])
            else:
                grad_z[t].copy_(grad_states[t])
            torch.addcmul(one, states[t], states[t], value=-1, out=tanh_grad)  # d tanh(z)/dz = 1 - H_t²
            grad_z[t].mul_(tanh_grad)
        grad_h0 = grad_z[0] @ w_hh_t if ctx.needs_input_grad[2] else None
        grad_w_hh = _recurrent_weight_grad(h0, states, grad_z) if ctx.needs_input_grad[1] else None
        return grad_z, grad_w_hh, grad_h0


def _forward_states_(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    # xw: (T, B, H) input projections with the bias already added, overwritten by the states; h0: (B, H)
    h = h0
    minus_one = xw.new_full((), -1.0)
    for h_t in xw.unbind(0):  # views made once, not indexed per step
        # In place into xw[t]; its inputs are xw[t-1] (by now H_{t-1}) and W_hh, never the output itself.
        h_t.addmm_(h, w_hh, beta=2, alpha=2).sigmoid_()  # σ(2 Z_t)
        torch.add(minus_one, h_t, alpha=2, out=h_t)  # tanh Z_t = 2σ(2 Z_t) - 1 (see TANH_VIA_SIGMOID)
        h = h_t
    return xw


def tanh_recurrence_(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states H_1..H_T, shape (T, B, H), of ``H_t = tanh(xw_t + H_{t-1} @ w_hh)`` from ``H_0 = h0``,
    written over ``xw`` and returned: pass a tensor made for the purpose, such as a layer's input projections."""
    if torch.is_grad_enabled() and (xw.requires_grad or w_hh.requires_grad or h0.requires_grad):
        return _TanhRecurrence.apply(xw, w_hh, h0)
    return _forward_states_(xw, w_hh, h0)


class _GRURecurrence(torch.autograd.Function):
    # Gates r, z, n along the columns (PyTorch's order): r, z = σ(X W_x{r,z} + H W_h{r,z} + b_{r,z}),
    # n = tanh(X W_xn + b_n + r ⊙ (H W_hn + b_hn)), H' = n + z ⊙ (H - n).
    @staticmethod
    def forward(ctx, xw: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        gates, hw, states = _gru_forward(xw, w_hh, b_hn, h0)
        ctx.save_for_backward(w_hh, h0, gates, hw, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor):
        w_hh, h0, gates, hw, states = ctx.saved_tensors
        steps, _, hidden = states.shape
        grad_hw = buffer("gru.grad_hw", gates.shape, gates)  # dL/d(H_{t-1} W_hh + [0, 0, b_hn]): (T, B, 3H)
        grad_n = buffer("gru.grad_n", states.shape, states)  # dL/d(X_t W_xn + b_n), n's pre-activation: (T, B, H)
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
        grad_w_hh = _recurrent_weight_grad(h0, states, grad_hw) if ctx.needs_input_grad[1] else None
        grad_b_hn = grad_hw[:, :, 2 * hidden :].sum((0, 1)) if ctx.needs_input_grad[2] else None
        grad_xw = None
        if ctx.needs_input_grad[0]:  # dL/dxw = [dL/dr, dL/dz, dL/dn's pre-activation]: grad_hw, its n-part replaced
            grad_xw = grad_hw
            grad_xw[:, :, 2 * hidden :] = grad_n
        return grad_xw, grad_w_hh, grad_b_hn, grad_h0


def _gru_forward(xw: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor, h0: torch.Tensor):
    # xw: (T, B, 3H) input projections with b_h added. Returns the activated gates r, z, n (T, B, 3H), the
    # recurrent products H_{t-1} W_hh + [0, 0, b_hn] (T, B, 3H) and the states (T, B, H).
    steps, batch, width = xw.shape
    hidden = width // 3
    gates = buffer("gru.gates", xw.shape, xw).copy_(xw)  # step t turns gates[t] into r, z, n in place
    hw = buffer("gru.hw", xw.shape, xw)  # H_{t-1} W_hh + [0, 0, b_hn]
    states = buffer("gru.states", (steps, batch, hidden), xw)
    bias = torch.cat((b_hn.new_zeros(2 * hidden), b_hn))
    minus_one = xw.new_full((), -1.0)
    h = h0
    for a, hw_t, h_t in zip(gates.unbind(0), hw.unbind(0), states.unbind(0)):
        torch.addmm(bias, h, w_hh, out=hw_t)
        rz = a[:, : 2 * hidden]
        rz.add_(hw_t[:, : 2 * hidden]).sigmoid_()
        r, z, n = a.chunk(3, dim=1)
        n.addcmul_(r, hw_t[:, 2 * hidden :]).mul_(2).sigmoid_()
        torch.add(minus_one, n, alpha=2, out=n)  # TANH_VIA_SIGMOID
        torch.sub(h, n, out=h_t).mul_(z).add_(n)  # H_t = n + z ⊙ (H_{t-1} - n)
        h = h_t
    return gates, hw, states


def gru_recurrence(xw: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states H_1..H_T (T, B, H) of the GRU from ``h0``; xw: (T, B, 3H) input projections with b_h added."""
    return _GRURecurrence.apply(xw, w_hh, b_hn, h0)


class _LSTMRecurrence(torch.autograd.Function):
    # Gates i, f, g, o along the columns (PyTorch's order): C_t = f ⊙ C_{t-1} + i ⊙ g, H_t = o ⊙ tanh(C_t).
    @staticmethod
    def forward(ctx, xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        gates, states, cells, tanh_cells = _lstm_forward(xw, w_hh, h0, c0)
        ctx.save_for_backward(w_hh, h0, c0, gates, states, cells, tanh_cells)
        return states, cells[-1].clone()  # a copy: a caller keeping C_T must not keep the whole buffer

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor, grad_c: torch.Tensor | None):
        w_hh, h0, c0, gates, states, cells, tanh_cells = ctx.saved_tensors
        steps = len(states)
        grad_z = buffer("lstm.grad_z", gates.shape, gates)  # dL/dZ_t, the four gates' pre-activations: (T, B, 4H)
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
        grad_w_hh = _recurrent_weight_grad(h0, states, grad_z) if ctx.needs_input_grad[1] else None
        return grad_z, grad_w_hh, grad_h0, grad_cell


def _lstm_forward(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    # xw: (T, B, 4H) input projections with the bias added. Returns the activated gates (T, B, 4H) and
    # H_t, C_t, tanh(C_t) for every step (T, B, H). tanh x is computed as 2σ(2x) - 1 (TANH_VIA_SIGMOID).
    steps, batch, width = xw.shape
    hidden = width // 4
    gates = buffer("lstm.gates", xw.shape, xw).copy_(xw)  # step t turns gates[t] into i, f, g, o in place
    states, cells, tanh_cells = (
        buffer(f"lstm.{name}", (steps, batch, hidden), xw) for name in ("states", "cells", "tanh_cells")
    )
    minus_one = xw.new_full((), -1.0)
    h, c = h0, c0
    for a, h_t, c_t, tanh_c in zip(gates.unbind(0), states.unbind(0), cells.unbind(0), tanh_cells.unbind(0)):
        a.addmm_(h, w_hh)
        i, f, g, o = a.chunk(4, dim=1)
        g.mul_(2)
        a.sigmoid_()
        torch.add(minus_one, g, alpha=2, out=g)  # g = tanh(Z_g)
        torch.mul(f, c, out=c_t).addcmul_(i, g)
        torch.mul(c_t, 2, out=tanh_c).sigmoid_()
        torch.add(minus_one, tanh_c, alpha=2, out=tanh_c)
        torch.mul(o, tanh_c, out=h_t)
        h, c = h_t, c_t
    return gates, states, cells, tanh_cells


def lstm_recurrence(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    """All states H_1..H_T (T, B, H) and the last cell C_T (B, H) of the LSTM from (h0, c0); xw: (T, B, 4H)."""
    return _LSTMRecurrence.apply(xw, w_hh, h0, c0)
