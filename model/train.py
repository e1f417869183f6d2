"""The training loop: ``python -m model.train --corpus FILE --out weights/my.safetensors`` (or ``rnnlm-train``).

:func:`train` reads top to bottom, as nanoGPT's train.py: the options (and a checkpoint's, on resume), the
processes and device, the data, the model, optimiser and schedule, then the loop — a batch, the loss, BPTT,
clipping by the global norm, an optimiser step — evaluating, keeping the best weights and checkpointing as it
goes. The options: model/train_cli.py; the data: model/train_data.py; the checkpoint: model/checkpoint.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm import tqdm

from model.atomic import atomic_write
from model.cells import State
from model.checkpoint import Progress, load_checkpoint, restore_checkpoint, save_checkpoint
from model.clipping import grad_clipping
from model.data import CorpusError
from model.distill import distillation_loss
from model.evaluation import SplitFigure, split_nll
from model.heap import keep_freed_memory
from model.inference import generate, score, warm
from model.lm import RNNLM, LMConfig
from model.precision import training_autocast
from model.train_cli import parse_args, resumed_args
from model.train_data import TrainingData, load_training_data
from model.train_error import TrainError
from model.vocab import Vocab
from model.weights import load_weights, save_weights

__all__ = ["main", "parse_args", "train"]

SAMPLE_PREFIX = "\n"
ONE_STREAM = "one stream from a zero state"


def train(args: argparse.Namespace) -> int:
    # -- the options; on resume, the checkpoint's (those given now that may change win) -----------------------
    resume = load_checkpoint(args.resume) if args.resume else None
    if resume:
        args = resumed_args(args, resume["args"])
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # a step's large tensors reuse mapped pages (model/heap.py)

    # -- processes and device ---------------------------------------------------------------------------------
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
    world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
    main_rank = rank == 0
    device = torch.device(_pick_device(args.device, rank))
    autocast = training_autocast(args.precision, device)  # refused here, before any work, where bf16 is slower
    out = Path(args.out)
    if main_rank:  # before the corpus is read: encoding a large one takes minutes
        _check_writable(out.parent, out)
    ckpt_path = out.with_suffix(".ckpt")
    metrics_path = out.with_suffix(".metrics.jsonl")
    plot_path = out.with_suffix(".png")

    # -- data -------------------------------------------------------------------------------------------------
    data = load_training_data(args, Vocab.from_json(resume["vocab"]) if resume else None, device)
    local_batch = args.batch_size // world
    rows = slice(rank * local_batch, (rank + 1) * local_batch)  # this process's rows of every batch

    # -- model, optimiser, schedule ---------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    config = LMConfig(
        cell=args.cell,
        vocab_size=len(data.vocab),
        hidden_size=args.hidden,
        num_layers=args.layers,
        dropout=args.dropout,
        weight_drop=args.weight_drop,
    )
    model = RNNLM(config).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD
    optimizer = optimizer_class(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total_steps = args.epochs * data.steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(args, step, total_steps))
    progress = Progress()
    if resume:
        progress = restore_checkpoint(
            resume, model=model, optimizer=optimizer, schedule=schedule, teacher_file=data.teacher_file
        )

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            args=args,
            vocab=data.vocab,
            model=model,
            optimizer=optimizer,
            schedule=schedule,
            progress=progress,
            teacher_file=data.teacher_file,
        )

    def evaluate(train_losses: list[float], final: SplitFigure | None) -> None:
        """Validation NLL, the metrics log, the best weights, a checkpoint and the plot (rank 0 only). The final
        evaluation brings the whole split's figure (``final``, read in parallel by every process); a periodic
        one reads the split's first ``--eval-chars`` as one stream."""
        train_nll = sum(train_losses) / len(train_losses) if train_losses else float("nan")
        if final is not None:
            val_nll, how = final.nll, final.describe()
            if final.one_stream:
                tqdm.write(
                    f"note: as segments, the split's first {final.check_chars:,} characters score "
                    f"{final.check_difference:+.4f} nats/char off one stream (the state drifts on long streams): "
                    "the final figure read the whole split as one stream"
                )
        elif len(data.val_ids) > 1:
            chars = min(args.eval_chars, len(data.val_ids))
            val_nll, how = validation_nll(model, data.val_ids, chars), {"method": ONE_STREAM, "chars": chars}
        else:
            val_nll, how = train_nll, {"method": "no validation split: the training loss"}
        record = {
            "step": progress.step,
            "epoch": round(progress.step / data.steps_per_epoch, 3),
            "tokens": progress.tokens_seen,
            "wall_time_s": round(progress.wall_time, 1),
            "lr": schedule.get_last_lr()[0],
            "train_nll": train_nll,
            "train_ppl": math.exp(train_nll) if train_losses else None,
            "val_nll": val_nll,
            "val_ppl": math.exp(val_nll),
            "val_bpc": val_nll / math.log(2),
            "val_whole_split": final is not None,
        }
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(
            f"step {progress.step:>6} | train ppl {math.exp(train_nll):7.3f} ({train_nll / math.log(2):.3f} bpc) | "
            f"val ppl {math.exp(val_nll):7.3f} ({val_nll / math.log(2):.3f} bpc, {val_nll:.4f} nats) | "
            f"sample: {sample(model, data.vocab, SAMPLE_PREFIX, args.sample_chars)!r}"
        )
        if final is None:  # a periodic figure is compared with the best so far
            better = val_nll < progress.best_val
        else:  # the final one with the best weights' own figure on the whole split
            better = not best_scored_anew(val_nll)
        if better:
            progress.best_val = val_nll
            save_weights(out, model, data.vocab, training_metadata(args, data, progress, world, val_nll, how))
        checkpoint()
        if can_plot:
            plot(metrics_path, plot_path)

    def best_scored_anew(final_nll: float) -> bool:
        """At the end, the best weights so far (judged on the periodic sample) scored as the final figure is: True
        if they still beat the final weights, and their file now carries that figure; False if the final win."""
        if not (math.isfinite(progress.best_val) and out.is_file()):
            return False
        best = load_weights(out, device)
        figure = split_nll(best.model, data.val_ids)  # this process alone: the others have gone on to the end
        if figure.nll > final_nll:
            return False
        progress.best_val = figure.nll
        training = {**best.training, **validation_fields(figure.nll), "validation": figure.describe()}
        save_weights(out, best.model, data.vocab, training)
        step = best.training.get("steps")
        tqdm.write(f"the best weights (step {step}) score {figure.nll:.4f} nats/char on the whole split: kept")
        return True

    # -- output files -----------------------------------------------------------------------------------------
    if main_rank:
        _remove_stale_temporaries(out.parent, (out, ckpt_path, plot_path))
    can_plot = _can_plot()
    limit = total_steps if args.max_steps is None else min(args.max_steps, total_steps)
    if main_rank:
        if not can_plot:
            print(
                f"note: matplotlib is not installed, so no {plot_path} is written (pip install -e '.[plot]')",
                flush=True,
            )
        print(
            f"{model.config} | {model.num_parameters():,} parameters | {len(data.train_ids):,} train / "
            f"{len(data.val_ids):,} val chars | {data.steps_per_epoch} steps/epoch | {limit} steps | "
            f"device {device} | {world} process(es)",
            flush=True,
        )

    # -- the loop ---------------------------------------------------------------------------------------------
    stop = _Stop()
    bar = tqdm(
        total=limit,
        initial=progress.step,
        disable=not main_rank,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    losses: list[float] = []
    eval_every = min(args.eval_every, data.steps_per_epoch)  # at least once an epoch: a weight file early on
    epoch, skip = divmod(progress.step, data.steps_per_epoch)  # a resumed run continues mid-epoch
    last_time = time.perf_counter()
    while progress.step < limit and stop.signum is None:
        if skip == 0 and args.sampling == "sequential":
            progress.carried = None  # a new epoch starts at a new offset: fresh states
        for i, (X, Y, P) in enumerate(data.batches(args, epoch)):
            if i < skip:
                continue
            # one optimiser step on this process's rows of the batch (ids may be uint8: memory-mapped)
            X, Y = X[rows].to(device).long(), Y[rows].to(device).long()
            state = None
            if args.sampling == "sequential" and progress.carried is not None:
                state = tuple(s[:, rows] for s in progress.carried)  # detached: BPTT stops at the batch
            model.train()
            with autocast:  # --precision bf16: the forward pass in bf16; the loss is float32 either way
                logits, final = ddp(X, state)  # (b, T, V)
                logits = logits.reshape(-1, logits.shape[-1]).float()
                if P is None:
                    loss = text_loss = F.cross_entropy(logits, Y.reshape(-1))
                else:
                    teacher = data.teacher_logp[P[rows].reshape(-1).to(data.teacher_logp.device)].to(device)
                    loss, text_loss = distillation_loss(logits, Y.reshape(-1), teacher, args.distill)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_clipping(model.parameters(), args.clip)
            optimizer.step()
            schedule.step()
            if args.sampling == "sequential":
                progress.carried = _all_rows(tuple(f.detach() for f in final), world)
            progress.step += 1
            progress.tokens_seen += X.numel() * world
            losses.append(text_loss.detach().item())

            now = time.perf_counter()
            progress.wall_time += now - last_time
            last_time = now
            bar.update(1)
            if main_rank and progress.step % 10 == 0:
                recent = sum(losses[-10:]) / len(losses[-10:])
                bar.set_postfix(
                    loss=f"{recent:.3f}",
                    ppl=f"{math.exp(recent):.2f}",
                    tok_s=f"{progress.tokens_seen / max(progress.wall_time, 1e-9):,.0f}",
                    refresh=False,
                )
            if progress.step % eval_every == 0 or progress.step == limit:
                final = None
                if progress.step == limit and len(data.val_ids) > 1:  # every process reads its share
                    final = split_nll(model, data.val_ids, rank=rank, world=world)
                if main_rank:
                    evaluate(losses, final)
                losses = []
                last_time = time.perf_counter()
            if progress.step >= limit or stop.signum is not None:
                break
        else:
            epoch, skip = epoch + 1, 0

    # -- the end ----------------------------------------------------------------------------------------------
    bar.close()
    stop.restore()
    if main_rank:
        checkpoint()
        if stop.signum is not None:
            print(
                f"stopped by signal {stop.signum} at step {progress.step}; checkpoint {ckpt_path} "
                f"(continue with --resume {ckpt_path})",
                flush=True,
            )
        else:
            print(
                f"done: {progress.step} steps, best validation {progress.best_val:.4f} nats/char -> {out}", flush=True
            )
    return 128 + stop.signum if stop.signum is not None else 0


# ---------------------------------------------------------------------------------------------------------


def lr_factor(args: argparse.Namespace, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` as a fraction of ``--lr``: constant, or linear warm-up then cosine decay to
    ``--min-lr-ratio``."""
    if args.lr_schedule == "constant":
        return 1.0
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps))
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _all_rows(final: State, world: int) -> State:
    """Every process's rows of the final state, so that a checkpoint holds the whole batch's; it stays on the
    device, moved to the CPU only when a checkpoint is written."""
    if world == 1:
        return final
    parts = []
    for s in final:
        gathered = [torch.empty_like(s) for _ in range(world)]
        torch_dist.all_gather(gathered, s.contiguous())
        parts.append(torch.cat(gathered, dim=1))
    return tuple(parts)


@torch.no_grad()
def validation_nll(model: RNNLM, val_ids: torch.Tensor, max_chars: int | None) -> float:
    """Mean NLL (nats/char) of the validation text's first ``max_chars`` (all: None) read as one stream from a
    zero state: the periodic evaluations' fixed sample."""
    model.eval()
    return score(model, val_ids if max_chars is None else val_ids[:max_chars]).nll


@torch.no_grad()
def sample(model: RNNLM, vocab: Vocab, prefix: str, n: int) -> str:
    model.eval()
    state, logits = warm(model, vocab.encode(prefix))
    ids, _ = generate(model, state, logits, n)
    return vocab.decode(ids)


def training_metadata(
    args: argparse.Namespace,
    data: TrainingData,
    progress: Progress,
    world: int,
    val_nll: float | None,
    validation: dict | None = None,
) -> dict:
    """The weight file's ``training`` record: corpus, split, position, command, options, validation figures."""
    meta = {
        "corpus": data.corpus_files,
        "split": data.split,
        "steps": progress.step,
        "epochs": round(progress.step / data.steps_per_epoch, 3),
        "tokens_seen": progress.tokens_seen,
        "wall_time_s": round(progress.wall_time, 1),
        "command": " ".join(shlex.quote(a) for a in [*_program(), *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("given", "resume")},
        "processes": world,
    }
    if data.teacher_file is not None:
        meta["teacher"] = data.teacher_file
    if val_nll is not None:
        meta.update(validation_fields(val_nll))
    if validation is not None:
        meta["validation"] = validation  # how val_nll was computed
    return meta


def validation_fields(val_nll: float) -> dict:
    return {
        "val_nll": round(val_nll, 5),
        "val_ppl": round(math.exp(val_nll), 4),
        "val_bpc": round(val_nll / math.log(2), 5),
    }


def _program() -> list[str]:
    """How this run was started: ``python -m model.train`` when argv[0] is this file (torchrun's ``-m`` too; the
    process count is recorded beside), else the script's name (``rnnlm-train``)."""
    name = Path(sys.argv[0]).name
    return ["python", "-m", "model.train"] if Path(sys.argv[0]).resolve() == Path(__file__).resolve() else [name]


def _pick_device(choice: str, rank: int) -> str:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: CUDA is not available on this machine")
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def _check_writable(directory: Path, out: Path) -> None:
    """Fail now, not at the first write after minutes of training."""
    if out.is_dir():
        raise TrainError(f"--out {out}: is a folder; name the weight file to write, e.g. {out / 'model.safetensors'}")
    if not directory.is_dir():
        raise TrainError(f"--out: the folder {directory} does not exist (create it first)")
    try:
        probe = directory / f".rnnlm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output directory {directory}: cannot write ({e.strerror})") from None


def _remove_stale_temporaries(directory: Path, targets) -> None:
    """Half-written files a killed run left behind (atomic writes never leave them in place of the real file)."""
    for target in targets:
        for stale in directory.glob(f".{target.name}.*.tmp"):
            stale.unlink(missing_ok=True)


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def plot(metrics_path: Path, plot_path: Path) -> None:
    """Training and validation NLL by step, from the metrics log, as a PNG (needs the ``[plot]`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["train_nll"] for r in records], label="train")
    ax.plot([r["step"] for r in records], [r["val_nll"] for r in records], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / char")
    ax.legend()
    ax.grid(alpha=0.3)
    atomic_write(plot_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        if distributed:
            backend = "nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo"
            torch_dist.init_process_group(backend)
        result = train(args)
        if distributed:
            # Every rank waits here until all are done: a rank that tears its connections down while another
            # still talks to it can abort (seen once in CI: rank 1 died with SIGABRT after its last step).
            torch_dist.barrier()
        return result
    except (TrainError, CorpusError) as e:
        print(f"rnnlm-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
