"""The trainer's ``--precision``: float32, or bf16 autocast where bf16 is faster (as nanoGPT trains).

Under bf16 autocast the matmuls and the recurrence (the layers' fused path, model/cells/layer.py) run in bf16;
the weights, their gradients, the optimiser, the loss and every validation figure stay float32, and so does the
weight file. No loss scaling: bf16 has float32's exponent range.

Where bf16 is faster was measured (BENCHMARKS.md, "Training throughput"): on a CPU with bf16 instructions
(AVX512-BF16 or AMX) a training step ran 1.4–2.3× faster than float32; on the same CPU limited to AVX-512
without them, 0.45×, and to AVX2, 0.04×. So a CPU without them is refused, in one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from model.train_error import TrainError

__all__ = ["PRECISIONS", "cpu_has_bf16", "training_autocast"]

PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo's names for the instructions


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (Linux: its flags; elsewhere not known, so no)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BF16_CPU_FLAGS & set(line.partition(":")[2].split()))
    return False


def training_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass and loss run in: nothing for fp32, bf16 autocast for bf16 —
    or a :class:`TrainError` where bf16 would be slower or cannot run."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use --precision fp32")
    if device.type == "cpu" and not cpu_has_bf16():
        raise TrainError(
            "--precision bf16: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16), where bf16 training "
            "measured 2-25x slower than float32; use --precision fp32 (the default), or a GPU"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16)
