"""Offline trainer: ``python -m model.train --corpus FILE --out weights/my.safetensors`` (or ``rnnlm-train``).

Trains on cross-entropy, reports perplexity = exp(mean cross-entropy), clips gradients by global L2 norm,
keeps the best weights by validation loss, checkpoints atomically (``OUT.ckpt``), resumes exactly, and
writes a metrics log (``OUT.metrics.jsonl``) and, with matplotlib installed, a plot (``OUT.png``).
Runs unchanged under ``torchrun --nproc_per_node=K -m model.train ...`` (DDP: gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm import tqdm

from model.atomic import atomic_write
from model.cells import CELLS, State
from model.clipping import grad_clipping
from model.data import CorpusError, batches_per_epoch, epoch_batches
from model.distill import distillation_loss, teacher_log_probs
from model.id_file import EncodedCorpus, default_cache_dir, encode_corpus
from model.inference import generate, score, warm
from model.lm import RNNLM, LMConfig
from model.vocab import Vocab
from model.weights import WeightsError, load_weights, save_weights

__all__ = ["main", "parse_args"]

SAMPLE_PREFIX = "\n"
TEACHER_TABLE_IN_MEMORY = 2 * 2**30  # bytes: a larger teacher table goes to a memory-mapped file
# Options a resumed run may change; everything else comes from the checkpoint.
RESUMABLE = {"max_steps", "epochs", "eval_every", "device", "out", "resume", "threads", "cache_dir"}


class TrainError(Exception):
    """Bad input to the trainer: printed as one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def _finite_float(low: float, high: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(
                f"expected a number in {'(' if low_open else '['}{low}, {high}], got {text!r}"
            )
        return value

    return parse


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's docstring as written, and every option's default after its help."""


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="rnnlm-train", description=__doc__, formatter_class=_Help)
    p.add_argument("--corpus", nargs="+", metavar="PATH", help="UTF-8 text file(s) to train on, concatenated")
    p.add_argument("--out", default="weights/model.safetensors", help="weight file to write (best by validation)")
    p.add_argument("--cell", choices=sorted(CELLS), default="rnn", help="recurrent cell (model/cells/)")
    p.add_argument("--hidden", type=_positive_int, default=512, help="hidden state size H")
    p.add_argument("--layers", type=_positive_int, default=1, help="stacked recurrent layers")
    p.add_argument(
        "--dropout", type=_finite_float(0.0, 0.95), default=0.0, help="dropout on every layer's outputs while training"
    )
    p.add_argument(
        "--weight-drop",
        type=_finite_float(0.0, 0.95),
        default=0.0,
        help="DropConnect on every layer's recurrent weights W_hh while training: one mask per batch, "
        "the full W_hh at evaluation",
    )
    p.add_argument(
        "--teacher",
        metavar="WEIGHTS",
        help="a trained weight file with the same vocabulary: the model also learns the teacher's predicted "
        "distribution at every position (knowledge distillation; see model/distill.py)",
    )
    p.add_argument(
        "--distill",
        type=_finite_float(0.0, 1.0),
        default=0.5,
        help="with --teacher, α: loss = (1 - α)·CE(text) + α·CE(teacher's distribution)",
    )
    p.add_argument("--time-step", type=_positive_int, default=128, help="tokens per window, T")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="windows per step, global")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="adam", help="the notebook uses sgd")
    p.add_argument("--lr", type=_finite_float(0.0, 100.0, low_open=True), default=2e-3, help="peak learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="cosine: linear warm-up then cosine decay to --min-lr-ratio×lr over all --epochs",
    )
    p.add_argument("--warmup-steps", type=_non_negative_int, default=100, help="linear warm-up steps")
    p.add_argument(
        "--min-lr-ratio",
        type=_finite_float(0.0, 1.0),
        default=0.05,
        help="cosine schedule: the final learning rate as a fraction of --lr",
    )
    p.add_argument("--weight-decay", type=_finite_float(0.0, 1.0), default=0.0, help="L2 weight decay")
    p.add_argument(
        "--clip",
        type=_finite_float(0.0, 1e6, low_open=True),
        default=1.0,
        help="θ: if the global gradient norm exceeds θ, scale every gradient by θ/norm",
    )
    p.add_argument("--epochs", type=_positive_int, default=20, help="passes over the training split")
    p.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="stop after this many steps in all (the lr schedule still spans --epochs)",
    )
    p.add_argument(
        "--val-fraction",
        type=_finite_float(0.0, 0.5),
        default=0.1,
        help="the tail of the corpus held out for validation",
    )
    p.add_argument(
        "--sampling",
        choices=["sequential", "random"],
        default="sequential",
        help="sequential: carry each row's state across batches; random: fresh state per window",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights, dropout and the data order")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="where the corpus's token-id file is kept and found again (None: $RNNLM_CACHE_DIR, else ~/.cache/rnnlm)",
    )
    p.add_argument("--resume", metavar="CKPT", help="continue a run exactly from its checkpoint (OUT.ckpt)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available, else CPU"
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (None: torch's choice)")
    p.add_argument(
        "--eval-every", type=_positive_int, default=500, help="steps between evaluations (and at least one each epoch)"
    )
    p.add_argument(
        "--eval-chars",
        type=_positive_int,
        default=200_000,
        help="at most this many validation characters per periodic evaluation (the final one uses all)",
    )
    p.add_argument(
        "--sample-chars", type=_non_negative_int, default=120, help="greedy sample length shown at each evaluation"
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is None and not args.corpus:
        parser.error("--corpus is required (or --resume a checkpoint)")
    explicit = argparse.Namespace()
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    quiet.parse_args(argv, namespace=explicit)
    args.explicit = sorted(vars(explicit))
    if "distill" in args.explicit and args.teacher is None and args.resume is None:
        parser.error("--distill needs --teacher")
    return args


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

        self.teacher_logp, self.teacher_file = self._teacher(args.teacher)
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
            self._restore(resume)

    def _encoded_corpus(self, args: argparse.Namespace, vocab: Vocab | None) -> EncodedCorpus:
        """The corpus as a memory-mapped id file (model/id_file.py), encoded by rank 0 while the others wait."""
        cache = args.cache_dir or default_cache_dir()
        if self.world > 1 and self.rank != 0:
            torch_dist.barrier()  # rank 0 encodes; then every rank finds the file unchanged
        corpus = encode_corpus(args.corpus, cache, vocab, progress=self.rank == 0)
        if self.world > 1 and self.rank == 0:
            torch_dist.barrier()
        return corpus

    def _teacher(self, path: str | None) -> tuple[torch.Tensor | None, dict | None]:
        """The teacher's log-probabilities for every next character of the training split (model/distill.py)."""
        if not path:
            return None, None
        try:
            teacher = load_weights(path, self.device)
        except WeightsError as e:
            raise TrainError(f"--teacher {e}") from None
        if teacher.vocab != self.vocab:
            raise TrainError(
                f"--teacher {path}: its vocabulary ({len(teacher.vocab)} tokens) is not the corpus's "
                f"({len(self.vocab)} tokens)"
            )
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        logp = self._teacher_table(teacher.model, digest)
        return logp, {
            "name": Path(path).name,
            "sha256": digest,
            "config": teacher.config.to_dict(),
            "val_nll": teacher.training.get("val_nll"),
        }

    def _teacher_table(self, teacher: RNNLM, digest: str) -> torch.Tensor:
        """The teacher's (n × V) float16 table, in memory up to TEACHER_TABLE_IN_MEMORY, else in a memory-mapped
        file beside the corpus's ids (kept, so a resumed run reads it instead of running the teacher again)."""
        n, vocab = len(self.train_ids), teacher.config.vocab_size
        if n * vocab * 2 <= TEACHER_TABLE_IN_MEMORY:
            return teacher_log_probs(teacher, self.train_ids).to(self.device)
        path = self.corpus_cache.with_name(f"{self.corpus_cache.stem}.teacher-{digest[:16]}-{n}.f16")
        done = path.with_suffix(".done")
        free = shutil.disk_usage(path.parent).free + (path.stat().st_size if path.exists() else 0)
        if not done.exists() and free < n * vocab * 2:
            raise TrainError(
                f"--teacher: its table for {n:,} characters needs {n * vocab * 2 / 1e9:,.1f} GB and "
                f"{path.parent} has {free / 1e9:,.1f} GB free (set --cache-dir elsewhere)"
            )
        table = np.memmap(path, dtype=np.float16, mode="r+" if done.exists() else "w+", shape=(n, vocab))
        logp = torch.from_numpy(table)
        if not done.exists():
            teacher_log_probs(teacher, self.train_ids, out=logp)
            table.flush()
            done.write_text("complete\n")
        return logp

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
            "hyperparameters": {k: v for k, v in vars(self.args).items() if k not in ("explicit", "resume")},
            "processes": self.world,
        }
        if self.teacher_file is not None:
            meta["teacher"] = self.teacher_file
        if val_nll is not None:
            meta.update(
                val_nll=round(val_nll, 5), val_ppl=round(math.exp(val_nll), 4), val_bpc=round(val_nll / math.log(2), 5)
            )
        return meta

    def save_checkpoint(self) -> None:
        state = {
            "args": {k: v for k, v in vars(self.args).items() if k != "explicit"},
            "vocab": self.vocab.to_json(),
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "wall_time": self.wall_time,
            "best_val": self.best_val,
            "carried": [s.cpu() for s in self.carried] if self.carried is not None else None,
            "teacher_sha256": self.teacher_file["sha256"] if self.teacher_file else None,
        }
        atomic_write(self.ckpt_path, lambda tmp: torch.save(state, tmp))

    def _restore(self, ckpt: dict) -> None:
        expected = ckpt.get("teacher_sha256")
        if expected and self.teacher_file["sha256"] != expected:
            raise TrainError(
                f"--resume: the teacher {self.args.teacher} is not the file this run started with "
                "(its sha256 differs); the run cannot continue exactly"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        self.step, self.tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        self.wall_time, self.best_val = ckpt["wall_time"], ckpt["best_val"]
        if ckpt["carried"] is not None:
            self.carried = tuple(s.to(self.device) for s in ckpt["carried"])

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


def _load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"--resume {path}: file not found") from None
    except Exception as e:
        raise TrainError(f"--resume {path}: not a usable checkpoint ({type(e).__name__})") from None


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
        resume = _load_checkpoint(args.resume)
        saved = resume["args"]
        for key, value in saved.items():
            if key not in RESUMABLE or key not in args.explicit:
                setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
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
        run.save_checkpoint()
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
    run.save_checkpoint()
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
