"""The machine a benchmark ran on, as one line every benchmark prints first.

Machines here differ 2–3× in speed for the same work (a square SGEMM with 2 threads: 79 GFLOP/s on one 2-core
VM, 181–185 on another), so a figure means little without its machine. The line names the CPU, the cores this
process may use, what a square float32 matmul reaches with the threads the benchmark runs with (the machine's
own roofline, measured now), and the versions of torch, numpy and the BLAS libraries numpy and torch load — or,
for a CUDA run, the GPU and its driver as well. BENCHMARKS.md quotes this line beside each table.

    python benchmarks/machine.py [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

__all__ = ["describe", "print_machine", "sgemm_gflops"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sgemm_gflops(threads: int, size: int = 1024, repeats: int = 7) -> float:
    """Median GFLOP/s of a (size × size) float32 matmul in torch with ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up: the BLAS's threads and buffers
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / statistics.median(times) / 1e9


def blas_versions() -> str:
    """The BLAS libraries loaded in this process (numpy's OpenBLAS, torch's MKL or OpenBLAS), from threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    seen = []
    for pool in threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        name = f"{pool.get('internal_api')} {pool.get('version') or '?'}"
        if name not in seen:
            seen.append(name)
    if torch.backends.mkl.is_available():
        seen.append("torch with MKL")
    return ", ".join(seen) or "none found"


def gpu_line(device: str) -> str:
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    driver = "?"
    try:
        import subprocess

        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, CUDA {torch.version.cuda}"


def describe(threads: int = 2, device: str = "cpu") -> str:
    """The machine line: CPU, usable cores, SGEMM GFLOP/s with ``threads`` threads, versions; GPU when asked."""
    line = (
        f"machine: {cpu_model()}, {usable_cores()} usable cores, SGEMM 1024³ {sgemm_gflops(threads):.0f} GFLOP/s "
        f"with {threads} thread{'s' if threads != 1 else ''}; torch {torch.__version__}, numpy {np.__version__}, "
        f"BLAS {blas_versions()}"
    )
    if device.startswith("cuda"):
        line += f"; GPU {gpu_line(device)}" if torch.cuda.is_available() else "; GPU: none available"
    return line


def print_machine(threads: int = 2, device: str = "cpu") -> None:
    """Print the machine line (every benchmark calls this first)."""
    print(describe(threads, device), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print_machine(args.threads, args.device)
