"""One generated sequence: how its next token is chosen, when it ends, and what the client receives.

Both ways of running the model — the continuous-batching scheduler and one request alone — drive a
:class:`Decoding` the same way: ``token = choose(logits)``, then ``accept(token, logits)``, then read the token.
So stop sequences, logprobs and streaming behave identically whichever runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from app.stops import StopScanner
from model import Vocab
from model.decode import StepDecoder
from model.sampling import Sampler

__all__ = ["Decoding", "Generation", "TokenInfo"]

_END = object()


@dataclass
class TokenInfo:
    text: str
    logprob: float | None  # None where nothing predicts the token (a prompt's first character)
    top: dict[str, float] | None = None


@dataclass
class Generation:
    """What a client gets back: the released text so far and, at the end, the totals."""

    prefix: str
    unknown_chars: int
    cached_chars: int = 0  # characters of the prefix whose state came from the prefix cache
    completion: str = ""
    finish_reason: str = "length"
    tokens: list[TokenInfo] = field(default_factory=list)
    pieces: asyncio.Queue | None = None  # streaming only: released text, then the end marker
    cancel: Callable[[], None] = lambda: None  # stop generating (the client has gone)

    @property
    def num_tokens(self) -> int:
        return len(self.completion)

    async def stream(self) -> AsyncIterator[str]:
        """Streaming: each piece of text as it is released; raises if the generation failed."""
        while (piece := await self.pieces.get()) is not _END:
            if isinstance(piece, BaseException):
                raise piece
            yield piece


class Decoding:
    """Chooses one sequence's tokens and applies its length limit, stop sequences and logprobs."""

    def __init__(self, generation: Generation, vocab: Vocab, num_tokens: int, sampler: Sampler,
                 stops: list[str], top_logprobs: int | None, post: Callable[[Callable, object], None]):
        self.generation = generation
        self.vocab = vocab
        self.remaining = num_tokens
        self.sampler = sampler
        self.greedy = sampler.greedy
        self.rng = sampler.generator()
        self.scanner = StopScanner(stops)
        self.top_logprobs = top_logprobs
        self.post = post  # runs a callback on the client's event loop (thread-safe)
        self.generated: list[int] = []  # every token read, also past a stop sequence (the state has read them)
        self.done = num_tokens == 0
        # Nothing to do per token but count: no stop sequences, no logprobs, no stream. The completion is
        # decoded once at the end (the batch's per-row bookkeeping is a large part of a step's Python).
        self.plain = not self.scanner.stops and top_logprobs is None and generation.pieces is None

    def choose(self, logits: torch.Tensor) -> int:
        return self.sampler.choose(logits, self.rng)

    def run(self, decoder: StepDecoder, logits: torch.Tensor, interrupted: Callable[[], bool]) -> torch.Tensor:
        """Generate alone, one token at a time with ``decoder`` from ``logits`` (the next token's scores),
        until done or ``interrupted()``; returns the scores after the last token read."""
        while not self.done and not interrupted():
            token = self.choose(logits)
            self.accept(token, logits if self.top_logprobs is not None else None)
            logits = decoder.step(token)
        return logits

    def accept(self, token: int, logits: torch.Tensor | None) -> bool:
        """Record ``token`` (chosen from ``logits``, needed only for logprobs); True once the sequence is
        finished."""
        if self.plain:
            self.generated.append(token)
            self.remaining -= 1
            if self.remaining <= 0:
                self.generation.completion = self.vocab.decode(self.generated)
                self.done = True
            return self.done
        g = self.generation
        char = self.vocab.tokens[token]
        self.generated.append(token)
        self.remaining -= 1
        if self.top_logprobs is not None:
            g.tokens.append(self._token_info(char, token, logits))
        released = self.scanner.feed(char)
        if self.scanner.stopped:
            g.finish_reason = "stop"
            del g.tokens[len(g.completion) + len(released):]
            self.done = True
        elif self.remaining <= 0:
            released += self.scanner.flush()
            self.done = True
        if released:
            g.completion += released
            if g.pieces is not None:
                self.post(g.pieces.put_nowait, released)
        return self.done

    def finish(self, error: BaseException | None = None) -> None:
        """Close the stream (streaming only), with ``error`` when the generation failed."""
        if self.generation.pieces is not None:
            if error is not None:
                self.post(self.generation.pieces.put_nowait, error)
            self.post(self.generation.pieces.put_nowait, _END)

    def _token_info(self, char: str, token: int, logits: torch.Tensor) -> TokenInfo:
        """The chosen character's log-probability (at temperature 1, as completion APIs report it) and the
        k most likely characters'."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        top = None
        if self.top_logprobs:
            values, indices = log_probs.topk(min(self.top_logprobs, log_probs.numel()))
            top = {self.vocab.tokens[i]: v for i, v in zip(indices.tolist(), values.tolist())}
        return TokenInfo(char, float(log_probs[token]), top)

    @property
    def text_read(self) -> str:
        """The prefix and every generated character: what the sequence's state has read."""
        return self.generation.prefix + self.vocab.decode(self.generated)
