"""What a request message becomes in the engine, and what its result answers.

A ``GENERATE`` or ``SCORE`` message becomes the job the scheduler runs: its text encoded, its starting state
opened from the client's state token or found in the prefix cache, its decodings (one per sampler) or its
scoring steps. A finished job becomes its reply: the generations or the score, with the state tokens the client
asked for sealed. The engine's loop (:mod:`app.engine.core`) owns the sockets, the streams and the delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from app import protocol as p
from app.engine.generation import Decoding
from app.engine.jobs import GenerationJob, TaskJob
from app.engine.prefix_cache import PrefixCache
from app.engine.state_tokens import StateCodec, StateTokenError
from model import RNNLM, Score, State, Vocab
from model.inference import iter_score, iter_warm
from model.sampling import Sampler

__all__ = ["Requests"]

OnDone = Callable[[object, BaseException | None], None]
OnPiece = Callable[[str, list[p.TokenInfo]], None]


class Requests:
    """Builds jobs from request messages and replies from finished jobs, for one model; counts what it read."""

    def __init__(
        self,
        model: RNNLM,
        vocab: Vocab,
        cache: PrefixCache | None,
        states: StateCodec,
        chunk_chars: int,
        streams_coalesced: bool = True,
    ):
        self.model = model
        self.vocab = vocab
        self.cache = cache
        self.states = states
        self.chunk_chars = chunk_chars
        self.streams_coalesced = streams_coalesced  # stream_flush_ms > 0: the batch may release text every few steps
        zeros = model.init_state(1)
        self.state_shape = (len(zeros), *zeros[0].shape)  # (tensors, layers, 1, hidden)
        self.chars_read = 0  # characters the model has read for requests: uncached prompts, scored texts
        self.state_tokens_read = 0

    # -- generation -----------------------------------------------------------------------------------------
    def generation(
        self, r: p.GenerateRequest, on_done: OnDone, on_pieces: list[OnPiece] | None, group: Hashable | None
    ) -> GenerationJob:
        """The job for ``r``: one decoding per sampler (streaming through ``on_pieces[i]`` when given), starting
        from the longest cached prefix of the prompt, else the client's state, else zeros."""
        ids = self.vocab.encode(r.prefix)
        start, chars, root = self.open_state(r.state)
        decodings = [
            Decoding(
                r.prefix,
                self.vocab,
                r.num_tokens,
                Sampler(**fields),
                r.stops,
                r.top_logprobs,
                on_pieces[i] if on_pieces else None,
                r.min_tokens,
                ids,
                stream_in_batch=self.streams_coalesced,
            )
            for i, fields in enumerate(r.samplers)
        ]
        job = GenerationJob(
            on_done=on_done,
            text=r.prefix,
            ids=ids,
            decodings=decodings,
            start=start,
            root=root,
            want_state=r.return_state,
            group=group,
        )
        job.chars_before = chars
        if not r.prefix:  # from the state as it is: H_0 = 0 (the notebook's), or the client's
            job.start = self.model.init_state(1) if start is None else start
            with torch.inference_mode():
                job.start_logits = self.model.next_logits(job.start)[0].clone()
        hit = self.cache.lookup(r.prefix, root=root) if self.cache is not None and r.prefix else None
        if hit is not None:  # else job.start stays the client's state, or None: zeros
            job.start, job.start_at = hit.state, hit.length
            if hit.length == len(r.prefix):
                job.start_logits = hit.logits
        job.unknown = self.vocab.count_unknown(ids)
        self.chars_read += len(ids) - job.start_at
        return job

    def generation_reply(self, job: GenerationJob) -> list[p.GenerationResult]:
        out = [d.result(job.start_at, job.unknown) for d in job.decodings]
        for d, result in zip(job.decodings, out):
            if d.final_state is not None:
                result.state_chars = job.chars_before + len(d.prefix) + len(d.generated)
                result.state = self.seal(d.final_state, result.state_chars)
        return out

    # -- scoring --------------------------------------------------------------------------------------------
    def scoring(self, r: p.ScoreRequest, on_done: OnDone) -> TaskJob:
        """The task for ``r``: the context's uncached part read (its state cached), then the text scored."""
        ids = self.vocab.encode(r.text)
        context_ids = self.vocab.encode(r.context) if r.context else None
        unknown = self.vocab.count_unknown(ids) + (0 if context_ids is None else self.vocab.count_unknown(context_ids))
        start, chars, root = self.open_state(r.state)
        cached = 0
        if context_ids is not None and self.cache is not None:
            hit = self.cache.lookup(r.context, max_length=len(r.context) - 1, root=root)
            if hit is not None:
                cached, start = hit.length, hit.state
        job = TaskJob(on_done=on_done, steps=self._score_steps(ids, r, context_ids, cached, start, root))
        job.unknown, job.cached, job.top_k = unknown, cached, r.top_k
        job.chars_after = chars + len(r.text) + (len(r.context) if r.context else 0)
        self.chars_read += len(ids) + (len(context_ids) - cached if context_ids is not None else 0)
        return job

    def _score_steps(self, ids, r: p.ScoreRequest, context_ids, cached: int, start: State | None, root: str):
        """Read the uncached part of the context but its last character from ``start`` (caching the state
        there), then score."""
        chunk = self.chunk_chars
        if context_ids is not None:
            if len(context_ids) - 1 > cached:
                start, logits = yield from iter_warm(self.model, context_ids[cached:-1], start, chunk)
                if self.cache is not None:
                    self.cache.put(r.context[:-1], start, logits, root)
            context_ids = context_ids[-1:]
        return (
            yield from iter_score(
                self.model,
                ids,
                context_ids,
                start=start,
                return_logprobs=r.return_logprobs,
                top_k=r.top_k,
                return_state=r.return_state,
                chunk_size=chunk,
            )
        )

    def score_reply(self, score: Score | None, job: TaskJob) -> p.ScoreResult | None:
        if score is None:  # cancelled
            return None
        top = None
        if job.top_k:
            tokens = self.vocab.tokens
            top = [
                {tokens[t]: v for t, v in zip(ids, values)} for ids, values in zip(score.top_ids, score.top_logprobs)
            ]
        out = p.ScoreResult(score.nll, score.num_scored, score.token_logprobs, top, job.unknown, job.cached)
        if score.state is not None:
            out.state_chars = job.chars_after
            out.state = self.seal(score.state, out.state_chars)
        return out

    # -- state tokens ---------------------------------------------------------------------------------------
    def open_state(self, token: str | None) -> tuple[State | None, int, str]:
        """The state a client's token holds, the characters it has read, and its name in the prefix cache
        (none of them for no token)."""
        if token is None:
            return None, 0, ""
        opened = self.states.open(token)
        values = torch.frombuffer(bytearray(opened.data), dtype=torch.float32)
        if not torch.isfinite(values).all():
            raise StateTokenError(422, "state token holds NaN or infinite values")
        self.state_tokens_read += 1
        state = tuple(values.view(self.state_shape).to(self.model.device, self.model.w_y.dtype).unbind(0))
        return state, opened.chars, opened.tag[:16].hex()

    def seal(self, state: State, chars: int) -> str:
        data = torch.stack([s.detach().float() for s in state]).cpu().contiguous().numpy().tobytes()
        return self.states.seal(chars, data)
