"""Continuous batching: one thread owns the model and runs every request's work together, step by step.

Each step reads one token for every sequence in the batch with one batched matmul per layer
(:class:`model.batch.BatchDecoder`). A sequence first reads the uncached rest of its prompt (teacher-forced rows:
the next prompt character is its input, and its logits are ignored until the prompt is read), then generates;
sequences join and leave between steps, all that join or leave in a turn at once. Every row's bookkeeping lives in
arrays (:mod:`app.engine.rows`), so plain rows cost no Python per step, and every row sampled without a seed of
its own draws its token in one draw for the batch; on CUDA, when every row is plain greedy and nothing else
waits, a turn runs a burst of steps in one CUDA graph. A prompt whose uncached part is longer than
``prefill_chars``, or any prompt arriving at an idle server, reads all but its last character as a
*task* — chunks of the model's own sequence forward pass, the fastest way to read one text — and so does scoring
(/perplexity). Each loop turn advances every task by one chunk and the batch by one step (or one burst), so a long
scoring job never stalls generation for long. A lone generating sequence with nothing else to do steps with the
single-stream decoder (:class:`model.decode.StepDecoder`, the same numbers at half the cost) until other work
arrives.

Requests wait in a bounded queue; a full queue refuses new work at once (the client answers 429). The batch is
shared fairly between requests (a *group* of jobs: one HTTP request's prompts): waiting work is admitted from the
group holding the fewest rows first, and when the batch is full and a group holding none waits, rows of the
group holding the most are put aside — their state, logits and progress kept — so the newcomer joins at the next
turn whatever one request holds; they rejoin as they were when room comes (vLLM's V1 preempts a request when
its KV blocks run out and recomputes it; a row's state here is a few kilobytes, so it is kept instead).

The scheduler has no thread of its own: the engine process's loop (:mod:`app.engine.core`) calls
:meth:`Scheduler.run_once` whenever there is work, between reading new requests from its socket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch

from app.engine.generation import token_infos
from app.engine.jobs import GenerationJob, Job, QueueFull, TaskJob
from app.engine.prefix_cache import PrefixCache
from app.engine.rows import Row, RowTable
from model import RNNLM, State
from model.batch import BatchDecoder
from model.decode import StepDecoder
from model.inference import drain, iter_warm

__all__ = ["OneAtATime", "Scheduler", "prepare_model_thread"]

logger = logging.getLogger("rnnlm")


@dataclass(eq=False)
class _Parked:
    """A row put aside to make room for another request's: it rejoins the batch as it left it."""

    row: Row
    state: State
    logits: torch.Tensor | None  # its next token's scores (None while it reads its prompt)
    forced: np.ndarray | None  # the prompt ids it has still to read

    @property
    def job(self) -> GenerationJob:
        return self.row.job

    @property
    def width(self) -> int:  # a prompt row forks into one row per decoding
        return 1 if self.row.decoding is not None else self.row.job.width


def _group(job: Job) -> Hashable:
    return job if job.group is None else job.group


# Streamed rows in the arrays send their new text this often (the engine coalesces it by time anyway).
RELEASE_EVERY_STEPS = 8

# Longest a turn spends on tasks (scoring, long prompts) while generating sequences wait for their next step.
TASK_BUDGET_S = 0.005


def prepare_model_thread(threads: int, flush_denormal: bool) -> None:
    """Settings that belong to the calling thread, for a thread that runs the model.

    Both are per thread: the FTZ/DAZ bits live in the thread's floating-point control register, and OpenMP's
    thread count is a per-thread setting. Only the engine process calls this: flushing denormals in an HTTP
    process would make a schema-valid 5e-324 compare equal to 0 there.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)


class Scheduler:
    def __init__(
        self,
        model: RNNLM,
        cache: PrefixCache | None,
        max_batch: int,
        max_queue: int,
        prefill_chars: int,
        chunk_chars: int,
        interrupt: Callable[[], bool] = lambda: False,
        cuda_graphs: bool = True,
    ):
        self.model = model
        self.prefill_chars = prefill_chars
        self.chunk_chars = chunk_chars
        self.cache = cache
        self.max_batch = max_batch
        self.max_queue = max_queue
        # Called between a lone sequence's tokens: the engine reads waiting messages and sends due output;
        # True when new jobs arrived (the lone sequence then rejoins the batch).
        self.interrupt = interrupt
        self._graph_rows = max_batch if cuda_graphs else 0
        # waiting work by group, in the order the groups began to wait: jobs, and rows put aside (first)
        self._waiting: dict[Hashable, deque[Job | _Parked]] = {}
        self._queued = 0  # jobs waiting (the queue's bound counts these, not rows put aside)
        self._held: dict[Hashable, int] = {}  # rows each admitted group holds or has reserved
        self._tasks: list[Job] = []  # scoring jobs and long-prompt warm-ups, advanced a chunk per turn
        self._decoder = self._new_batch()
        self._table = RowTable(min(max_batch, 64))
        self._rng = torch.Generator(model.device)  # draws the tokens of rows sampled without a seed of their own
        self._rng.seed()
        self._joining: list[tuple[Row, State, torch.Tensor | None, np.ndarray | None]] = []
        self._cancelled = False  # a running job was cancelled: its rows leave at the next settling
        self.steps = 0  # batch steps run, and the rows they stepped in all (mean batch = rows_stepped / steps)
        self.rows_stepped = 0
        self.rows_put_aside = 0  # rows put aside for another request's (and rejoined later)

    def _new_batch(self) -> BatchDecoder:
        return BatchDecoder(self.model, capacity=min(self.max_batch, 64), graph_rows=self._graph_rows)

    @property
    def graph_steps(self) -> int:
        """Batch steps replayed from a CUDA graph."""
        return self._decoder.steps_in_graphs

    def submit(self, job: Job) -> None:
        if self._queued >= self.max_queue:
            raise QueueFull
        self._waiting.setdefault(_group(job), deque()).append(job)
        self._queued += 1

    def cancel(self, job: Job) -> None:
        """The client has gone: the job's rows leave at the next step, its task at its next chunk; waiting, it
        ends now."""
        job.cancelled = True
        self._cancelled = True
        key = _group(job)
        waiting = self._waiting.get(key)
        mine = [u for u in waiting or () if u is job or (isinstance(u, _Parked) and u.job is job)]
        if not mine:
            return
        for unit in mine:
            waiting.remove(unit)
        if not waiting:
            del self._waiting[key]
        if mine[0] is job:  # never admitted
            self._queued -= 1
            self._finish(job, None, None)
        else:
            job.parked -= len(mine)
            self._check_job_done(job)

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._tasks or self._table.rows)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def batch_rows(self) -> int:
        return len(self._table)

    def run_once(self) -> None:
        """One turn: admit queued jobs, advance every task a chunk, step the batch once (or run a lone
        sequence until something else needs the engine)."""
        admitted = self._admit()
        try:
            alone = len(admitted) == 1 and not self._table.rows and not self._tasks
            for unit in admitted:
                if isinstance(unit, _Parked):
                    self._joining.append((unit.row, unit.state, unit.logits, unit.forced))
                else:
                    self._start(unit, alone)
            self._advance_tasks()
            self._flush_joins()
            if self._can_go_solo():
                self._solo()
            elif self._can_burst():
                self._burst()
            elif self._table.rows:
                self._step()
        except Exception as error:  # a bug or a device failure: fail what is running, keep serving
            logger.exception("scheduler step failed")
            self.fail_all(error)

    def _admit(self) -> list[Job | _Parked]:
        """Take waiting work while the batch has room, from the group holding the fewest rows first (tasks take
        no rows, but at most max_batch run at once); a group holding none that finds the batch full gets room
        made for it (:meth:`_make_room`)."""
        if not self._waiting:
            return []
        busy = len(self._table) + sum(j.width for j in self._tasks if isinstance(j, GenerationJob))
        tasks = len(self._tasks)
        held, out = self._held, []
        while self._waiting:
            key = min(self._waiting, key=lambda g: held.get(g, 0))  # the first to wait among the fewest held
            waiting = self._waiting[key]
            unit = waiting[0]
            job = unit.job if isinstance(unit, _Parked) else unit
            if isinstance(unit, TaskJob):
                if tasks >= self.max_batch:
                    break
                tasks += 1
            elif not job.cancelled:
                width = unit.width
                if busy and busy + width > self.max_batch:
                    if held.get(key, 0):
                        break
                    busy -= self._make_room(key, busy + width - self.max_batch)
                    if busy and busy + width > self.max_batch:
                        break
                busy += width
                self._reserve(job, width)
            waiting.popleft()
            if not waiting:
                del self._waiting[key]
            if unit is job:
                self._queued -= 1
                out.append(job)  # a cancelled one ends as it starts
            else:
                job.parked -= 1
                if job.cancelled:  # the client left while its row was aside
                    self._check_job_done(job)
                else:
                    out.append(unit)
        return out

    def _make_room(self, starving: Hashable, needed: int) -> int:
        """Put aside ``needed`` rows for ``starving`` (a group holding none), each from the group that then holds
        the most, never a group's last row; returns the rows put aside (0 when that many cannot be)."""
        held = self._held
        if max(held.values(), default=0) < 2:
            return 0  # every group holds one row: wait for one to end, in order
        rows_of: dict[Hashable, list[int]] = {}
        for i in range(len(self._table) - 1, -1, -1):  # the latest to join go first
            rows_of.setdefault(_group(self._table.rows[i].job), []).append(i)
        left = {g: held.get(g, 0) for g in rows_of if g != starving}
        chosen: list[int] = []
        while len(chosen) < needed:
            g = max(left, key=left.get, default=None)
            if g is None or left[g] < 2 or not rows_of[g]:
                return 0
            chosen.append(rows_of[g].pop(0))
            left[g] -= 1
        self._put_aside(sorted(chosen))
        return len(chosen)

    def _put_aside(self, rows: list[int]) -> None:
        """Take these rows out of the batch, each with its state, logits and progress, to wait at the front of
        its group."""
        table, decoder = self._table, self._decoder
        parked = []
        for i in rows:
            row = table.rows[i]
            if row.decoding is None:  # reading its prompt
                forced, logits = table.pool[table.next_forced[i] : table.end_forced[i]].copy(), None
            else:
                table.to_decoding(i)
                forced, logits = None, decoder.logits[i].clone()
            unit = _Parked(row, decoder.row_state(i), logits, forced)
            row.job.rows -= 1
            row.job.parked += 1
            self._release(row.job, unit.width)
            parked.append(unit)
        keep = np.setdiff1d(np.arange(len(table)), rows)
        decoder.keep(keep)
        table.keep(keep)
        for unit in reversed(parked):
            self._waiting.setdefault(_group(unit.job), deque()).appendleft(unit)
        self.rows_put_aside += len(parked)

    def _reserve(self, job: Job, width: int) -> None:
        job.held += width
        key = _group(job)
        self._held[key] = self._held.get(key, 0) + width

    def _release(self, job: Job, width: int) -> None:
        job.held -= width
        key = _group(job)
        left = self._held[key] - width
        if left:
            self._held[key] = left
        else:
            del self._held[key]

    def _start(self, job: Job, alone: bool) -> None:
        if job.cancelled and isinstance(job, GenerationJob):  # (a cancelled task ends at its first chunk)
            self._finish(job, None, None)
            return
        if isinstance(job, GenerationJob):
            rest = len(job.ids) - job.start_at
            # Reading a prompt through the batch pays off when other rows share the steps; alone, or for a
            # long prompt, the model's sequence forward pass reads it faster.
            if rest > self.prefill_chars or (alone and rest > 1):
                # steps: the warm-up, reading all but the prompt's last token as a task
                job.steps = iter_warm(self.model, job.ids[job.start_at : -1], job.start, self.chunk_chars)
            else:
                self._join(job, job.start, job.start_at, job.start_logits)
                return
        self._tasks.append(job)

    def _advance_tasks(self) -> None:
        """Advance tasks a chunk each, round robin; while sequences wait for their next step, stop once
        TASK_BUDGET_S has passed, so many long scoring jobs cannot stall generation (the rest go first next
        turn)."""
        deadline = time.perf_counter() + TASK_BUDGET_S
        for _ in range(len(self._tasks)):
            job = self._tasks.pop(0)
            if not self._advance(job):
                self._tasks.append(job)
            if (self._table.rows or self._joining) and time.perf_counter() > deadline:
                break

    def _advance(self, job: Job) -> bool:
        """One chunk of the task; True once it has ended (finished, failed or cancelled)."""
        steps = job.steps
        if job.cancelled:
            steps.close()
            self._finish(job, None, None)
            return True
        try:
            next(steps)
            return False
        except StopIteration as end:
            result, error = end.value, None
        except Exception as e:  # e.g. a ValueError for text too short: the caller turns it into a 4xx
            result, error = None, e
        if isinstance(job, TaskJob) or error is not None:
            self._finish(job, result, error)
        else:  # a long prompt's warm-up is done: its last character goes through the batch
            state, _ = result
            self._join(job, state, len(job.ids) - 1, None)
        return True

    # -- rows join and leave in bulk ---------------------------------------------------------------------------
    def _join(self, job: GenerationJob, state: State, at: int, logits: torch.Tensor | None) -> None:
        """Queue the job's rows to join at the turn's end: one row reading ids[at:] (then forking into one per
        decoding), or — when the whole prompt is already read — one generating row per decoding."""
        if state is None:
            state = self.model.init_state(1)
        if at < len(job.ids):
            self._joining.append((Row(job, None), state, None, job.ids[at:].numpy().astype(np.int64)))
            return
        for decoding in job.decodings:
            if decoding.done:
                _keep_state(job, decoding, state)
                continue
            self._joining.append((Row(job, decoding), state, logits, None))
        self._check_job_done(job)

    def _flush_joins(self) -> None:
        """Every row queued to join, in one copy per state tensor."""
        if not self._joining:
            return
        joining, self._joining = self._joining, []
        rows = [j[0] for j in joining]
        for row in rows:
            row.job.rows += 1
        self._decoder.add_many([j[1] for j in joining], [j[2] for j in joining])
        self._table.add_many(rows, [j[3] for j in joining])

    # -- a step -------------------------------------------------------------------------------------------------
    def _step(self) -> None:
        table, decoder = self._table, self._decoder
        self.steps += 1
        self.rows_stepped += len(table)
        tokens = decoder.choices.copy()  # the greedy choice for every row: right for all but the rows below
        settle = self._cancelled
        sent = table.reading_rows  # rows whose token is not the greedy choice
        if sent.size:
            at = table.next_forced[sent]
            tokens[sent] = table.pool[at]
            at += 1
            table.next_forced[sent] = at
            settle = settle or bool((at == table.end_forced[sent]).any())
        logits = decoder.logits
        if table.adjusted_rows.size:  # a bias or penalties, all such rows at once; then the argmax or a draw
            logits = table.adjust(logits)
            rows, chosen = table.adjusted_greedy(logits)
            tokens[rows] = chosen
            sent = np.concatenate([sent, rows])
        sampled = table.sampled_rows  # drawn all at once, each by its own settings
        if sampled.size:
            tokens[sampled] = table.sample(logits, self._rng)
            sent = np.concatenate([sent, sampled])
        if table.per_row_rows.size:
            logits, chosen, rows = decoder.logits, [], table.per_row_rows.tolist()
            decodings = [table.rows[i].decoding for i in rows]
            for i, d in zip(rows, decodings):
                if not d.greedy and not d.batch_sampled:
                    tokens[i] = d.choose(logits[i])
                    chosen.append(i)
            infos = dict.fromkeys(rows)  # the logprobs of every row that wants them, made at once
            wanting = [(i, d) for i, d in zip(rows, decodings) if d.top_logprobs is not None]
            if wanting:
                index = [i for i, _ in wanting]
                made = token_infos([d for _, d in wanting], logits[index], tokens[index].tolist())
                infos.update(zip(index, made))
            for i, d in zip(rows, decodings):
                if d.accept(int(tokens[i]), None, infos[i]):
                    settle = True
            if chosen:
                sent = np.concatenate([sent, np.array(chosen, dtype=np.int64)])
        if table.advance_plain(tokens):
            settle = True
        if table.streamed_rows.size:  # streamed text every few steps; a stream's first text at once
            table.release(first_only=self.steps % RELEASE_EVERY_STEPS != 0)
        decoder.step(tokens, sent)
        if settle:  # most steps only advance every row: nothing to settle
            self._settle()

    def _can_burst(self) -> bool:
        """Every row plain greedy with a burst's tokens still to go, and nothing else waiting for the engine."""
        table, k = self._table, self._decoder.burst_steps
        n = len(table)
        return (
            k > 0
            and table.plain_rows.size == n
            and not table.sampled_rows.size
            and not table.stop_rows.size
            and not table.streamed_rows.size
            and not table.adjusted_rows.size
            and not self._waiting
            and not self._tasks
            and not self._cancelled
            and int(table.remaining[:n].min()) > k  # the burst ends none: the last token is read by a step
        )

    def _burst(self) -> None:
        """k greedy steps in one launch (a CUDA graph): plain rows only, none ends inside."""
        read = self._decoder.burst()
        k = len(read)
        self.steps += k
        self.rows_stepped += k * len(self._table)
        self._table.advance_plain_burst(read)

    def _can_go_solo(self) -> bool:
        rows = self._table.rows
        return (
            len(rows) == 1
            and rows[0].decoding is not None
            and not self._tasks
            and not self._waiting
            and not self._joining
            and self._decoder.fast
        )

    def _solo(self) -> None:
        """One generating sequence and nothing else to do: step it with the single-stream decoder (about half
        the per-token cost of a one-row batch step, and the same numbers) until it ends or other work
        arrives, then hand its state back to the batch."""
        table, row = self._table, self._table.rows[0]
        d = row.decoding
        table.to_decoding(0)
        decoder = StepDecoder(self.model, self._decoder.row_state(0), self._decoder.cpu_step)
        already = len(d.generated)
        logits = d.run(decoder, self._decoder.logits[0], lambda: row.job.cancelled or self.interrupt())
        steps = len(d.generated) - already
        self.steps += steps
        self.rows_stepped += steps
        self._decoder.set_row_state(0, decoder.state, logits)
        table.from_decoding(0)
        if d.done or row.job.cancelled:
            self._settle()

    def _settle(self) -> None:
        """After a step: finished prompts fork into their decodings, finished sequences leave (their final
        state read once and cached), cancelled jobs leave."""
        table, decoder = self._table, self._decoder
        cancelled, self._cancelled = self._cancelled, False
        n = len(table)
        leave = np.zeros(n, dtype=bool)
        finished: set[GenerationJob] = set()
        forks: list[tuple[Row, State, torch.Tensor | None, None]] = []
        reading = table.reading_rows
        read = reading[table.next_forced[reading] == table.end_forced[reading]]
        ended = table.ended()
        per_row = [i for i in table.per_row_rows.tolist() if table.rows[i].decoding.done]
        if cancelled:  # only then is every row looked at
            for i, row in enumerate(table.rows):
                if row.job.cancelled:
                    leave[i] = True
                    finished.add(row.job)
        for i in read.tolist():
            row = table.rows[i]
            job = row.job
            if leave[i]:
                continue
            state, next_logits = decoder.row_state(i), decoder.logits[i].clone()
            if self.cache is not None:
                self.cache.put(job.text, state, next_logits, job.root)
            for d in job.decodings:
                if d.done:  # nothing to generate (num_tokens 0)
                    _keep_state(job, d, state)
            live = [d for d in job.decodings if not d.done]
            if live:
                table.start_generating(i, live[0])
                forks += [(Row(job, d), state, next_logits, None) for d in live[1:]]
            else:
                leave[i] = True
                finished.add(job)
        for i in ended.tolist():
            if not leave[i]:
                self._leave(i, table.finish(i), leave, finished)
        for i in per_row:
            if not leave[i]:
                self._leave(i, table.rows[i].decoding, leave, finished)
        if leave.any():
            keep = np.flatnonzero(~leave)
            for i in np.flatnonzero(leave).tolist():
                table.rows[i].job.rows -= 1
            decoder.keep(keep)
            table.keep(keep)
        else:
            table.find_kinds()
        self._joining += forks
        self._flush_joins()
        for job in finished:
            self._check_job_done(job)

    def _leave(self, i: int, decoding, leave: np.ndarray, finished: set) -> None:
        """A finished sequence: its state read once, cached and kept for its token; its row leaves."""
        row = self._table.rows[i]
        state = self._decoder.row_state(i)
        if self.cache is not None:
            self.cache.put(decoding.text_read, state, self._decoder.logits[i].clone(), row.job.root)
        _keep_state(row.job, decoding, state)
        leave[i] = True
        finished.add(row.job)

    def _check_job_done(self, job: GenerationJob) -> None:
        if (job.cancelled or all(d.done for d in job.decodings)) and job.rows == 0 and job.parked == 0:
            self._finish(job, None, None)

    def _finish(self, job: Job, result, error: BaseException | None) -> None:
        if job.held:
            self._release(job, job.held)
        job.on_done(result, error)

    def fail_all(self, error: BaseException, pending: bool = False) -> None:
        """End every running job (and, with ``pending``, every queued one) with ``error``."""
        jobs = {row.job for row in self._table.rows} | set(self._tasks) | {j[0].job for j in self._joining}
        for key, waiting in list(self._waiting.items()):  # rows put aside are running; queued jobs with pending
            jobs |= {u.job for u in waiting if isinstance(u, _Parked)}
            queued = deque(u for u in waiting if not isinstance(u, _Parked))
            if pending:
                jobs |= set(queued)
                queued.clear()
            if queued:
                self._waiting[key] = queued
            else:
                del self._waiting[key]
        self._queued = sum(len(w) for w in self._waiting.values())
        self._tasks, self._joining = [], []
        try:
            self._decoder.keep(np.zeros(0, dtype=np.int64))
        except Exception:  # the device failed: start the batch afresh
            self._decoder = self._new_batch()
        self._table = RowTable(min(self.max_batch, 64))
        for job in jobs:
            self._finish(job, None, error)


def _keep_state(job: GenerationJob, decoding, state: State) -> None:
    """A finished decoding's state after everything it read, when the client asked for it."""
    if job.want_state:
        decoding.final_state = state


class OneAtATime:
    """Batching off (the comparison baseline): each job runs to its end alone, in arrival order, its prompt read
    by the model's sequence forward pass and its tokens one at a time by the single-stream decoder."""

    def __init__(
        self,
        model: RNNLM,
        cache: PrefixCache | None,
        max_queue: int,
        chunk_chars: int,
        interrupt: Callable[[], bool] = lambda: False,
    ):
        self.model = model
        self.cache = cache
        self.max_queue = max_queue
        self.chunk_chars = chunk_chars
        self.interrupt = interrupt  # checked between tokens: the engine reads new messages (cancellations)
        self._pending: deque[Job] = deque()
        self.steps = 0
        self.rows_stepped = 0
        self.batch_rows = 0

    graph_steps = 0
    rows_put_aside = 0

    def submit(self, job: Job) -> None:
        if len(self._pending) >= self.max_queue:
            raise QueueFull
        self._pending.append(job)

    def cancel(self, job: Job) -> None:
        job.cancelled = True

    busy = property(lambda self: bool(self._pending))
    queued = property(lambda self: len(self._pending))

    def run_once(self) -> None:
        job = self._pending.popleft()
        self.batch_rows = 1
        try:
            result = drain(job.steps) if isinstance(job, TaskJob) else self._generate(job)
            job.on_done(result, None)
        except Exception as error:
            job.on_done(None, error)
        finally:
            self.batch_rows = 0

    def _generate(self, job: GenerationJob) -> None:
        state, logits = job.start, job.start_logits
        if logits is None:
            state, logits = drain(iter_warm(self.model, job.ids[job.start_at :], state, self.chunk_chars))
            if self.cache is not None:
                self.cache.put(job.text, state, logits, job.root)

        def stopped() -> bool:
            self.interrupt()  # the engine reads new messages (a cancellation, say) and sends due output
            return job.cancelled

        for d in job.decodings:
            decoder = StepDecoder(self.model, state)  # never None here: iter_warm read at least one id
            step_logits = d.run(decoder, logits, stopped)
            self.steps += len(d.generated)
            self.rows_stepped += len(d.generated)
            if self.cache is not None and d.generated:
                self.cache.put(d.text_read, decoder.state, step_logits.clone(), job.root)
            _keep_state(job, d, decoder.state)

    def fail_all(self, error: BaseException, pending: bool = False) -> None:
        """Between jobs nothing runs: with ``pending``, end every queued job with ``error``."""
        if not pending:
            return
        jobs, self._pending = list(self._pending), deque()
        for job in jobs:
            job.on_done(None, error)
