"""Gradient clipping by global L2 norm, as the notebook states it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["grad_clipping"]


def grad_clipping(parameters: Iterable[Tensor], theta: float) -> Tensor:
    """If ``‖g‖ > θ`` over all gradients together, multiply every gradient by ``θ / ‖g‖``.

    Returns the norm before clipping (a 0-d tensor). No host synchronisation: the scale is computed on device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.where(norm > theta, theta / norm, torch.ones_like(norm))
    torch._foreach_mul_(grads, scale)
    return norm
