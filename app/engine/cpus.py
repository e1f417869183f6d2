"""How many CPU cores this process may use, and how many OpenBLAS threads the engine should run.

The CPU decoding step runs in numpy, whose OpenBLAS keeps a pool of threads. Only the engine process runs the
model, so it alone sizes that pool: by default to the usable cores, counting only the cores the process may
run on and its cgroup CPU quota (a container limited to 2 CPUs on a 64-core node has 2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

__all__ = ["BlasThreads", "engine_blas_threads", "limit_blas_threads", "usable_cpus"]

FEW_ROWS = 4  # batches this small (one stream, a prompt read alone) get every BLAS thread
LARGE_STEP_FLOPS = 100e6  # so do steps this large (a 2 x 512 GRU at 32 rows and up); others one


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 (``cpu.max``) or v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) quota, rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup files, or ones we cannot read: no quota
        return None


def engine_blas_threads(requested: int, cpus: int) -> int:
    """``requested`` when set (> 0), else the usable cores."""
    return requested if requested > 0 else max(1, cpus)


def limit_blas_threads(threads: int) -> int:
    """Set the process's OpenBLAS (numpy's BLAS) thread count; returns the count now in effect (0 when no
    BLAS library was found)."""
    threadpool_limits(limits=threads, user_api="blas")
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return min(counts) if counts else 0


class BlasThreads:
    """The engine's OpenBLAS pool, sized for each step. A few rows are one matrix-vector product per layer,
    which a second thread speeds up; a step of many rows of a large model is long enough that threads pay;
    in between (the tanh RNN at 64 rows: 38 MFLOP) one thread runs it nearly as fast, and a second one would
    take the core the HTTP processes need."""

    def __init__(self, most: int, flops_per_row: float):
        self.most = most
        self.flops_per_row = flops_per_row
        self._libs = ThreadpoolController().select(user_api="blas").lib_controllers
        self.now: int | None = None

    def fit(self, rows: int) -> None:
        many = rows * self.flops_per_row >= LARGE_STEP_FLOPS
        want = self.most if rows <= FEW_ROWS or many else 1
        if want != self.now:
            for lib in self._libs:
                lib.set_num_threads(want)
            self.now = want
