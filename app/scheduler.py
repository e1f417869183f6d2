"""Continuous batching: one thread owns the model and runs every request's work together, step by step.

Each step reads one token for every sequence in the batch with one batched matmul per layer
(:class:`model.batch.BatchDecoder`). A sequence first reads the uncached rest of its prompt (teacher-forced
rows: the next prompt character is its input, and its logits are ignored until the prompt is read), then
generates; sequences join and leave between steps. A prompt whose uncached part is longer than
``prefill_chars``, or any prompt arriving at an idle server, reads all but its last character as a *task* —
chunks of the model's own sequence forward pass, the fastest way to read one text — and so does scoring
(/perplexity). Each loop turn advances every task by one chunk and the batch by one step, so a long scoring
job never stalls generation for long. A lone generating sequence with nothing else to do steps with the
single-stream decoder (:class:`model.decode.StepDecoder`, the same numbers at half the cost) until other work
arrives.

Requests wait in a bounded queue; a full queue refuses new work at once (the client answers 429).

The scheduler has no thread of its own: the engine process's loop (:mod:`app.engine_core`) calls
:meth:`Scheduler.run_once` whenever there is work, between reading new requests from its socket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from app.generation import Decoding
from app.prefix_cache import PrefixCache
from model import RNNLM, State
from model.batch import BatchDecoder
from model.decode import StepDecoder
from model.inference import drain, iter_warm
from model.sampling import greedy_choice

__all__ = ["GenerationJob", "Job", "OneAtATime", "QueueFull", "Scheduler", "TaskJob", "prepare_model_thread"]

logger = logging.getLogger("rnnlm")


# Longest a turn spends on tasks (scoring, long prompts) while generating sequences wait for their next step.
TASK_BUDGET_S = 0.005


class QueueFull(Exception):
    pass


def prepare_model_thread(threads: int, flush_denormal: bool) -> None:
    """Settings that belong to the calling thread, for a thread that runs the model.

    Both are per thread: the FTZ/DAZ bits live in the thread's floating-point control register, and OpenMP's
    thread count is a per-thread setting. Only the engine process calls this: flushing denormals in an HTTP
    process would make a schema-valid 5e-324 compare equal to 0 there.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)


@dataclass(eq=False)
class Job:
    on_done: Callable[[object, BaseException | None], None]  # called once, from the scheduler thread
    cancelled: bool = False
    steps: Generator | None = None  # work done a chunk at a time: yields between chunks, returns the result

    @property
    def width(self) -> int:  # batch rows the job will occupy
        return 0


@dataclass(eq=False)
class TaskJob(Job):
    """Work done a chunk at a time (``steps``) whose result is the job's result: scoring."""


@dataclass(eq=False)
class GenerationJob(Job):
    """A prompt, read once, then one batch row per decoding (OpenAI's ``n`` shares the prompt's state)."""

    text: str = ""
    ids: torch.Tensor | None = None  # the prompt's token ids
    decodings: list[Decoding] = field(default_factory=list)
    start: State | None = None  # the state to start from, after ids[:start_at] (None: zeros)
    start_at: int = 0
    start_logits: torch.Tensor | None = None  # with start_at == len(ids): the next token's scores
    root: str = ""  # what the text is read after, for the prefix cache: "" (zeros) or a state token's name
    want_state: bool = False  # keep each decoding's final state (the client asked for its token)

    @property
    def width(self) -> int:
        return len(self.decodings)


@dataclass(eq=False)
class Row:
    job: GenerationJob
    decoding: Decoding | None  # None while reading the prompt (forced row)
    forced: deque[int] = field(default_factory=deque)  # prompt tokens still to read

    @property
    def reading(self) -> bool:
        return bool(self.forced)


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
        self.vocab_size = model.config.vocab_size
        self._pending: deque[Job] = deque()
        self._tasks: list[Job] = []  # scoring jobs and long-prompt warm-ups, advanced a chunk per turn
        self._rows: list[Row] = []
        self._decoder = BatchDecoder(model)
        self._logits = torch.zeros(0, self.vocab_size, device=model.device)  # (rows, V)
        self.steps = 0  # batch steps run, and the rows they stepped in all (mean batch = rows_stepped / steps)
        self.rows_stepped = 0

    def submit(self, job: Job) -> None:
        if len(self._pending) >= self.max_queue:
            raise QueueFull
        self._pending.append(job)

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._tasks or self._rows)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def batch_rows(self) -> int:
        return len(self._rows)

    def run_once(self) -> None:
        """One turn: admit queued jobs, advance every task a chunk, step the batch once (or run a lone
        sequence until something else needs the engine)."""
        admitted = self._admit()
        try:
            alone = len(admitted) == 1 and not self._rows and not self._tasks
            for job in admitted:
                self._start(job, alone)
            self._advance_tasks()
            if self._can_go_solo():
                self._solo()
            elif self._rows:
                self._step()
        except Exception as error:  # a bug or a device failure: fail what is running, keep serving
            logger.exception("scheduler step failed")
            self.fail_all(error)

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

    def _start(self, job: Job, alone: bool) -> None:
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
            if self._rows and time.perf_counter() > deadline:
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

    def _join(self, job: GenerationJob, state: State, at: int, logits: torch.Tensor | None) -> None:
        """Add the job's rows: one row reading ids[at:] (then forking into one per decoding), or — when the
        whole prompt is already read — one generating row per decoding."""
        if state is None:
            state = self.model.init_state(1)
        forced = job.ids[at:].tolist()
        if forced:
            self._add_row(Row(job, None, deque(forced)), state, None)
            return
        for decoding in job.decodings:
            if decoding.done:
                _keep_state(job, decoding, state)
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
        # Plain numpy for the per-row bookkeeping: a torch call costs several times a numpy one at this size.
        scores = logits.numpy() if logits.device.type == "cpu" else logits.cpu().numpy()
        tokens = greedy_choice(scores)  # the model's greedy rule, on every row at once
        changed = False  # a prompt read to its end, a sequence finished or a job cancelled: settle the batch
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if row.job.cancelled:  # leaves at the settling below; what it reads now does not matter
                changed = True
            elif row.forced:
                tokens[i] = row.forced.popleft()
                changed = changed or not row.forced
            else:
                d = row.decoding
                if not d.greedy:
                    tokens[i] = token = d.choose(logits[i])
                if d.accept(token, logits[i] if d.top_logprobs is not None else None):
                    changed = True
        self._logits = self._decoder.step(torch.from_numpy(tokens))
        if changed:  # most steps only advance every row: nothing to settle
            self._settle(rows)

    def _can_go_solo(self) -> bool:
        rows = self._rows
        return (
            len(rows) == 1
            and rows[0].decoding is not None
            and not rows[0].forced
            and not self._tasks
            and not self._pending
            and self._decoder.fast
        )

    def _solo(self) -> None:
        """One generating sequence and nothing else to do: step it with the single-stream decoder (about half
        the per-token cost of a one-row batch step, and the same numbers) until it ends or other work
        arrives, then hand its state back to the batch."""
        row = self._rows[0]
        d = row.decoding
        decoder = StepDecoder(self.model, self._decoder.row_state(0), self._decoder.cpu_step)
        already = len(d.generated)
        logits = d.run(decoder, self._logits[0], lambda: row.job.cancelled or self.interrupt())
        steps = len(d.generated) - already
        self.steps += steps
        self.rows_stepped += steps
        self._decoder.state = decoder.state
        self._logits = logits.reshape(1, -1).clone()
        self._settle(self._rows)

    def _settle(self, rows: list[Row]) -> None:
        """After a step: finished prompts fork into their decodings, finished sequences leave (their final
        state cached), cancelled jobs leave."""
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
                    self.cache.put(job.text, state, next_logits, job.root)
                for d in job.decodings:
                    if d.done:  # nothing to generate (num_tokens 0)
                        _keep_state(job, d, state)
                live = [d for d in job.decodings if not d.done]
                if live:
                    row.decoding = live[0]
                    keep.append(i)
                    forks += [(Row(job, d), state, next_logits) for d in live[1:]]
                else:
                    finished.add(job)
            elif row.decoding.done:
                state = self._decoder.row_state(i)
                if self.cache is not None:
                    self.cache.put(row.decoding.text_read, state, self._logits[i].clone(), job.root)
                _keep_state(job, row.decoding, state)
                finished.add(job)
            else:
                keep.append(i)
        if len(keep) != len(rows):  # keep is increasing, so equal lengths mean nobody left
            self._rows = [rows[i] for i in keep]
            self._decoder.keep(keep)
            self._logits = self._logits[keep]
        for row, state, next_logits in forks:
            self._add_row(row, state, next_logits)
        for job in finished:
            self._check_job_done(job)

    def _check_job_done(self, job: GenerationJob) -> None:
        if (job.cancelled or all(d.done for d in job.decodings)) and not any(r.job is job for r in self._rows):
            self._finish(job, None, None)

    def _finish(self, job: Job, result, error: BaseException | None) -> None:
        job.on_done(result, error)

    def fail_all(self, error: BaseException, pending: bool = False) -> None:
        """End every running job (and, with ``pending``, every queued one) with ``error``."""
        jobs = {row.job for row in self._rows} | set(self._tasks)
        if pending:
            jobs |= set(self._pending)
            self._pending.clear()
        self._rows, self._tasks = [], []
        self._decoder = BatchDecoder(self.model)
        self._logits = torch.zeros(0, self.vocab_size, device=self.model.device)
        for job in jobs:
            self._finish(job, None, error)


def _keep_state(job: GenerationJob, decoding: Decoding, state: State) -> None:
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

    submit = Scheduler.submit
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
