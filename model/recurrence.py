"""The vanilla tanh recurrence ``H_t = tanh(XW_t + H_{t-1} W_hh)`` with a hand-written backward pass.

Autograd records two nodes per time step and computes ``dW_hh`` as T small matmuls. Here the forward pass
writes every state into one preallocated (T, B, H) tensor, and the backward pass (BPTT) loops only over what
is truly sequential, ``dH_{t-1} = dZ_t W_hh^T``; the weight gradient is then one large matmul over all steps.
"""

from __future__ import annotations

import torch

__all__ = ["tanh_recurrence"]


class _TanhRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        states = _forward_states(xw, w_hh, h0)
        ctx.save_for_backward(w_hh, h0, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: torch.Tensor):
        w_hh, h0, states = ctx.saved_tensors
        steps, _, hidden = states.shape
        tanh_grad = torch.square(states).neg_().add_(1)  # (T, B, H): d tanh(z)/dz = 1 - H_t^2
        grad_z = grad_states.clone()  # becomes dL/dZ_t, Z_t the pre-activation: (T, B, H)
        w_hh_t = w_hh.t()
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                grad_z[t].addmm_(grad_z[t + 1], w_hh_t)  # dL/dH_t = upstream + dL/dZ_{t+1} W_hh^T
            grad_z[t].mul_(tanh_grad[t])
        grad_h0 = grad_z[0] @ w_hh_t if ctx.needs_input_grad[2] else None
        grad_w_hh = None
        if ctx.needs_input_grad[1]:
            # dW_hh = sum_t H_{t-1}^T dZ_t, as one large matmul over steps 2..T plus the first step.
            grad_w_hh = h0.t() @ grad_z[0]
            if steps > 1:
                grad_w_hh.addmm_(states[:-1].reshape(-1, hidden).t(), grad_z[1:].reshape(-1, hidden))
        return grad_z, grad_w_hh, grad_h0


def _forward_states(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    # xw: (T, B, H) input projections with the bias already added; h0: (B, H)
    states = xw.clone()  # (T, B, H); step t turns states[t] from X_t W_xh + b_h into H_t in place
    h = h0
    for h_t in states.unbind(0):  # views made once, not indexed three times per step
        # In place into states[t]; its inputs are states[t-1] and W_hh, never the output itself.
        h_t.addmm_(h, w_hh).tanh_()
        h = h_t
    return states


def tanh_recurrence(xw: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states H_1..H_T, shape (T, B, H), of ``H_t = tanh(xw_t + H_{t-1} @ w_hh)`` from ``H_0 = h0``."""
    if torch.is_grad_enabled() and (xw.requires_grad or w_hh.requires_grad or h0.requires_grad):
        return _TanhRecurrence.apply(xw, w_hh, h0)
    return _forward_states(xw, w_hh, h0)
