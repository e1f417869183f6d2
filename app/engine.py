"""The served model: request limits, then one call into the model package per operation.

Routes never touch tensors; they call an :class:`Engine` method (in a worker thread, so the event loop never
blocks) and turn what it returns into a response.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from app.errors import ApiError
from app.settings import Settings
from app.stops import StopScanner
from model import LoadedWeights, Score, load_weights, score, warm
from model.inference import iter_tokens
from model.sampling import Sampler

__all__ = ["Engine", "Generation", "TokenInfo"]


@dataclass
class TokenInfo:
    text: str
    logprob: float | None  # None where nothing predicts the token (a prompt's first character)
    top: dict[str, float] | None = None


@dataclass
class Generation:
    """A running generation: iterate it for the released text pieces; afterwards read the totals."""

    pieces: Iterator[str]
    prefix: str
    unknown_chars: int
    completion: str = ""
    finish_reason: str = "length"
    tokens: list[TokenInfo] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def run(self) -> Generation:
        for _ in self.pieces:
            pass
        return self

    @property
    def num_tokens(self) -> int:
        return len(self.completion)


class Engine:
    def __init__(self, loaded: LoadedWeights, settings: Settings):
        self.loaded = loaded
        self.settings = settings
        self.model = loaded.model
        self.vocab = loaded.vocab

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        return cls(load_weights(settings.weights, device=settings.device), settings)

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

    # -- operations -----------------------------------------------------------------------------------------
    def start_generations(self, prefix: str, num_tokens: int, samplers: list[Sampler], stops: list[str],
                          top_logprobs: int | None = None, param_prefix: str = "prefix",
                          param_tokens: str = "num_tokens") -> list[Generation]:
        """Check limits, warm the state on ``prefix`` once (the slow part, done here), and return one generation
        per sampler, each producing up to ``num_tokens`` characters as it is iterated (generations only read
        the warmed state, so they can share it)."""
        if not prefix:
            raise ApiError(422, f"{param_prefix} must contain at least one character", param_prefix)
        self.check_chars(prefix, param_prefix)
        self.check_tokens(num_tokens, param_tokens)
        self.check_stops(stops)
        ids = self.vocab.encode(prefix)
        unknown = int((ids == 0).sum())
        state, logits = warm(self.model, ids)
        generations = []
        for sampler in samplers:
            generation = Generation(pieces=iter(()), prefix=prefix, unknown_chars=unknown)
            generation.pieces = self._pieces(generation, state, logits, num_tokens, sampler, stops, top_logprobs)
            generations.append(generation)
        return generations

    def start_generation(self, prefix: str, num_tokens: int, sampler: Sampler, stops: list[str]) -> Generation:
        return self.start_generations(prefix, num_tokens, [sampler], stops)[0]

    def _pieces(self, generation: Generation, state, logits, num_tokens: int, sampler: Sampler,
                stops: list[str], top_logprobs: int | None) -> Iterator[str]:
        scanner = StopScanner(stops)
        tokens = iter_tokens(self.model, state, logits, sampler)
        for _ in range(num_tokens):
            token, logits = next(tokens)
            char = self.vocab.tokens[token]
            if top_logprobs is not None:
                generation.tokens.append(self._token_info(char, token, logits, top_logprobs))
            released = scanner.feed(char)
            generation.completion += released
            if released:
                yield released
            if scanner.stopped:
                generation.finish_reason = "stop"
                del generation.tokens[len(generation.completion):]
                return
        tail = scanner.flush()
        generation.completion += tail
        if tail:
            yield tail

    def _token_info(self, char: str, token: int, logits: torch.Tensor, k: int) -> TokenInfo:
        """The chosen character's log-probability (at temperature 1, as completion APIs report it) and the
        k most likely characters'."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        top = None
        if k:
            values, indices = log_probs.topk(min(k, log_probs.numel()))
            top = {self.vocab.tokens[i]: v for i, v in zip(indices.tolist(), values.tolist())}
        return TokenInfo(char, float(log_probs[token]), top)

    def perplexity(self, text: str, context: str | None, return_logprobs: bool,
                   top_k: int = 0) -> tuple[Score, int]:
        """The score of ``text`` (after ``context``) and how many characters of both are outside the vocab."""
        self.check_chars(text, "text")
        self.check_chars(context, "context")
        ids = self.vocab.encode(text)
        context_ids = self.vocab.encode(context) if context else None
        if ids.numel() + (0 if context_ids is None else 1) < 2:
            raise ApiError(422, "text is too short to score: give at least 2 characters, or 1 after a context",
                           "text")
        unknown = int((ids == 0).sum()) + (0 if context_ids is None else int((context_ids == 0).sum()))
        return score(self.model, ids, context_ids, return_logprobs=return_logprobs, top_k=top_k), unknown

    def info(self) -> dict:
        cfg = self.model.config
        return {
            "model": self.settings.model_id,
            "weights": str(self.settings.weights),
            "config": cfg.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": self.vocab.tokens,
            "vocab_size": len(self.vocab),
            "training": self.loaded.training,
            "device": str(self.model.device),
            "limits": {
                "max_num_tokens": self.settings.max_num_tokens,
                "max_text_chars": self.settings.max_text_chars,
                "max_body_bytes": self.settings.max_body_bytes,
                "max_stop_sequences": self.settings.max_stop_sequences,
            },
        }

