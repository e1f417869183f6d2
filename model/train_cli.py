"""The trainer's command line: its options, their checks, and which of them a resumed run may change."""

from __future__ import annotations

import argparse
import math
import os

from model.cells import CELLS
from model.precision import PRECISIONS
from model.train_error import TrainError

__all__ = ["RESUMABLE", "build_parser", "parse_args", "resumed_args"]

TRAINER_DOC = """Offline trainer:
    python -m model.train --corpus FILE --out weights/my.safetensors   (or rnnlm-train)

Trains on cross-entropy, reports perplexity = exp(mean cross-entropy), clips gradients by global L2 norm,
keeps the best weights by validation loss, checkpoints atomically (``OUT.ckpt``), resumes exactly, and
writes a metrics log (``OUT.metrics.jsonl``) and, with matplotlib installed, a plot (``OUT.png``).
Runs unchanged under ``torchrun --nproc_per_node=K -m model.train ...`` (DDP: gloo on CPU, nccl on CUDA).
"""

# Options a resumed run may change; everything else comes from the checkpoint (given with another value: refused).
RESUMABLE = {
    "max_steps",
    "epochs",
    "eval_every",
    "device",
    "precision",
    "out",
    "resume",
    "threads",
    "cache_dir",
    "new_corpus",
}


def _int_at_least(low: int, expected: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer ≥ 0")


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
    p = _OneLineParser(prog="rnnlm-train", description=TRAINER_DOC, formatter_class=_Help)
    p.register("action", None, _Given)
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
        "--new-corpus",
        action="store_true",
        help="with --resume and --corpus: continue on this corpus instead of the run's own (the model's vocabulary "
        "stays, other characters read as <unk>; the position in the data is the run's step count)",
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available, else CPU"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: the forward pass under bf16 autocast (weights, loss, validation and the weight file stay "
        "float32); on CUDA, and on CPUs with bf16 instructions, where it is faster",
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


class _Given(argparse._StoreAction):
    """argparse's store, which also notes the option as given on the command line (``args.given``): a resumed
    run takes an option from the command line only if it was given there and is in RESUMABLE."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.given = sorted({*getattr(namespace, "given", ()), self.dest})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv, namespace=argparse.Namespace(given=[]))
    if args.resume is None and not args.corpus:
        parser.error("--corpus is required (or --resume a checkpoint)")
    if "distill" in args.given and args.teacher is None and args.resume is None:
        parser.error("--distill needs --teacher")
    if args.new_corpus and (args.resume is None or not args.corpus):
        parser.error("--new-corpus needs --resume and --corpus")
    return args


def resumed_args(args: argparse.Namespace, saved: dict) -> argparse.Namespace:
    """The run's options on resume: the checkpoint's, except those in RESUMABLE given on this command line (and
    this command line's defaults for options the checkpoint's trainer did not have). Any other option given with
    a value other than the run's is refused (a :class:`TrainError`), and so is another corpus without
    ``--new-corpus``: a resumed run continues exactly, so it must not seem to take them."""
    changed = {key: getattr(args, key) for key in args.given if key in RESUMABLE}
    changed["new_corpus"] = args.new_corpus  # a flag: never in args.given
    conflicts = [
        key
        for key in args.given
        if key not in RESUMABLE and key in saved and not _same(key, getattr(args, key), saved[key])
    ]
    if "corpus" in conflicts and args.new_corpus:
        conflicts.remove("corpus")
        changed["corpus"] = args.corpus
    if conflicts:
        given = "; ".join(
            f"--{k.replace('_', '-')} {_shown(getattr(args, k))} (the run's: {_shown(saved[k])})" for k in conflicts
        )
        hint = " — to continue on another corpus, add --new-corpus" if "corpus" in conflicts else ""
        may = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUMABLE - {"resume", "new_corpus"}))
        raise TrainError(
            f"--resume continues the run as it started, so it cannot take {given}; it may change {may}{hint}"
        )
    return argparse.Namespace(**{**vars(args), **saved, **changed, "given": args.given})


def _same(key: str, given, saved) -> bool:
    if key == "corpus":  # the same files, however they are named
        return [os.path.realpath(p) for p in given or []] == [os.path.realpath(p) for p in saved or []]
    return given == saved


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
