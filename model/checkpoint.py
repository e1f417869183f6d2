"""A training run's checkpoint (``OUT.ckpt``): everything a resumed run needs to continue exactly — the options
as data, the vocabulary, weights, optimiser, schedule, random state, the run's :class:`Progress` and each row's
carried state — written atomically."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.cells import State
from model.lm import RNNLM
from model.train_error import TrainError
from model.vocab import Vocab

__all__ = ["Progress", "load_checkpoint", "restore_checkpoint", "save_checkpoint"]


@dataclass
class Progress:
    """Where a run is: optimiser steps taken, characters read (all processes), seconds spent stepping, the best
    validation NLL so far, and under sequential sampling each batch row's final state, (L, B, H), detached."""

    step: int = 0
    tokens_seen: int = 0
    wall_time: float = 0.0
    best_val: float = float("inf")
    carried: State | None = None


def save_checkpoint(
    path: Path,
    *,
    args: argparse.Namespace,
    vocab: Vocab,
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    teacher_file: dict | None,
) -> None:
    state = {
        "args": {k: v for k, v in vars(args).items() if k != "given"},
        "vocab": vocab.to_json(),
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if next(model.parameters()).is_cuda else None,
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "wall_time": progress.wall_time,
        "best_val": progress.best_val,
        "carried": [s.cpu() for s in progress.carried] if progress.carried is not None else None,
        "teacher_sha256": teacher_file["sha256"] if teacher_file else None,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"--resume {path}: file not found") from None
    except IsADirectoryError:
        raise TrainError(f"--resume {path}: is a directory; give the run's checkpoint (OUT.ckpt)") from None
    except Exception as e:
        raise TrainError(f"--resume {path}: not a usable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"args", "model", "vocab"} <= ckpt.keys():
        hint = (
            " (a weight file: resume from the checkpoint beside it, OUT.ckpt)" if path.endswith(".safetensors") else ""
        )
        raise TrainError(f"--resume {path}: not a checkpoint of this trainer{hint}")
    return ckpt


def restore_checkpoint(
    ckpt: dict,
    *,
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    teacher_file: dict | None,
) -> Progress:
    """Put a checkpoint's weights, optimiser, schedule and random state into a freshly built run; its progress."""
    expected = ckpt.get("teacher_sha256")
    if expected and teacher_file["sha256"] != expected:
        raise TrainError(
            f"--resume: the teacher {teacher_file['name']} is not the file this run started with (its sha256 "
            "differs); the run cannot continue exactly"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    device = next(model.parameters()).device
    torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"])
    carried = ckpt["carried"]
    return Progress(
        step=ckpt["step"],
        tokens_seen=ckpt["tokens_seen"],
        wall_time=ckpt["wall_time"],
        best_val=ckpt["best_val"],
        carried=tuple(s.to(device) for s in carried) if carried is not None else None,
    )
