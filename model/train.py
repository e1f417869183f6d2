"""The training loop: ``python -m model.train --corpus FILE --out weights/my.safetensors`` (or ``rnnlm-train``).

A :class:`Run` holds the data, model, optimiser and schedule; :func:`train` steps it, evaluates, keeps the best
weights and checkpoints. The options: model/train_cli.py; the checkpoint and resume: model/checkpoint.py.
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
from model.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from model.clipping import grad_clipping
from model.data import CorpusError, batches_per_epoch, epoch_batches
from model.distill import distillation_loss, load_teacher
from model.heap import keep_freed_memory
from model.id_file import EncodedCorpus, default_cache_dir, encode_corpus
from model.inference import generate, score, warm
from model.lm import RNNLM, LMConfig
from model.train_cli import TrainError, parse_args, resumed_args
from model.vocab import Vocab
from model.weights import save_weights

__all__ = ["Run", "main", "parse_args", "train"]

SAMPLE_PREFIX = "\n"


# ---------------------------------------------------------------------------------------------------------


class Run:
    """One training run: data, model, optimizer, schedule, position, best-so-far, and the files it writes."""

    def __init__(self, args: argparse.Namespace, resume: dict | None):
        self.args = args
        self.rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
        self.world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
        self.device = torch.device(_pick_device(args.device, self.rank))
        self.out = Path(args.out)
        self.ckpt_path = self.out.with_suffix(".ckpt")
        self.metrics_path = self.out.with_suffix(".metrics.jsonl")

        corpus = self._encoded_corpus(args, Vocab.from_json(resume["vocab"]) if resume else None)
        self.vocab = corpus.vocab
        ids = torch.from_numpy(corpus.ids)  # memory-mapped: only the pages a run reads come into memory
        n = len(ids)
        split = int(n * (1 - args.val_fraction))  # as nanoGPT: train = text[:int(n * 0.9)]
        self.train_ids, self.val_ids = ids[:split], ids[split:]
        self.corpus_files = corpus.files
        self.corpus_cache = corpus.path
        self.split = {
            "val_fraction": args.val_fraction,
            "train_chars": split,
            "val_chars": n - split,
            "val": "the last val_fraction of the corpus",
        }
        if args.batch_size % self.world:
            raise TrainError(f"--batch-size {args.batch_size} is not divisible by the {self.world} processes")
        self.steps_per_epoch = batches_per_epoch(len(self.train_ids), args.batch_size, args.time_step)
        if self.steps_per_epoch < 1:
            need = (args.batch_size + 1) * args.time_step
            raise TrainError(
                f"corpus too short: the training split has {len(self.train_ids)} characters, one batch "
                f"needs about {need} (lower --batch-size or --time-step)"
            )
        if args.val_fraction > 0 and len(self.val_ids) < 2:
            raise TrainError("corpus too short: the validation split has fewer than 2 characters")

        self.teacher_logp, self.teacher_file = None, None  # the teacher's table (model/distill.py), its file
        if args.teacher:
            self.teacher_logp, self.teacher_file = load_teacher(
                args.teacher, self.vocab, self.train_ids, self.device, self.corpus_cache
            )
        torch.manual_seed(args.seed)
        config = LMConfig(
            cell=args.cell,
            vocab_size=len(self.vocab),
            hidden_size=args.hidden,
            num_layers=args.layers,
            dropout=args.dropout,
            weight_drop=args.weight_drop,
        )
        self.model = RNNLM(config).to(self.device)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        if args.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.total_steps = args.epochs * self.steps_per_epoch
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.local_batch = args.batch_size // self.world
        self.step = 0
        self.tokens_seen = 0
        self.wall_time = 0.0
        self.best_val = math.inf
        self.carried: State | None = None  # sequential sampling: each row's state, (L, B, H) globally
        self.plot_note_shown = False
        if resume:
            restore_checkpoint(self, resume)

    def _encoded_corpus(self, args: argparse.Namespace, vocab: Vocab | None) -> EncodedCorpus:
        """The corpus as a memory-mapped id file (model/id_file.py), encoded by rank 0 while the others wait."""
        cache = args.cache_dir or default_cache_dir()
        if self.world > 1 and self.rank != 0:
            torch_dist.barrier()  # rank 0 encodes; then every rank finds the file unchanged
        corpus = encode_corpus(args.corpus, cache, vocab, progress=self.rank == 0)
        if self.world > 1 and self.rank == 0:
            torch_dist.barrier()
        return corpus

    def batches(self, epoch: int):
        """(X, Y, P) for every batch of an epoch: P holds the training-split positions of X (for the teacher)."""
        args = self.args
        pairs = epoch_batches(
            self.train_ids,
            args.batch_size,
            args.time_step,
            args.sampling,
            args.seed,
            epoch,
            positions=self.teacher_logp is not None,
        )
        if self.teacher_logp is None:
            return ((X, Y, None) for X, Y in pairs)
        return pairs

    # -- schedule -------------------------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        args = self.args
        if args.lr_schedule == "constant":
            return 1.0
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = min(1.0, (step - args.warmup_steps) / max(1, self.total_steps - args.warmup_steps))
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # -- one step -------------------------------------------------------------------------------------------
    def train_step(self, X: torch.Tensor, Y: torch.Tensor, P: torch.Tensor | None = None) -> float:
        """One optimizer step on a batch; returns the cross-entropy on the text (the teacher's term aside)."""
        rows = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        X, Y = X[rows].to(self.device).long(), Y[rows].to(self.device).long()  # ids may be uint8 (memory-mapped)
        state = None
        if self.args.sampling == "sequential" and self.carried is not None:
            state = tuple(s[:, rows] for s in self.carried)  # detached: BPTT stops at the batch
        self.model.train()
        logits, final = self.ddp(X, state)  # (b, T, V)
        logits = logits.reshape(-1, logits.shape[-1])
        if P is None:
            loss = text_loss = F.cross_entropy(logits, Y.reshape(-1))
        else:
            teacher = self.teacher_logp[P[rows].reshape(-1).to(self.teacher_logp.device)].to(self.device)
            loss, text_loss = distillation_loss(logits, Y.reshape(-1), teacher, self.args.distill)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clipping(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        self.schedule.step()
        if self.args.sampling == "sequential":
            self._carry(tuple(f.detach() for f in final))
        self.step += 1
        self.tokens_seen += X.numel() * self.world
        return text_loss.detach().item()

    def _carry(self, final: State) -> None:
        if self.world > 1:  # keep every rank's rows, so a checkpoint holds the whole batch's state
            parts = []
            for s in final:
                gathered = [torch.empty_like(s) for _ in range(self.world)]
                torch_dist.all_gather(gathered, s.contiguous())
                parts.append(torch.cat(gathered, dim=1))
            final = tuple(parts)
        self.carried = final  # stays on the device; moved to the CPU only when a checkpoint is written

    # -- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_nll(self, max_chars: int | None) -> float:
        """Mean NLL (nats/char) of the validation text read as one stream from a zero state."""
        ids = self.val_ids if max_chars is None else self.val_ids[:max_chars]
        self.model.eval()
        return score(self.model, ids).nll

    @torch.no_grad()
    def sample(self, prefix: str, n: int) -> str:
        self.model.eval()
        state, logits = warm(self.model, self.vocab.encode(prefix))
        ids, _ = generate(self.model, state, logits, n)
        return self.vocab.decode(ids)

    # -- files ----------------------------------------------------------------------------------------------
    def training_metadata(self, val_nll: float | None) -> dict:
        meta = {
            "corpus": self.corpus_files,
            "split": self.split,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "tokens_seen": self.tokens_seen,
            "wall_time_s": round(self.wall_time, 1),
            "command": " ".join(shlex.quote(a) for a in [*_program(), *sys.argv[1:]]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "hyperparameters": {k: v for k, v in vars(self.args).items() if k not in ("given", "resume")},
            "processes": self.world,
        }
        if self.teacher_file is not None:
            meta["teacher"] = self.teacher_file
        if val_nll is not None:
            meta.update(
                val_nll=round(val_nll, 5), val_ppl=round(math.exp(val_nll), 4), val_bpc=round(val_nll / math.log(2), 5)
            )
        return meta

    def log_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


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


def _check_writable(directory: Path) -> None:
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


def train(args: argparse.Namespace) -> int:
    resume = None
    if args.resume:
        resume = load_checkpoint(args.resume)
        args = resumed_args(args, resume["args"])
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # a step's large tensors reuse mapped pages (model/heap.py)
    run = Run(args, resume)
    main_rank = run.rank == 0
    if main_rank:
        _check_writable(run.out.parent)
        _remove_stale_temporaries(run.out.parent, (run.out, run.ckpt_path, run.out.with_suffix(".png")))
    stop = _Stop()
    limit = run.total_steps if args.max_steps is None else min(args.max_steps, run.total_steps)
    if main_rank:
        print(
            f"{run.model.config} | {run.model.num_parameters():,} parameters | {len(run.train_ids):,} train / "
            f"{len(run.val_ids):,} val chars | {run.steps_per_epoch} steps/epoch | {limit} steps | "
            f"device {run.device} | {run.world} process(es)",
            flush=True,
        )

    bar = tqdm(
        total=limit,
        initial=run.step,
        disable=not main_rank,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    losses: list[float] = []
    last_time = time.perf_counter()
    epoch = run.step // run.steps_per_epoch
    eval_every = min(args.eval_every, run.steps_per_epoch)  # at least once an epoch: a weight file early on
    while run.step < limit and stop.signum is None:
        skip = run.step - epoch * run.steps_per_epoch
        if skip == 0 and run.args.sampling == "sequential":
            run.carried = None  # a new epoch starts at a new offset: fresh states
        for i, (X, Y, P) in enumerate(run.batches(epoch)):
            if i < skip:
                continue
            losses.append(run.train_step(X, Y, P))
            now = time.perf_counter()
            run.wall_time += now - last_time
            last_time = now
            bar.update(1)
            if main_rank and run.step % 10 == 0:
                recent = sum(losses[-10:]) / len(losses[-10:])
                bar.set_postfix(
                    loss=f"{recent:.3f}",
                    ppl=f"{math.exp(recent):.2f}",
                    tok_s=f"{run.tokens_seen / max(run.wall_time, 1e-9):,.0f}",
                    refresh=False,
                )
            if run.step % eval_every == 0 or run.step == limit:
                evaluate(run, losses, bar, final=run.step == limit)
                losses = []
                last_time = time.perf_counter()
            if run.step >= limit or stop.signum is not None:
                break
        else:
            epoch += 1
    bar.close()
    stop.restore()
    if main_rank:
        save_checkpoint(run)
        if stop.signum is not None:
            print(
                f"stopped by signal {stop.signum} at step {run.step}; checkpoint {run.ckpt_path} "
                f"(continue with --resume {run.ckpt_path})",
                flush=True,
            )
        else:
            print(f"done: {run.step} steps, best validation {run.best_val:.4f} nats/char -> {run.out}", flush=True)
    return 128 + stop.signum if stop.signum is not None else 0


def evaluate(run: Run, losses: list[float], bar: tqdm, final: bool) -> float | None:
    """Validation NLL, metrics log, best weights, checkpoint and plot. Only rank 0 works here."""
    if run.rank != 0:
        return None
    train_nll = sum(losses) / len(losses) if losses else float("nan")
    val_nll = run.validation_nll(None if final else run.args.eval_chars) if len(run.val_ids) > 1 else train_nll
    sample = run.sample(SAMPLE_PREFIX, run.args.sample_chars)
    record = {
        "step": run.step,
        "epoch": round(run.step / run.steps_per_epoch, 3),
        "tokens": run.tokens_seen,
        "wall_time_s": round(run.wall_time, 1),
        "lr": run.schedule.get_last_lr()[0],
        "train_nll": train_nll,
        "train_ppl": math.exp(train_nll) if losses else None,
        "val_nll": val_nll,
        "val_ppl": math.exp(val_nll),
        "val_bpc": val_nll / math.log(2),
    }
    run.log_metrics(record)
    bar.write(
        f"step {run.step:>6} | train ppl {math.exp(train_nll):7.3f} ({train_nll / math.log(2):.3f} bpc) | "
        f"val ppl {math.exp(val_nll):7.3f} ({val_nll / math.log(2):.3f} bpc, {val_nll:.4f} nats) | "
        f"sample: {sample!r}"
    )
    if val_nll < run.best_val:
        run.best_val = val_nll
        save_weights(run.out, run.model, run.vocab, run.training_metadata(val_nll))
    save_checkpoint(run)
    _plot(run)
    return val_nll


def _plot(run: Run) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not run.plot_note_shown:
            print(
                f"note: matplotlib is not installed, so no {run.out.with_suffix('.png')} is written "
                "(pip install -e '.[plot]')",
                flush=True,
            )
            run.plot_note_shown = True
        return
    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["train_nll"] for r in records], label="train")
    ax.plot([r["step"] for r in records], [r["val_nll"] for r in records], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / char")
    ax.legend()
    ax.grid(alpha=0.3)
    atomic_write(run.out.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


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
