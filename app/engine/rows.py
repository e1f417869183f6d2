"""The batch's rows as arrays: what every running row still has to do, held so that a step of plain rows costs
no Python per row (as vLLM's V1 keeps a persistent batch, ``vllm/v1/worker/gpu_input_batch.py``).

Row i of these arrays is row i of the :class:`model.batch.BatchDecoder` beside them; both join and leave
together. A row is one of three kinds, each stepped its own way by the scheduler:

- **reading**: it reads the rest of its prompt, one forced id a step. The ids wait in one shared pool; the row's
  next one is ``pool[next_forced[i]]``, the last ``pool[end_forced[i] - 1]``.
- **plain**: greedy, or sampled without a seed, with nothing to do per token (no logprobs, streaming, penalties
  or bias): its chosen ids go into ``history[slot[i], :count[i]]`` and ``remaining[i]`` counts down; its text is
  decoded once, when it ends. A row keeps its history slot while it runs, so rows leaving move no history. A
  plain row's stop sequences are an automaton (:mod:`app.engine.stop_automaton`): ``stop_state[i]`` advances by
  one gather a step, from its ``min_tokens``-th token on, and ``stop_len[i]`` is the stop it completed (0: none).
  A plain row may stream: every few steps (and at once for its first text) :meth:`RowTable.release` sends what
  it may — all but the stop prefix its text ends with — and ``sent[i]`` counts the characters sent.
- **per-row**: everything else — a :class:`~app.engine.generation.Decoding` chooses and accepts each token as it
  always has (its own seeded generator, penalties, stops, logprobs, streaming), confined to its row.

Every generating row sampled without a seed, plain or per-row, has its sampler's settings here too
(``temperature``, ``top_k``, ``top_p``, ``log_min_p``): :meth:`RowTable.sample` draws all their tokens at once
(:func:`model.sampling.sample_rows`). A plain row with a bias or penalties and no generator of its own is
*adjusted*: its ``logit_bias`` (``bias[i]``), the tokens it has generated (``counts[i]``) and seen in its prompt
or since (``seen[i]``) and its penalties live here, and :meth:`RowTable.adjust` applies them to all such rows'
scores at once, as :meth:`model.sampling.Sampler.adjusted` does to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from app.engine.generation import Decoding
from app.engine.jobs import GenerationJob
from app.engine.stop_automaton import StopTables
from model.sampling import LARGE, greedy_choice, log_min_p, sample_rows

__all__ = ["Row", "RowTable"]


@dataclass(eq=False)
class Row:
    job: GenerationJob
    decoding: Decoding | None  # None while reading the prompt


class RowTable:
    def __init__(self, capacity: int = 8):
        self.rows: list[Row] = []
        self.pool = np.zeros(0, dtype=np.int64)  # forced prompt ids of the reading rows, back to back
        self._pool_used = 0
        self._capacity = 0
        self.reading = np.zeros(0, dtype=bool)
        self.plain = np.zeros(0, dtype=bool)
        self.next_forced = np.zeros(0, dtype=np.int64)
        self.end_forced = np.zeros(0, dtype=np.int64)
        self.remaining = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)
        self.slot = np.zeros(0, dtype=np.int64)
        self.sampled = np.zeros(0, dtype=bool)  # drawn with the batch's generator
        self.temperature = np.zeros(0, dtype=np.float32)
        self.top_k = np.zeros(0, dtype=np.int64)
        self.top_p = np.zeros(0, dtype=np.float32)
        self.log_min_p = np.zeros(0, dtype=np.float32)
        self.stop_state = np.zeros(0, dtype=np.int32)  # the row's state in self.stop_tables (-1: no stops)
        self.stop_from = np.zeros(0, dtype=np.int64)  # stops count from this token on (min_tokens)
        self.stop_len = np.zeros(0, dtype=np.int32)  # the stop the row has just completed (0: none)
        self.streamed = np.zeros(0, dtype=bool)  # a plain row whose text is streamed
        self.sent = np.zeros(0, dtype=np.int64)  # characters of it sent so far
        self.adjusted = np.zeros(0, dtype=bool)  # a plain row whose scores a bias or penalties change
        self.frequency = np.zeros(0, dtype=np.float32)  # its frequency_penalty
        self.presence = np.zeros(0, dtype=np.float32)  # its presence_penalty
        self.repetition = np.zeros(0, dtype=np.float32)  # its repetition_penalty (1: none)
        # (rows, V), made with the first adjusted row: its logit_bias (-inf bans), how often it generated each
        # token, and which tokens its prompt or its output holds
        self.bias: np.ndarray | None = None
        self.counts: np.ndarray | None = None
        self.seen: np.ndarray | None = None
        self.stop_tables: StopTables | None = None  # made with the first row that has stops
        self.history = np.zeros((0, 64), dtype=np.int32)  # (slots, width)
        self._free_slots: list[int] = []
        self._longest = 0  # at least the most ids any plain row has in history
        self._grow(capacity)
        # the rows of each kind, found again only when rows change (not per step)
        self.reading_rows = np.zeros(0, dtype=np.int64)
        self.plain_rows = np.zeros(0, dtype=np.int64)
        self.per_row_rows = np.zeros(0, dtype=np.int64)
        self.sampled_rows = np.zeros(0, dtype=np.int64)
        self.stop_rows = np.zeros(0, dtype=np.int64)  # plain rows with stop sequences
        self.streamed_rows = np.zeros(0, dtype=np.int64)  # plain rows that stream
        self.adjusted_rows = np.zeros(0, dtype=np.int64)  # plain rows with a bias or penalties

    def __len__(self) -> int:
        return len(self.rows)

    _ARRAYS = (
        "reading",
        "plain",
        "next_forced",
        "end_forced",
        "remaining",
        "count",
        "slot",
        "sampled",
        "temperature",
        "top_k",
        "top_p",
        "log_min_p",
        "stop_state",
        "stop_from",
        "stop_len",
        "streamed",
        "sent",
        "adjusted",
        "frequency",
        "presence",
        "repetition",
    )
    _MATRICES = ("bias", "counts", "seen")  # (rows, V): grown and kept as the arrays are

    def _grow(self, capacity: int) -> None:
        for name in self._ARRAYS:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        for name in self._MATRICES:
            old = getattr(self, name)
            if old is not None:
                new = np.zeros((capacity, old.shape[1]), dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        history = np.zeros((capacity, self.history.shape[1]), dtype=np.int32)
        history[: len(self.history)] = self.history
        self._free_slots += range(len(self.history), capacity)
        self.history = history
        self._capacity = capacity

    def _widen_history(self, width: int) -> None:
        if width > self.history.shape[1]:
            wider = np.zeros((len(self.history), max(width, 2 * self.history.shape[1])), dtype=np.int32)
            wider[:, : self.history.shape[1]] = self.history
            self.history = wider

    def add_many(self, rows: list[Row], forced: list[np.ndarray | None]) -> None:
        """Append rows: each reading ``forced`` ids (a prompt row) or, with None, generating its decoding."""
        first = len(self.rows)
        end = first + len(rows)
        if end > self._capacity:
            self._grow(max(2 * end, 8))
        if not self.reading[:first].any():
            self._pool_used = 0  # nobody reads from the pool: start it again
        self.rows.extend(rows)
        for i, (row, ids) in enumerate(zip(rows, forced), start=first):
            self.slot[i] = self._free_slots.pop()
            if ids is not None:
                self._add_forced(i, ids)
            else:
                self.start_generating(i, row.decoding)
        self.find_kinds()

    def _add_forced(self, i: int, ids: np.ndarray) -> None:
        start, end = self._pool_used, self._pool_used + len(ids)
        if end > len(self.pool):
            pool = np.zeros(max(2 * end, 1024), dtype=np.int64)
            pool[: self._pool_used] = self.pool[: self._pool_used]
            self.pool = pool
        self.pool[start:end] = ids
        self._pool_used = end
        self.reading[i], self.plain[i], self.sampled[i] = True, False, False
        self.next_forced[i], self.end_forced[i] = start, end

    def start_generating(self, i: int, decoding: Decoding) -> None:
        """Row ``i`` generates ``decoding`` from now on."""
        self.rows[i].decoding = decoding
        self.reading[i] = False
        self.sampled[i] = decoding.batch_sampled
        if decoding.batch_sampled:
            s = decoding.sampler
            self.temperature[i], self.top_k[i], self.top_p[i] = s.temperature, min(s.top_k, 1 << 62), s.top_p
            self.log_min_p[i] = log_min_p(s.min_p)
        self.stop_state[i], self.stop_len[i] = -1, 0
        # plain: nothing per token but what the arrays do — no logprobs, and a stream only if coalesced anyway
        plain = decoding.top_logprobs is None and (decoding.on_piece is None or decoding.batch_stream)
        stops = self._stop_start(decoding) if plain and decoding.scanner.stops else None
        plain = plain and (stops is not None or not decoding.scanner.stops)
        self.plain[i] = (decoding.greedy or decoding.batch_sampled or decoding.batch_adjusted) and plain
        self.adjusted[i] = self.plain[i] and decoding.batch_adjusted
        if self.adjusted[i]:
            self._start_adjusting(i, decoding)
        self.streamed[i] = self.plain[i] and decoding.on_piece is not None
        self.sent[i] = len(decoding.completion)
        if self.plain[i]:
            self.remaining[i], self.count[i] = decoding.remaining, 0
            if stops is not None:
                self.stop_state[i], self.stop_from[i] = stops, decoding.min_tokens
            if decoding.generated:  # it ran before (alone, or before it was put aside)
                self.from_decoding(i)

    def _start_adjusting(self, i: int, decoding: Decoding) -> None:
        s, vocab = decoding.sampler, len(decoding.vocab)
        if self.bias is None:
            self.bias = np.zeros((self._capacity, vocab), dtype=np.float32)
            self.counts = np.zeros((self._capacity, vocab), dtype=np.float32)
            self.seen = np.zeros((self._capacity, vocab), dtype=bool)
        self.sampled[i] = not s.greedy  # drawn with the batch's generator, from the adjusted scores
        if self.sampled[i]:
            self.temperature[i], self.top_k[i], self.top_p[i] = s.temperature, min(s.top_k, 1 << 62), s.top_p
            self.log_min_p[i] = log_min_p(s.min_p)
        self.frequency[i], self.presence[i], self.repetition[i] = (
            s.frequency_penalty,
            s.presence_penalty,
            s.repetition_penalty,
        )
        self.bias[i] = 0
        for token, bias in s.logit_bias:
            self.bias[i, token] = -np.inf if bias <= -100 else self.bias[i, token] + np.float32(bias)
        self._take_history(i, decoding)

    def _take_history(self, i: int, decoding: Decoding) -> None:
        """An adjusted row's counts and seen tokens from its decoding (which keeps them while it runs alone)."""
        self.counts[i] = 0 if decoding.counts is None else decoding.counts.numpy()
        self.seen[i] = False if decoding.seen is None else decoding.seen.numpy()

    def _give_history(self, i: int, decoding: Decoding) -> None:
        if decoding.counts is not None:
            decoding.counts = torch.from_numpy(self.counts[i].copy())
        if decoding.seen is not None:
            decoding.seen = torch.from_numpy(self.seen[i].copy())

    def _stop_start(self, decoding: Decoding) -> int | None:
        if self.stop_tables is None:
            self.stop_tables = StopTables(decoding.vocab)
        return self.stop_tables.start(decoding.scanner.stops)

    def find_kinds(self) -> None:
        """Find the rows of each kind again (after rows joined, left or changed kind)."""
        n = len(self.rows)
        reading, plain = self.reading[:n], self.plain[:n]
        self.reading_rows = np.flatnonzero(reading)
        self.plain_rows = np.flatnonzero(plain)
        self.per_row_rows = np.flatnonzero(~(reading | plain))
        self.sampled_rows = np.flatnonzero(self.sampled[:n])
        self.stop_rows = np.flatnonzero(plain & (self.stop_state[:n] >= 0))
        self.streamed_rows = np.flatnonzero(plain & self.streamed[:n])
        self.adjusted_rows = np.flatnonzero(plain & self.adjusted[:n])

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (n, V) with every adjusted row's scores changed by its bias and penalties (a copy; the other
        rows as they were): CTRL's repetition penalty over the tokens seen, then ``count · frequency + (count > 0)
        · presence`` subtracted, then the bias added (-inf bans) — :meth:`Sampler.adjusted`'s float32 operations,
        in numpy for all the rows at once (a numpy call costs a fraction of torch's at this size)."""
        rows = self.adjusted_rows
        index = torch.from_numpy(rows).to(logits.device)
        scores = logits.index_select(0, index).float().cpu().numpy()  # a copy
        r = self.repetition[rows][:, None]
        repeats = r != 1
        if repeats.any():
            penalised = np.where(scores > 0, scores / r, scores * r)
            scores = np.where(repeats, np.clip(np.where(self.seen[rows], penalised, scores), -LARGE, LARGE), scores)
        counts = self.counts[rows]
        scores -= counts * self.frequency[rows][:, None] + (counts > 0) * self.presence[rows][:, None]
        scores += self.bias[rows]
        adjusted = logits.clone()
        adjusted[index] = torch.from_numpy(scores).to(logits.device, logits.dtype)
        return adjusted

    def adjusted_greedy(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The adjusted rows chosen greedily, and their choice from ``logits`` (the adjusted scores)."""
        rows = self.adjusted_rows[~self.sampled[self.adjusted_rows]]
        index = torch.from_numpy(rows).to(logits.device)
        return rows, greedy_choice(logits.index_select(0, index).float().cpu().numpy()).astype(np.int64)

    def sample(self, logits: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        """A token for every row in :attr:`sampled_rows`, drawn at once from ``logits`` (n, V), each by its row's
        sampler settings."""
        rows = self.sampled_rows
        index = torch.from_numpy(rows).to(logits.device)

        def column(values: np.ndarray, used: bool):
            return torch.from_numpy(values[rows]).to(logits.device) if used else None

        top_k, top_p, min_p = self.top_k[rows], self.top_p[rows], self.log_min_p[rows]
        return (
            sample_rows(
                logits.index_select(0, index),
                column(self.temperature, True),
                column(self.top_k, bool(top_k.any())),
                column(self.top_p, bool((top_p < 1).any())),
                column(self.log_min_p, bool((min_p > -np.inf).any())),
                generator,
            )
            .cpu()
            .numpy()
        )

    def advance_plain(self, tokens: np.ndarray) -> bool:
        """Record every plain row's chosen id (``tokens`` holds one per row) and count down; True when one of
        them has ended."""
        rows = self.plain_rows
        if not rows.size:
            return False
        if self._longest >= self.history.shape[1]:
            self._widen_history(self._longest + 1)
        count = self.count[rows]
        self.history[self.slot[rows], count] = tokens[rows]
        self.count[rows] = count + 1
        self._longest += 1
        left = self.remaining[rows] - 1
        self.remaining[rows] = left
        if self.adjusted_rows.size:  # what the penalties read next step
            adjusted = self.adjusted_rows
            self.counts[adjusted, tokens[adjusted]] += 1
            self.seen[adjusted, tokens[adjusted]] = True
        stopped = False
        if self.stop_rows.size:  # each stop row's automaton reads its token (once stops count)
            rows = self.stop_rows
            rows = rows[self.count[rows] > self.stop_from[rows]]
            if rows.size:
                self.stop_state[rows], found = self.stop_tables.advance(self.stop_state[rows], tokens[rows])
                self.stop_len[rows] = found
                stopped = bool(found.any())
        return stopped or not left.all()

    def advance_plain_burst(self, read: np.ndarray) -> None:
        """Every row is plain and has read ``read[j, i]`` at step j of a burst (k, n): record and count down k."""
        k, n = read.shape
        if self._longest + k >= self.history.shape[1]:
            self._widen_history(self._longest + k + 1)
        columns = self.count[:n, None] + np.arange(k)  # (n, k)
        self.history[self.slot[:n, None], columns] = read.T
        self.count[:n] += k
        self.remaining[:n] -= k
        self._longest += k

    def keep(self, keep: np.ndarray) -> None:
        """Keep only these rows (increasing indices): the others leave."""
        m, n = len(keep), len(self.rows)
        leaving = np.ones(n, dtype=bool)
        leaving[keep] = False
        self._free_slots += self.slot[:n][leaving].tolist()
        for name in self._ARRAYS:
            array = getattr(self, name)
            array[:m] = array[keep]
        for name in self._MATRICES:
            matrix = getattr(self, name)
            if matrix is not None:
                matrix[:m] = matrix[keep]
        self.rows = [self.rows[i] for i in keep.tolist()]
        self._longest = int(self.count[:m][self.plain[:m]].max(initial=0))
        self.find_kinds()

    def generated(self, i: int) -> list[int]:
        """A plain row's generated ids so far."""
        return self.history[self.slot[i], : self.count[i]].tolist()

    def release(self, first_only: bool = False) -> None:
        """Send each streamed row's new text — all it has generated but the stop prefix it ends with, which may
        yet begin a stop — or, with ``first_only``, only rows that have sent nothing yet (the first text goes at
        once)."""
        rows = self.streamed_rows
        ready = self._ready(rows)
        new = ready > self.sent[rows]
        if first_only:
            new &= self.sent[rows] == 0
        for i, upto in zip(rows[new].tolist(), ready[new].tolist()):
            self._send(i, upto)

    def release_row(self, i: int) -> None:
        upto = int(self._ready(np.array([i]))[0])
        if upto > self.sent[i]:
            self._send(i, upto)

    def _ready(self, rows: np.ndarray) -> np.ndarray:
        """Characters each row may have sent: all it generated but the stop prefix its text ends with."""
        held = np.zeros(rows.size, dtype=np.int64)
        if self.stop_tables is not None:
            state = self.stop_state[rows]
            held = np.where(state >= 0, self.stop_tables.depth[np.maximum(state, 0)], 0)
        return self.count[rows] - held

    def _send(self, i: int, upto: int) -> None:
        d = self.rows[i].decoding
        d.on_piece(d.vocab.decode(self.history[self.slot[i], self.sent[i] : upto].tolist()), [])
        self.sent[i] = upto

    def finish(self, i: int) -> Decoding:
        """Row ``i`` has ended: its decoding finished from the arrays (a stream sent the rest of its text)."""
        d = self.rows[i].decoding
        d.finish(self.generated(i), int(self.stop_len[i]))
        if self.streamed[i] and len(d.completion) > self.sent[i]:
            d.on_piece(d.completion[self.sent[i] :], [])
        return d

    def ended(self) -> np.ndarray:
        """The plain rows that have ended: no tokens left, or a stop sequence completed."""
        plain = self.plain_rows
        return plain[(self.remaining[plain] == 0) | (self.stop_len[plain] > 0)]

    def to_decoding(self, i: int) -> None:
        """Hand a plain row's progress to its decoding (which then runs it a token at a time, alone, or waits
        aside to rejoin); a row with stops replays its tokens through the decoding's own scanner."""
        if self.plain[i]:
            d, generated = self.rows[i].decoding, self.generated(i)
            if self.streamed[i]:  # what it may send goes now: its scanner takes over from there
                self.release_row(i)
            if self.stop_state[i] >= 0 or self.streamed[i]:
                d.replay(generated, int(self.remaining[i]))
            else:
                d.generated, d.remaining = generated, int(self.remaining[i])
            if self.adjusted[i]:
                self._give_history(i, d)

    def from_decoding(self, i: int) -> None:
        """Take a plain row's progress back from its decoding (a row with stops: its automaton reads the tokens
        again)."""
        if self.plain[i]:
            d = self.rows[i].decoding
            self._widen_history(len(d.generated) + 1)
            self.history[self.slot[i], : len(d.generated)] = d.generated
            self.count[i], self.remaining[i] = len(d.generated), d.remaining
            self._longest = max(self._longest, len(d.generated))
            if self.adjusted[i]:
                self._take_history(i, d)
            self.sent[i] = len(d.completion)
            if self.stop_state[i] >= 0:
                start = self.stop_tables.start(d.scanner.stops)
                self.stop_state[i] = self.stop_tables.read(start, d.generated[d.min_tokens :])
                if d.done and d.finish_reason == "stop":  # it found its stop alone: it ends at the next settling
                    self.stop_len[i] = len(d.generated) - len(d.completion)
