"""Knowledge distillation: a trained model (the teacher) tells a student what it predicts at every position.

The teacher reads the training text once, before training, and its log-probabilities for every next character
are kept, (n, V) in float16 (132 MB for tiny Shakespeare's million characters). The student then learns from
both the text and the teacher:

    loss = (1 - α) · CE(student, next character) + α · CE(student, teacher's distribution)

with ``CE(q, p) = -Σ_v p_v log q_v`` (Hinton et al., 2015, at temperature 1). The teacher's distribution says
how plausible each alternative was, which one observed character cannot: a small model can learn more from it
than from the text alone. The teacher never sees the validation text, so the student's validation figure stays
a held-out one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.lm import RNNLM
from model.train_error import TrainError
from model.vocab import Vocab
from model.weights import WeightsError, load_weights

__all__ = ["distillation_loss", "load_teacher", "teacher_log_probs"]

TEACHER_TABLE_IN_MEMORY = 2 * 2**30  # bytes: a larger teacher table goes to a memory-mapped file

TEACHER_ROWS = 64  # the text is read as this many parallel streams
TEACHER_WARMUP = 256  # each stream first reads this many characters before its own part (none for the first)
TEACHER_CHUNK = 512  # columns per forward pass: memory stays (rows × chunk × V)


@torch.inference_mode()
def teacher_log_probs(
    teacher: RNNLM,
    ids: Tensor,
    rows: int = TEACHER_ROWS,
    warmup: int = TEACHER_WARMUP,
    chunk: int = TEACHER_CHUNK,
    out: Tensor | None = None,
) -> Tensor:
    """``out[j] = log p_teacher(ids[j + 1] = · | ids[..j])`` for every j < n - 1, shape (n, V), float16, on the CPU
    (the last row, which has no next character, is zeros). ``out``, when given, is written in place — a
    memory-mapped table, say, for a corpus whose table would not fit in memory.

    The text is cut into ``rows`` consecutive parts read side by side; each part except the first is read after
    the ``warmup`` characters before it, so no prediction starts from an empty state except at the text's start.
    Only one chunk of columns is ever laid out, (rows × chunk): the text itself may be memory-mapped.
    """
    teacher.eval()
    n, vocab = len(ids), teacher.config.vocab_size
    if out is None:
        out = torch.zeros(n, vocab, dtype=torch.float16)
    else:
        out[n - 1 :] = 0
    if n < 2:
        return out
    part = -(-n // rows)  # ceil
    rows = -(-n // part)
    width = part + warmup
    starts = torch.arange(rows) * part  # (rows,): where each part's own predictions begin
    firsts = torch.where(starts > 0, (starts - warmup).clamp(min=0), starts)  # where each row starts reading
    stops = (firsts + width).clamp(max=n)  # where each row stops reading
    owns = (starts + part).clamp(max=n - 1)  # each part's own predictions end here (the last character has none)
    state = None
    for begin in range(0, width, chunk):
        where = firsts[:, None] + torch.arange(begin, min(begin + chunk, width))  # (rows, c): text positions
        read = where < stops[:, None]
        tokens = ids[where.clamp(max=n - 1)].long() * read
        logits, state = teacher(tokens.to(teacher.device), state)  # (rows, c, V)
        mask = read & (where >= starts[:, None]) & (where < owns[:, None])
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        out[where[mask]] = logp[mask].to(torch.float16)
    return out


def distillation_loss(logits: Tensor, targets: Tensor, teacher_logp: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(1 - α) · CE(logits, targets) + α · CE(logits, exp(teacher_logp))`` and the first cross-entropy alone
    (for reporting); logits and teacher_logp (N, V), targets (N,)."""
    hard = F.cross_entropy(logits, targets)
    if alpha == 0:
        return hard, hard
    soft = F.cross_entropy(logits, teacher_logp.to(logits.dtype).exp())  # probability targets
    return (1 - alpha) * hard + alpha * soft, hard


def load_teacher(
    path: str, vocab: Vocab, train_ids: Tensor, device: torch.device, corpus_cache: Path
) -> tuple[Tensor, dict]:
    """The teacher's log-probabilities for every next character of the training split, and what the weight
    file's metadata records of the teacher."""
    try:
        teacher = load_weights(path, device)
    except WeightsError as e:
        raise TrainError(f"--teacher {e}") from None
    if teacher.vocab != vocab:
        raise TrainError(
            f"--teacher {path}: its vocabulary ({len(teacher.vocab)} tokens) is not the corpus's ({len(vocab)} tokens)"
        )
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    logp = _teacher_table(teacher.model, digest, train_ids, device, corpus_cache)
    return logp, {
        "name": Path(path).name,
        "sha256": digest,
        "config": teacher.config.to_dict(),
        "val_nll": teacher.training.get("val_nll"),
    }


def _teacher_table(teacher: RNNLM, digest: str, train_ids: Tensor, device: torch.device, corpus_cache: Path) -> Tensor:
    """The teacher's (n × V) float16 table, in memory up to TEACHER_TABLE_IN_MEMORY, else in a memory-mapped
    file beside the corpus's ids (kept, so a resumed run reads it instead of running the teacher again)."""
    n, vocab = len(train_ids), teacher.config.vocab_size
    if n * vocab * 2 <= TEACHER_TABLE_IN_MEMORY:
        return teacher_log_probs(teacher, train_ids).to(device)
    path = corpus_cache.with_name(f"{corpus_cache.stem}.teacher-{digest[:16]}-{n}.f16")
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
        teacher_log_probs(teacher, train_ids, out=logp)
        table.flush()
        done.write_text("complete\n")
    return logp
