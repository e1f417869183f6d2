"""A training run's checkpoint (``OUT.ckpt``): everything a resumed run needs to continue exactly — the options
as data, the vocabulary, weights, optimiser, schedule, random state, position, best-so-far and each row's
carried state — written atomically."""

from __future__ import annotations

import torch

from model.atomic import atomic_write
from model.train_cli import TrainError

__all__ = ["load_checkpoint", "restore_checkpoint", "save_checkpoint"]


def save_checkpoint(run) -> None:
    state = {
        "args": {k: v for k, v in vars(run.args).items() if k != "given"},
        "vocab": run.vocab.to_json(),
        "model": {k: v.cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if run.device.type == "cuda" else None,
        "step": run.step,
        "tokens_seen": run.tokens_seen,
        "wall_time": run.wall_time,
        "best_val": run.best_val,
        "carried": [s.cpu() for s in run.carried] if run.carried is not None else None,
        "teacher_sha256": run.teacher_file["sha256"] if run.teacher_file else None,
    }
    atomic_write(run.ckpt_path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"--resume {path}: file not found") from None
    except Exception as e:
        raise TrainError(f"--resume {path}: not a usable checkpoint ({type(e).__name__})") from None


def restore_checkpoint(run, ckpt: dict) -> None:
    """Put a checkpoint's weights, optimiser, schedule, random state and position into a freshly built run."""
    expected = ckpt.get("teacher_sha256")
    if expected and run.teacher_file["sha256"] != expected:
        raise TrainError(
            f"--resume: the teacher {run.args.teacher} is not the file this run started with "
            "(its sha256 differs); the run cannot continue exactly"
        )
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"])
    run.step, run.tokens_seen = ckpt["step"], ckpt["tokens_seen"]
    run.wall_time, run.best_val = ckpt["wall_time"], ckpt["best_val"]
    if ckpt["carried"] is not None:
        run.carried = tuple(s.to(run.device) for s in ckpt["carried"])
