"""Reusable CPU buffers for the large tensors a training step makes afresh every time.

A training step of the recurrences writes several (T, B, G·H) tensors — gates, states, their gradients: 32 MiB
each for an LSTM at T = B = 64, H = 512. glibc's malloc hands blocks this large straight from the kernel
(``mmap``) and returns them on free, so every step writes to fresh pages, and the kernel zeroes and maps each
4 KiB page on first touch. On this project's 2-core VM that was ~25k page faults and a quarter of an LSTM step.
(torch keeps a caching allocator for CUDA, not for the CPU.)

:func:`buffer` gives back a buffer made for the same role and shape in an earlier step once nothing refers to
it any more. The pool keeps a base tensor and hands out an alias of it (``detach()``: the same memory, no autograd
history), so the base is free when its memory has no other user — an alias, a view, a tensor autograd saved —
which torch's reference counts tell (``Tensor._use_count`` and the storage's use count);
:func:`_counts_work` checks at import that they behave as this module expects, and if they do not (another
torch), every call simply allocates. Only CPU tensors are pooled; each thread has its own pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

__all__ = ["buffer", "clear"]

MAX_KEYS = 16  # roles × shapes kept; the least recently used is dropped beyond this
MAX_PER_KEY = 8  # buffers of one role and shape (one per layer of a stack, while its graph lives)

_local = threading.local()


def _storage_uses(t: Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata) - 1  # minus the storage object made here


def _is_free(t: Tensor) -> bool:
    """Nothing but the pool holds ``t`` or any other tensor on its memory."""
    return t._use_count() == 1 and _storage_uses(t) == 1


def _counts_work() -> bool:
    try:
        t = torch.empty(4)
        if not _is_free(t):
            return False
        view = t[1:]
        if _is_free(t):
            return False
        del view
        held = [t.detach()]  # another tensor object on the same memory
        if _is_free(t):
            return False
        del held

        class _Save(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(t)
                return x * 2

            @staticmethod
            def backward(ctx, grad):
                return grad * 2

        x = torch.ones(1, requires_grad=True)
        y = _Save.apply(x)
        if _is_free(t):  # saved for backward
            return False
        y.backward()
        del y
        return _is_free(t)
    except Exception:  # a torch without these private counters
        return False


ENABLED = _counts_work()


def _pool() -> OrderedDict:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = OrderedDict()
    return pool


def buffer(role: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device: on the CPU a pooled one that
    nothing else refers to when there is one, else a new one (kept for the next call)."""
    if not ENABLED or like.device.type != "cpu":
        return like.new_empty(shape)
    key = (role, tuple(shape), like.dtype)
    pool = _pool()
    held = pool.get(key)
    if held is None:
        held = pool[key] = []
        if len(pool) > MAX_KEYS:
            pool.popitem(last=False)
    else:
        pool.move_to_end(key)
        for base in held:
            if _is_free(base):
                return base.detach()
    base = like.new_empty(shape)
    if len(held) < MAX_PER_KEY:
        held.append(base)
        return base.detach()
    return base


def clear() -> None:
    """Drop this thread's pooled buffers (their memory is freed once nothing else holds them)."""
    _pool().clear()
