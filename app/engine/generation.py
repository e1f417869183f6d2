"""One generated sequence, in the engine: how its next token is chosen, when it ends, and what it releases.

Both ways the engine runs a sequence — in the continuous batch and alone — drive a :class:`Decoding` the same
way: ``token = choose(logits)``, then ``accept(token, logits)``, then read the token. So stop sequences,
logprobs and streaming behave identically whichever runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.engine.stops import StopScanner
from app.protocol import GenerationResult, TokenInfo
from model import Vocab
from model.decode import StepDecoder
from model.sampling import Sampler, log_probs, top_log_probs

__all__ = ["Decoding", "token_infos"]


class Decoding:
    """Chooses one sequence's tokens and applies its length limit, stop sequences and logprobs.

    ``on_piece(text, infos)``, when given (streaming), receives each piece of released text and, with
    logprobs, the :class:`TokenInfo` of its characters."""

    def __init__(
        self,
        prefix: str,
        vocab: Vocab,
        num_tokens: int,
        sampler: Sampler,
        stops: list[str],
        top_logprobs: int | None,
        on_piece: Callable[[str, list[TokenInfo]], None] | None = None,
        min_tokens: int = 0,
        prefix_ids: torch.Tensor | None = None,
        stream_in_batch: bool = False,
    ):
        self.prefix = prefix
        self.vocab = vocab
        self.remaining = num_tokens
        self.sampler = sampler
        self.greedy = sampler.greedy and not sampler.adjusts  # the batch's shared argmax is right for it
        # sampled with no seed and nothing adjusted: the batch draws its token with the other such rows, from
        # one generator (the same distribution as a generator of its own)
        self.batch_sampled = not sampler.greedy and not sampler.adjusts and sampler.seed is None
        # a bias or penalties, and no generator of its own: the batch adjusts its scores with the other such rows'
        # (rows.py), then takes the argmax or draws with the batch's generator
        self.batch_adjusted = sampler.adjusts and (sampler.greedy or sampler.seed is None)
        self.rng = sampler.generator()
        # how often each token has been generated, and which the prompt or the output holds: the penalties' input
        self.counts = torch.zeros(len(vocab)) if sampler.needs_history else None
        self.seen = None
        if sampler.repetition_penalty != 1:
            self.seen = torch.zeros(len(vocab), dtype=torch.bool)
            if prefix_ids is not None and prefix_ids.numel():
                self.seen[prefix_ids] = True
        self.scanner = StopScanner(stops)
        self.min_tokens = min_tokens  # stop sequences count only once this many characters have been generated
        self.top_logprobs = top_logprobs
        self.on_piece = on_piece
        self.completion = ""
        self.finish_reason = "length"
        self.tokens: list[TokenInfo] = []
        self.generated: list[int] = []  # every token read, also past a stop sequence (the state has read them)
        self.done = num_tokens == 0
        self.final_state = None  # the state after text_read, when the request asked for it (set by the scheduler)
        # Nothing to do per token but count: no stop sequences, no logprobs, no stream. The completion is
        # decoded once at the end (the batch's per-row bookkeeping is a large part of a step's Python).
        self.plain = not self.scanner.stops and top_logprobs is None and on_piece is None
        # streamed, no logprobs, and text coalesced by time anyway: the batch releases its text every few steps
        # from its arrays (rows.py) instead of a piece per token
        self.batch_stream = stream_in_batch and on_piece is not None and top_logprobs is None

    def choose(self, logits: torch.Tensor) -> int:
        return self.sampler.choose(logits, self.rng, self.counts, self.seen)

    def run(self, decoder: StepDecoder, logits: torch.Tensor, interrupted: Callable[[], bool]) -> torch.Tensor:
        """Generate alone, one token at a time with ``decoder`` from ``logits`` (the next token's scores),
        until done or ``interrupted()``; returns the scores after the last token read."""
        while not self.done and not interrupted():
            token = self.choose(logits)
            self.accept(token, logits if self.top_logprobs is not None else None)
            logits = decoder.step(token)
        return logits

    def accept(self, token: int, logits: torch.Tensor | None, info: TokenInfo | None = None) -> bool:
        """Record ``token`` (chosen from ``logits``, needed only for logprobs — or its ``info`` made already,
        with the batch's other rows': :func:`token_infos`); True once the sequence is finished."""
        self.generated.append(token)
        self.remaining -= 1
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True
        if self.plain:
            if self.remaining <= 0:
                self.finish(self.generated)
            return self.done
        char = self.vocab.tokens[token]
        if self.top_logprobs is not None:
            self.tokens.append(info if info is not None else self._token_info(char, token, logits))
        released = self.scanner.feed(char) if len(self.generated) > self.min_tokens else char
        if self.scanner.stopped:
            self.finish_reason = "stop"
            del self.tokens[len(self.completion) + len(released) :]
            self.done = True
        elif self.remaining <= 0:
            released += self.scanner.flush()
            self.done = True
        if released:
            start = len(self.completion)
            self.completion += released
            if self.on_piece is not None:
                self.on_piece(released, self.tokens[start : start + len(released)])
        return self.done

    def finish(self, generated: list[int], stop_len: int = 0) -> None:
        """A plain sequence that the batch generated in its arrays: every token at once, decoded once; with
        ``stop_len``, the last that many tokens are the stop sequence that ended it (not in the completion)."""
        self.generated = generated
        self.remaining = 0
        self.completion = self.vocab.decode(generated[: len(generated) - stop_len])
        if stop_len:
            self.finish_reason = "stop"
        self.done = True

    def replay(self, generated: list[int], remaining: int) -> None:
        """Take the progress of a sequence the batch ran in its arrays (``generated`` so far, ``remaining``
        still to go, no stop found): its tokens accepted again, so stop scanning goes on where it was (a stream's
        text was released by the batch already: nothing is sent again)."""
        on_piece, self.on_piece = self.on_piece, None
        self.generated, self.completion, self.remaining = [], "", remaining + len(generated)
        self.scanner = StopScanner(self.scanner.stops)
        for token in generated:
            self.accept(token, None)
        self.on_piece = on_piece

    def result(self, cached_chars: int, unknown_chars: int) -> GenerationResult:
        """The result without its state token, which the engine seals from ``final_state``."""
        stop_reason = self.generated_text[len(self.completion) :] if self.finish_reason == "stop" else None
        return GenerationResult(
            self.completion, self.finish_reason, self.tokens, cached_chars, unknown_chars, stop_reason
        )

    def _token_info(self, char: str, token: int, logits: torch.Tensor) -> TokenInfo:
        """The chosen character's log-probability (at temperature 1, as completion APIs report it) and the
        k most likely characters'."""
        scores = log_probs(logits)
        top = None
        if self.top_logprobs:
            values, indices = top_log_probs(scores, self.top_logprobs)
            top = {self.vocab.tokens[i]: v for i, v in zip(indices.tolist(), values.tolist())}
        return TokenInfo(char, float(scores[token]), top)

    @property
    def generated_text(self) -> str:
        """Every generated character: the completion, and the stop sequence that ended it."""
        return self.vocab.decode(self.generated)

    @property
    def text_read(self) -> str:
        """The prefix and every generated character: what the sequence's state has read."""
        return self.prefix + self.generated_text


def token_infos(decodings: list[Decoding], logits: torch.Tensor, tokens: list[int]) -> list[TokenInfo]:
    """Each decoding's :class:`TokenInfo` for its chosen token (``tokens[j]``) from its row of ``logits`` (k, V),
    as :meth:`Decoding._token_info` makes one: one log-softmax and one top-k for all the rows."""
    scores = log_probs(logits)
    chosen = scores.gather(1, torch.tensor(tokens, device=scores.device)[:, None])[:, 0].tolist()
    most = max(d.top_logprobs for d in decodings)
    values, indices = top_log_probs(scores, most) if most else (None, None)
    values, indices = (values.tolist(), indices.tolist()) if most else (None, None)
    infos = []
    for j, (d, token) in enumerate(zip(decodings, tokens)):
        top = None
        if d.top_logprobs:
            names = d.vocab.tokens
            top = {names[i]: v for i, v in zip(indices[j][: d.top_logprobs], values[j][: d.top_logprobs])}
        infos.append(TokenInfo(d.vocab.tokens[token], chosen[j], top))
    return infos
