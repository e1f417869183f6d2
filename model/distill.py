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

import torch
import torch.nn.functional as F
from torch import Tensor

from model.lm import RNNLM

__all__ = ["distillation_loss", "teacher_log_probs"]

TEACHER_ROWS = 64  # the text is read as this many parallel streams
TEACHER_WARMUP = 256  # each stream first reads this many characters before its own part (none for the first)
TEACHER_CHUNK = 512  # columns per forward pass: memory stays (rows × chunk × V)


@torch.inference_mode()
def teacher_log_probs(teacher: RNNLM, ids: Tensor, rows: int = TEACHER_ROWS, warmup: int = TEACHER_WARMUP,
                      chunk: int = TEACHER_CHUNK) -> Tensor:
    """``out[j] = log p_teacher(ids[j + 1] = · | ids[..j])`` for every j < n - 1, shape (n, V), float16, on the CPU
    (the last row, which has no next character, is zeros).

    The text is cut into ``rows`` consecutive parts read side by side; each part except the first is read after
    the ``warmup`` characters before it, so no prediction starts from an empty state except at the text's start.
    """
    teacher.eval()
    n, vocab = len(ids), teacher.config.vocab_size
    out = torch.zeros(n, vocab, dtype=torch.float16)
    if n < 2:
        return out
    part = -(-n // rows)  # ceil
    rows = -(-n // part)
    width = part + warmup
    tokens = torch.zeros(rows, width, dtype=torch.long)
    positions = torch.full((rows, width), -1, dtype=torch.long)  # where each column's prediction goes; -1: drop
    for r in range(rows):
        start = r * part
        first = max(0, start - warmup) if r else 0  # the first part has nothing before it: read from 0
        stop = min(n, first + width)
        tokens[r, : stop - first] = ids[first:stop]
        keep = torch.arange(first, stop)
        own = (keep >= start) & (keep < min(n - 1, start + part))
        positions[r, : stop - first] = torch.where(own, keep, -1)
    state = None
    for cols in torch.arange(width).split(chunk):
        logits, state = teacher(tokens[:, cols].to(teacher.device), state)  # (rows, c, V)
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        where = positions[:, cols]
        mask = where >= 0
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
