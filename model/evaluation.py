"""The validation figure of a whole split, read in parallel: the trainer's final evaluation.

Read as one stream, a validation split is one row of the batch: a 10 MB split is ten million sequential steps on
one core, however many cores or processes the run has. Here the split is cut into SEGMENTS read as the rows of
one batch. The one-stream figure scores positions 1…N-1 of the split, each from the state after every character
before it; a segment starting at position a cannot have that state, so its row first reads the BURN-IN, the
``burn_in`` characters before a (read, not scored), from a zero state. A recurrent state forgets its distant past,
so after the burn-in the row's state is all but the stream's: the figure equals the one-stream figure within
1e-3 nats/char with the burn-ins in :data:`BURN_IN` (measured per cell on the shipped models and on trained small
ones: BENCHMARKS.md, "The final evaluation"). The first ``burn_in`` positions have no characters enough before
them: they are the HEAD, read as one stream from the zero state exactly as the one-stream figure reads them.

A state that forgets is what the burn-in relies on, and a model can break it: one whose state drifts over a
long stream (seen mid-training: a GRU whose one-stream figure was 9.0 nats/char where its segments read 2.55)
scores worse as one stream than as segments. So the figure is first checked where one stream is cheap — the
split's first eighth, at most CHECK_CHARS characters, read both ways — and where the two differ by more than
TOLERANCE, the whole split is read as one stream, as :func:`split_nll`'s figure says.

With several processes (DDP), each takes its share of the segments and the sums are reduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor

from model.inference import score
from model.lm import RNNLM

__all__ = ["BURN_IN", "MAX_ROWS", "Segments", "SplitFigure", "segment_sums", "split_nll"]

# Characters each segment reads before it scores, per cell (BENCHMARKS.md, "The final evaluation").
BURN_IN = {"rnn": 64, "gru": 128, "lstm": 128}
MAX_ROWS = 256  # segments read at once: a wide batch keeps the cores' matmuls busy
SEGMENT_PER_BURN_IN = 4  # a segment scores at least 4 characters for each it reads as burn-in
LOGITS_PER_CHUNK = 1 << 22  # at most this many scores (16 MiB in float32) exist at a time
IGNORED = -100  # F.cross_entropy's ignore_index: a padded column past the split's end
CHECK_CHARS = 20_000  # the most characters the check reads both ways
TOLERANCE = 1e-3  # nats/char: the most the segments' figure may differ from one stream's


@dataclass(frozen=True)
class Segments:
    """How a split of ``chars`` characters is cut: positions 1…head as one stream, then ``rows`` segments of
    ``length`` scored positions each (the last one shorter), each after reading ``burn_in`` characters."""

    chars: int
    burn_in: int
    length: int
    rows: int

    @classmethod
    def plan(cls, chars: int, burn_in: int, max_rows: int = MAX_ROWS) -> Segments:
        head = min(burn_in, max(chars - 1, 0))
        rest = max(chars - 1 - head, 0)
        length = max(math.ceil(rest / max_rows), SEGMENT_PER_BURN_IN * burn_in, 1)
        return cls(chars=chars, burn_in=burn_in, length=length, rows=math.ceil(rest / length))

    @property
    def head(self) -> int:
        """Positions 1…head are scored by one stream from the zero state (ids[0 : head + 1])."""
        return min(self.burn_in, max(self.chars - 1, 0))

    def first_target(self, row: int) -> int:
        """The first position that segment ``row`` scores."""
        return self.head + 1 + row * self.length

    def rows_of(self, rank: int, world: int) -> range:
        """Process ``rank``'s share of the segments: a contiguous block."""
        share = math.ceil(self.rows / world)
        return range(min(rank * share, self.rows), min((rank + 1) * share, self.rows))


@dataclass(frozen=True)
class SplitFigure:
    nll: float  # mean negative log-likelihood, nats per scored character
    segments: Segments
    check_chars: int  # the split's first characters read both ways
    check_difference: float  # there, the segments' figure minus one stream's (nats/char)
    one_stream: bool  # the check failed: the whole split was read as one stream
    processes: int

    def describe(self) -> dict:
        """How the figure was computed, for a weight file's ``training`` record."""
        s = self.segments
        method = "one stream from a zero state" if self.one_stream else "segments read in parallel after a burn-in"
        return {
            "method": f"{method} (model/evaluation.py)",
            "segments": 0 if self.one_stream else s.rows,
            "segment_chars": s.length,
            "burn_in_chars": s.burn_in,
            "head_chars": s.head,
            "check_chars": self.check_chars,
            "check_difference": round(self.check_difference, 6),
            "processes": self.processes,
        }


@torch.inference_mode()
def segment_sums(model: RNNLM, ids: Tensor, segments: Segments, rows: range) -> tuple[float, int]:
    """The summed NLL (float64) and the count of the positions that the segments ``rows`` score."""
    if not rows:
        return 0.0, 0
    n, burn_in, length = segments.chars, segments.burn_in, segments.length
    first = torch.tensor([segments.first_target(r) for r in rows])  # (R,)
    begin = first - 1 - burn_in  # the split position that column 0 of each row reads
    chunk = max(1, min(length, LOGITS_PER_CHUNK // (len(rows) * model.config.vocab_size)))
    state = model.init_state(len(rows))
    for start in range(0, burn_in, chunk):
        columns = torch.arange(start, min(start + chunk, burn_in))
        state = model.advance(ids[begin[:, None] + columns].to(model.device).long(), state)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for start in range(burn_in, burn_in + length, chunk):
        positions = begin[:, None] + torch.arange(start, min(start + chunk, burn_in + length))  # (R, c) read
        targets = positions + 1  # the positions scored: past the split's end only in the last row
        inside = targets < n
        inputs = ids[positions.clamp(max=n - 1)].to(model.device).long()
        wanted = ids[targets.clamp(max=n - 1)].long().masked_fill(~inside, IGNORED).to(model.device)
        logits, state = model(inputs, state)  # (R, c, V)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), wanted.reshape(-1), reduction="none")
        total += nll.double().sum().cpu()  # ignored positions give 0
        count += int(inside.sum())
    return float(total), count


def split_nll(
    model: RNNLM,
    ids: Tensor,
    burn_in: int | None = None,
    max_rows: int = MAX_ROWS,
    rank: int = 0,
    world: int = 1,
) -> SplitFigure:
    """Mean NLL (nats/char) of ``ids`` (the split, 1-D, at least 2 ids) as one stream would score it, read as
    segments in parallel where the check allows (the module's docstring). With ``world`` > 1 (DDP), every
    process calls it with its ``rank`` and reads its share; the sums are reduced over the default process group.
    """
    burn_in = BURN_IN[model.config.cell] if burn_in is None else burn_in
    segments = Segments.plan(len(ids), burn_in, max_rows)
    model.eval()
    check = ids[: min(CHECK_CHARS, len(ids) // 8) + 1]  # every process reads it: the same verdict everywhere
    difference = _segment_sums_nll(model, check, Segments.plan(len(check), burn_in, max_rows)) - _stream_nll(
        model, check
    )
    one_stream = abs(difference) > TOLERANCE
    if one_stream:
        total, count = _stream_sums(model, ids) if rank == 0 else (0.0, 0)
    else:
        total, count = segment_sums(model, ids, segments, segments.rows_of(rank, world))
        if rank == 0 and segments.head:
            head_total, head_count = _stream_sums(model, ids[: segments.head + 1])
            total, count = total + head_total, count + head_count
    if world > 1:
        sums = torch.tensor([total, count], dtype=torch.float64, device=model.device)
        torch_dist.all_reduce(sums)
        total, count = sums.tolist()
    return SplitFigure(total / count, segments, len(check), difference, one_stream, world)


def _stream_sums(model: RNNLM, ids: Tensor) -> tuple[float, int]:
    """The summed NLL and count of ``ids`` read as one stream from a zero state (nothing for fewer than 2)."""
    if len(ids) < 2:
        return 0.0, 0
    figure = score(model, ids)
    return figure.nll * figure.num_scored, figure.num_scored


def _stream_nll(model: RNNLM, ids: Tensor) -> float:
    total, count = _stream_sums(model, ids)
    return total / count if count else 0.0


def _segment_sums_nll(model: RNNLM, ids: Tensor, segments: Segments) -> float:
    """The figure of ``ids`` as segments, in this process alone."""
    total, count = segment_sums(model, ids, segments, range(segments.rows))
    head_total, head_count = _stream_sums(model, ids[: segments.head + 1])
    count += head_count
    return (total + head_total) / count if count else 0.0
