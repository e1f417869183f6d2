"""The served model: request limits, the prefix cache, and the way work reaches the model.

Routes never touch tensors; they await an :class:`Engine` method. With batching on (the default) every request
becomes a job for the :class:`~app.scheduler.Scheduler` thread, which runs all of them together; with batching
off each request runs alone in a worker thread (the comparison baseline). Either way the event loop never
blocks on the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator

from starlette.concurrency import run_in_threadpool

from app.cpus import blas_threads_per_worker, limit_blas_threads, usable_cpus
from app.errors import ApiError
from app.generation import Decoding, Generation
from app.prefix_cache import PrefixCache
from app.scheduler import GenerationJob, QueueFull, Scheduler, TaskJob, prepare_model_thread
from app.settings import Settings
from model import LoadedWeights, Score, load_weights
from model.decode import StepDecoder
from model.inference import drain, iter_score, iter_warm
from model.sampling import Sampler

__all__ = ["Engine", "Generation"]


class Engine:
    def __init__(self, loaded: LoadedWeights, settings: Settings, blas_threads: int = 0):
        self.loaded = loaded
        self.blas_threads = blas_threads  # OpenBLAS threads in effect in this process (0: not set here)
        self.settings = settings
        self.model = loaded.model
        self.vocab = loaded.vocab
        self.cache = (PrefixCache(settings.prefix_cache_entries, int(settings.prefix_cache_mb * 2**20))
                      if settings.prefix_cache_entries > 0 else None)
        self.scheduler = None
        self._alone: set[asyncio.Future] = set()  # batching off: the running requests' worker-thread tasks
        if settings.batching:
            self.scheduler = Scheduler(self.model, self.cache, settings.max_batch_size, settings.max_queue,
                                       settings.flush_denormal, settings.prefill_chars, settings.chunk_chars,
                                       settings.model_threads)
            self.scheduler.start()

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Load the weight file and size this worker's OpenBLAS pool (process-wide: app/cpus.py)."""
        blas = limit_blas_threads(blas_threads_per_worker(settings.blas_threads, settings.workers, usable_cpus()))
        return cls(load_weights(settings.weights, device=settings.device), settings, blas)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    # -- limits ---------------------------------------------------------------------------------------------
    def check_chars(self, value: str | None, param: str) -> None:
        if value is not None and len(value) > self.settings.max_text_chars:
            raise ApiError(422, f"{param} has {len(value):,} characters; the limit is "
                                f"{self.settings.max_text_chars:,}", param)

    def check_tokens(self, n: int, param: str) -> None:
        if n > self.settings.max_num_tokens:
            raise ApiError(422, f"{param} is {n:,}; the limit is {self.settings.max_num_tokens:,}", param)

    def check_stops(self, stops: list[str], param: str = "stop") -> list[str]:
        if len(stops) > self.settings.max_stop_sequences:
            raise ApiError(422, f"at most {self.settings.max_stop_sequences} stop sequences", param)
        for s in stops:
            self.check_chars(s, param)
        return stops

    # -- generation -----------------------------------------------------------------------------------------
    async def generate(self, prefix: str, num_tokens: int, samplers: list[Sampler], stops: list[str],
                       top_logprobs: int | None = None, *, stream: bool = False, param_prefix: str = "prefix",
                       param_tokens: str = "num_tokens") -> list[Generation]:
        """Warm the state on ``prefix`` once and continue it once per sampler, up to ``num_tokens`` characters
        each. Returns the finished generations; with ``stream`` at once, while they run (read
        :meth:`Generation.stream`)."""
        if not prefix:
            raise ApiError(422, f"{param_prefix} must contain at least one character", param_prefix)
        self.check_chars(prefix, param_prefix)
        self.check_tokens(num_tokens, param_tokens)
        self.check_stops(stops)
        ids = self.vocab.encode(prefix)
        unknown = self.vocab.count_unknown(ids)
        loop = asyncio.get_running_loop()
        post = _poster(loop)
        generations = [Generation(prefix, unknown, pieces=asyncio.Queue() if stream else None) for _ in samplers]
        decodings = [Decoding(g, self.vocab, num_tokens, s, stops, top_logprobs, post)
                     for g, s in zip(generations, samplers)]
        done = loop.create_future()
        job = GenerationJob(on_done=_resolver(done, post), text=prefix, ids=ids, decodings=decodings)
        for g in generations:
            g.cancel = lambda: setattr(job, "cancelled", True)
        self._place_prompt(job, generations)
        if self.scheduler is not None:
            self._submit(job)
        else:
            task = asyncio.ensure_future(run_in_threadpool(self._run_alone, job))
            self._alone.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._alone.discard)
        if stream:
            done.add_done_callback(lambda f: f.cancelled() or f.exception())  # errors reach the stream instead
            return generations
        await _wait(done, job)
        return generations

    def _place_prompt(self, job: GenerationJob, generations: list[Generation]) -> None:
        """Where reading the prompt starts: after its longest cached prefix."""
        hit = self.cache.lookup(job.text) if self.cache is not None else None
        if hit is not None:  # else job.start stays None: zeros, made in the model's thread
            job.start, job.start_at = hit.state, hit.length
            if hit.length == len(job.text):
                job.start_logits = hit.logits
        for g in generations:
            g.cached_chars = job.start_at

    def _run_alone(self, job: GenerationJob) -> None:
        """Batching off: the same job, read and generated in this worker thread, one token at a time."""
        try:
            prepare_model_thread(self.settings.model_threads, self.settings.flush_denormal)
            state, logits = job.start, job.start_logits
            if logits is None:
                state, logits = drain(iter_warm(self.model, job.ids[job.start_at :], state,
                                                self.settings.chunk_chars))
                if self.cache is not None:
                    self.cache.put(job.text, state, logits)
            for d in job.decodings:
                decoder = StepDecoder(self.model, state)  # never None here: iter_warm read at least one id
                step_logits = d.run(decoder, logits, lambda: job.cancelled)
                if self.cache is not None and d.generated:
                    self.cache.put(d.text_read, decoder.state, step_logits.clone())
                d.finish()
            job.on_done(None, None)
        except Exception as error:
            for d in job.decodings:
                d.finish(error)
            job.on_done(None, error)

    def _submit(self, job) -> None:
        try:
            self.scheduler.submit(job)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {self.settings.max_queue} requests are already queued; "
                                "retry shortly", headers={"Retry-After": "1"}) from None

    # -- scoring --------------------------------------------------------------------------------------------
    async def perplexity(self, text: str, context: str | None, return_logprobs: bool,
                         top_k: int = 0) -> tuple[Score, int, int]:
        """The score of ``text`` (after ``context``), how many characters of both are outside the vocabulary,
        and how many context characters came from the prefix cache."""
        self.check_chars(text, "text")
        self.check_chars(context, "context")
        ids = self.vocab.encode(text)
        context_ids = self.vocab.encode(context) if context else None
        if ids.numel() + (0 if context_ids is None else 1) < 2:
            raise ApiError(422, "text is too short to score: give at least 2 characters, or 1 after a context",
                           "text")
        unknown = self.vocab.count_unknown(ids) + (0 if context_ids is None else self.vocab.count_unknown(context_ids))
        cached = 0
        state = None
        if context_ids is not None and self.cache is not None:
            hit = self.cache.lookup(context, max_length=len(context) - 1)
            if hit is not None:
                cached, state = hit.length, hit.state
        steps = self._score_steps(ids, context, context_ids, cached, state, return_logprobs, top_k)
        loop = asyncio.get_running_loop()
        if self.scheduler is None:
            result = await run_in_threadpool(self._drain_alone, steps)
        else:
            done = loop.create_future()
            job = TaskJob(on_done=_resolver(done, _poster(loop)), steps=steps)
            self._submit(job)
            result = await _wait(done, job)
        return result, unknown, cached

    def _score_steps(self, ids, context, context_ids, cached: int, state, return_logprobs: bool,
                     top_k: int) -> Generator[None, None, Score]:
        """Read the uncached part of the context (caching the state before its last character), then score."""
        chunk = self.settings.chunk_chars
        if context_ids is not None:
            if len(context_ids) - 1 > cached:
                state, logits = yield from iter_warm(self.model, context_ids[cached:-1], state, chunk)
                if self.cache is not None:
                    self.cache.put(context[:-1], state, logits)
            elif state is None:
                state = self.model.init_state(1)  # a one-character context: nothing to read before it
        return (yield from iter_score(self.model, ids, context_ids, state=state, return_logprobs=return_logprobs,
                                      top_k=top_k, chunk_size=chunk))

    def _drain_alone(self, steps):
        prepare_model_thread(self.settings.model_threads, self.settings.flush_denormal)
        return drain(steps)

    # -- description ----------------------------------------------------------------------------------------
    def info(self) -> dict:
        cfg = self.model.config
        s = self.settings
        return {
            "model": s.model_id,
            "weights": str(s.weights),
            "config": cfg.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": self.vocab.tokens,
            "vocab_size": len(self.vocab),
            "training": self.loaded.training,
            "device": str(self.model.device),
            "limits": {
                "max_num_tokens": s.max_num_tokens,
                "max_text_chars": s.max_text_chars,
                "max_body_bytes": s.max_body_bytes,
                "max_stop_sequences": s.max_stop_sequences,
            },
            "serving": {
                "batching": s.batching,
                "max_batch_size": s.max_batch_size,
                "max_queue": s.max_queue,
                "prefix_cache_entries": s.prefix_cache_entries,
                "workers": s.workers,
                "blas_threads": self.blas_threads,
            },
        }


def _poster(loop: asyncio.AbstractEventLoop) -> Callable[[Callable, object], None]:
    """Run ``fn(arg)`` on ``loop`` from any thread (a no-op once the loop has closed)."""
    def post(fn: Callable, arg: object = None) -> None:
        try:
            loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: the client has gone
            pass
    return post


def _resolver(future: asyncio.Future, post) -> Callable[[object, BaseException | None], None]:
    def settle(pair: tuple) -> None:
        result, error = pair
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    return lambda result, error: post(settle, (result, error))


async def _wait(done: asyncio.Future, job) -> object:
    """Await the job; if the client goes away first (the handler is cancelled), cancel the job."""
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    except ValueError as e:  # the model package's own checks, e.g. nothing to score
        raise ApiError(422, str(e)) from None
