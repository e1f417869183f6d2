"""Keep freed memory in the process's heap, so a training step's large tensors land on pages already mapped.

A training step makes several (T, B, G·H) tensors afresh — gates, states, their gradients: 32 MiB each for an
LSTM at T = B = 64, H = 512. glibc's malloc serves blocks this large with ``mmap`` and unmaps them on free, so
every step writes to fresh pages, which the kernel zeroes and maps a 4 KiB page at a time (~25k page faults, a
quarter of an LSTM step on this project's VM). The trainer, which owns its process, asks malloc to serve every
block from its heap and never hand the top of it back (BENCHMARKS.md, "Training throughput"). torch keeps a
caching allocator for CUDA, not for the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to use no ``mmap`` blocks and trim nothing: whether it took the settings (False on
    a C library without ``mallopt``, where training is merely slower)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
