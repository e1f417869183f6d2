"""Continuous batching: one thread owns the model and runs every request's work together, step by step.

Each step reads one token for every sequence in the batch with one batched matmul per layer
(:class:`model.batch.BatchDecoder`). A sequence first reads the uncached rest of its prompt (teacher-forced
rows: the next prompt character is its input, and its logits are ignored until the prompt is read), then
generates; sequences join and leave between steps. Prompts whose uncached part is longer than ``prefill_chars``
read all but their last character as a *task* — chunks of the model's own sequence forward pass, the fastest
way to read one long text — and so does scoring (/perplexity). Each loop turn advances every task by one chunk
and the batch by one step, so a long scoring job never stalls generation for long.

Requests wait in a bounded queue; a full queue refuses new work at once (the route answers 429).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from app.generation import Decoding
from app.prefix_cache import PrefixCache
from model import RNNLM, State
from model.batch import BatchDecoder

__all__ = ["GenerationJob", "QueueFull", "Scheduler", "TaskJob"]

logger = logging.getLogger("rnnlm")


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Job:
    on_done: Callable[[object, BaseException | None], None]  # called once, from the scheduler thread
    cancelled: bool = False

    @property
    def width(self) -> int:  # batch rows the job will occupy
        return 0


@dataclass(eq=False)
class TaskJob(Job):
    """Work done a chunk at a time: a generator that yields between chunks and returns the result."""

    steps: Generator | None = None


@dataclass(eq=False)
class GenerationJob(Job):
    """A prompt, read once, then one batch row per decoding (OpenAI's ``n`` shares the prompt's state)."""

    text: str = ""
    ids: torch.Tensor | None = None  # the prompt's token ids
    decodings: list[Decoding] = field(default_factory=list)
    start: State | None = None  # the state to start from, after ids[:start_at]
    start_at: int = 0
    start_logits: torch.Tensor | None = None  # with start_at == len(ids): the next token's scores
    warmup: Generator | None = None  # for long prompts: reads all but the last prompt token first, as a task

    @property
    def width(self) -> int:
        return len(self.decodings)


@dataclass(eq=False)
class Row:
    job: GenerationJob
    decoding: Decoding | None  # None while reading the prompt (forced row)
    forced: list[int] = field(default_factory=list)  # prompt tokens still to read

    @property
    def reading(self) -> bool:
        return bool(self.forced)


class Scheduler:
    def __init__(self, model: RNNLM, cache: PrefixCache | None, max_batch: int, max_queue: int,
                 flush_denormal: bool):
        self.model = model
        self.cache = cache
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.flush_denormal = flush_denormal
        self.vocab_size = model.config.vocab_size
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._tasks: list[Job] = []  # scoring jobs and long-prompt warm-ups, advanced a chunk per turn
        self._rows: list[Row] = []
        self._decoder = BatchDecoder(model)
        self._logits = torch.zeros(0, self.vocab_size, device=model.device)  # (rows, V)
        self.steps = 0  # batch steps run, and the rows they stepped in all (mean batch = rows_stepped / steps)
        self.rows_stepped = 0
        self._thread = threading.Thread(target=self._run, name="rnnlm-scheduler", daemon=True)

    # -- client side (any thread) ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def batch_rows(self) -> int:
        return len(self._rows)

    # -- the scheduler thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_flush_denormal(self.flush_denormal)  # per thread: the FTZ/DAZ bits live in this thread
        while True:
            with self._cond:
                while not (self._stopped or self._pending or self._tasks or self._rows):
                    self._cond.wait()
                if self._stopped:
                    break
                admitted = self._admit()
            try:
                for job in admitted:
                    self._start(job)
                self._advance_tasks()
                if self._rows:
                    self._step()
            except Exception as error:  # a bug or a device failure: fail what is running, keep serving
                logger.exception("scheduler step failed")
                self._fail_all(error)
        self._fail_all(RuntimeError("the server is shutting down"), pending=True)

    def _admit(self) -> list[Job]:
        """Take queued jobs while the batch has room (tasks take no rows, but at most max_batch at once)."""
        busy = len(self._rows) + sum(j.width for j in self._tasks if isinstance(j, GenerationJob))
        out = []
        while self._pending:
            job = self._pending[0]
            if isinstance(job, TaskJob):
                if len(self._tasks) >= self.max_batch:
                    break
            elif busy and busy + job.width > self.max_batch:
                break
            busy += job.width
            out.append(self._pending.popleft())
        return out

    def _start(self, job: Job) -> None:
        if isinstance(job, TaskJob) or (isinstance(job, GenerationJob) and job.warmup is not None):
            self._tasks.append(job)
        else:
            self._join(job, job.start, job.start_at, job.start_logits)

    def _advance_tasks(self) -> None:
        for job in list(self._tasks):
            steps = job.steps if isinstance(job, TaskJob) else job.warmup
            if job.cancelled:
                self._tasks.remove(job)
                steps.close()
                self._finish(job, None, None)
                continue
            try:
                next(steps)
                continue
            except StopIteration as end:
                result, error = end.value, None
            except Exception as e:  # e.g. a ValueError for text too short: the caller turns it into a 4xx
                result, error = None, e
            self._tasks.remove(job)
            if isinstance(job, TaskJob) or error is not None:
                self._finish(job, result, error)
            else:  # a long prompt's warm-up is done: its last characters go through the batch
                state, _ = result
                self._join(job, state, len(job.ids) - 1, None)

    def _join(self, job: GenerationJob, state: State, at: int, logits: torch.Tensor | None) -> None:
        """Add the job's rows: one row reading ids[at:] (then forking into one per decoding), or — when the
        whole prompt is already read — one generating row per decoding."""
        forced = job.ids[at:].tolist()
        if forced:
            self._add_row(Row(job, None, forced), state, None)
            return
        for decoding in job.decodings:
            if decoding.done:
                continue
            self._add_row(Row(job, decoding), state, logits)
        self._check_job_done(job)

    def _add_row(self, row: Row, state: State, logits: torch.Tensor | None) -> None:
        self._decoder.add(state)
        new = torch.zeros(1, self.vocab_size, device=self._logits.device) if logits is None else logits.reshape(1, -1)
        self._logits = torch.cat([self._logits, new.to(self._logits.device, self._logits.dtype)])
        self._rows.append(row)

    def _step(self) -> None:
        rows, logits = self._rows, self._logits
        self.steps += 1
        self.rows_stepped += len(rows)
        greedy = (logits[:, 1:].argmax(dim=1) + 1).tolist()  # never <unk> (id 0)
        tokens = []
        for i, row in enumerate(rows):
            if row.reading:
                tokens.append(row.forced.pop(0))
            elif row.job.cancelled:
                tokens.append(greedy[i])
            else:
                d = row.decoding
                token = greedy[i] if d.greedy else d.choose(logits[i])
                d.accept(token, logits[i])
                tokens.append(token)
        self._logits = self._decoder.step(torch.tensor(tokens, dtype=torch.long))

        keep: list[int] = []
        forks: list[tuple[Row, State, torch.Tensor]] = []
        finished: set[GenerationJob] = set()
        for i, row in enumerate(rows):
            job = row.job
            if job.cancelled:
                finished.add(job)
                continue
            if row.decoding is None:  # a prompt row
                if row.reading:
                    keep.append(i)
                    continue
                state, next_logits = self._decoder.row_state(i), self._logits[i].clone()
                if self.cache is not None:
                    self.cache.put(job.text, state, next_logits)
                live = [d for d in job.decodings if not d.done]
                if live:
                    row.decoding = live[0]
                    keep.append(i)
                    forks += [(Row(job, d), state, next_logits) for d in live[1:]]
                else:
                    finished.add(job)
            elif row.decoding.done:
                if self.cache is not None:
                    self.cache.put(row.decoding.text_read, self._decoder.row_state(i), self._logits[i].clone())
                finished.add(job)
            else:
                keep.append(i)
        self._rows = [rows[i] for i in keep]
        self._decoder.keep(keep)
        self._logits = self._logits[keep] if len(keep) != len(rows) else self._logits
        for row, state, next_logits in forks:
            self._add_row(row, state, next_logits)
        for job in finished:
            self._check_job_done(job)

    def _check_job_done(self, job: GenerationJob) -> None:
        if job.cancelled and not any(r.job is job for r in self._rows):
            self._finish(job, None, None)
        elif all(d.done for d in job.decodings) and not any(r.job is job for r in self._rows):
            self._finish(job, None, None)

    def _finish(self, job: Job, result, error: BaseException | None) -> None:
        if isinstance(job, GenerationJob):
            for d in job.decodings:
                d.finish(error)
        job.on_done(result, error)

    def _fail_all(self, error: BaseException, pending: bool = False) -> None:
        jobs = {row.job for row in self._rows} | set(self._tasks)
        if pending:
            with self._cond:
                jobs |= set(self._pending)
                self._pending.clear()
        self._rows, self._tasks = [], []
        self._decoder = BatchDecoder(self.model)
        self._logits = torch.zeros(0, self.vocab_size, device=self.model.device)
        for job in jobs:
            self._finish(job, None, error)
