"""Inference: warm the latent state on a prefix, greedy generation, and scoring (perplexity).

Scoring reads a text in chunks and carries the state between them, so memory stays constant in the text's
length: only one chunk's (chunk × V) logits exist at a time.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from model.cells import State
from model.decode import StepDecoder
from model.lm import RNNLM
from model.sampling import Sampler, log_probs, top_log_probs

__all__ = ["Score", "drain", "generate", "iter_score", "iter_tokens", "iter_warm", "score", "warm"]

T = TypeVar("T")

DEFAULT_CHUNK = 4096


def _as_batch(ids: Tensor, model: RNNLM) -> Tensor:
    return ids.to(model.device).long().reshape(1, -1)  # (1, T); ids may come as uint8 (a memory-mapped file)


def iter_warm(
    model: RNNLM, ids: Tensor, state: State | None = None, chunk_size: int = DEFAULT_CHUNK
) -> Generator[None, None, tuple[State, Tensor | None]]:
    """:func:`warm` one chunk at a time: yields after each chunk of ``chunk_size`` ids and returns what
    :func:`warm` returns (so a scheduler can interleave a long prefix with other work)."""
    if state is None:
        state = model.init_state(1)
    logits = None
    for chunk in ids.split(chunk_size) if ids.numel() else ():
        with torch.inference_mode():
            out, state = model(_as_batch(chunk, model), state)  # (1, t, V)
        logits = out[0, -1]
        yield
    return state, logits


def warm(
    model: RNNLM, ids: Tensor, state: State | None = None, chunk_size: int = DEFAULT_CHUNK
) -> tuple[State, Tensor | None]:
    """Read ``ids`` (1-D) from ``state`` (zeros when None): the state after the last id, and the logits (V,)
    that state gives for the next token (None when ``ids`` is empty)."""
    return drain(iter_warm(model, ids, state, chunk_size))


def drain(steps: Generator[None, None, T]) -> T:
    """Run a chunk-at-a-time generator to its end and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


@torch.inference_mode()
def generate(
    model: RNNLM, state: State, next_logits: Tensor, num_tokens: int, sampler: Sampler = Sampler()
) -> tuple[list[int], State]:
    """Prediction: choose a token from ``next_logits`` (greedy by default: the argmax, never ``<unk>``), read
    it, repeat ``num_tokens`` times.

    ``state``/``next_logits`` come from :func:`warm`. Returns the generated ids and the state after reading
    them; with ``num_tokens == 0`` nothing is generated and ``state`` comes back as it was.
    """
    out: list[int] = []
    generator = sampler.generator()
    logits = next_logits.reshape(-1)  # (V,)
    decoder = StepDecoder(model, state)
    for _ in range(num_tokens):
        out.append(sampler.choose(logits, generator))
        logits = decoder.step(out[-1])
    return out, decoder.state


def iter_tokens(model: RNNLM, state: State, next_logits: Tensor, sampler: Sampler = Sampler()):
    """Yield ``(token_id, logits)`` without end: the chosen token and the model's scores (V,) it was chosen
    from (valid until the next token is requested). Stop iterating to stop generating."""
    generator = sampler.generator()
    logits = next_logits.reshape(-1)
    decoder = StepDecoder(model, state)
    while True:
        token = sampler.choose(logits, generator)
        yield token, logits
        logits = decoder.step(token)


@dataclass
class Score:
    nll: float  # mean negative log-likelihood, nats per scored token
    num_scored: int
    token_logprobs: list[float] | None = field(default=None, repr=False)
    top_ids: list[list[int]] | None = field(default=None, repr=False)  # per scored token, most likely first
    top_logprobs: list[list[float]] | None = field(default=None, repr=False)
    state: State | None = field(default=None, repr=False)  # with return_state: after the context and every id

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2)


def iter_score(
    model: RNNLM,
    ids: Tensor,
    context_ids: Tensor | None = None,
    *,
    start: State | None = None,
    return_logprobs: bool = False,
    top_k: int = 0,
    return_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Generator[None, None, Score]:
    """:func:`score` one chunk at a time: yields after each chunk and returns the :class:`Score`.

    ``start``, when given, is the state after a text that comes before ``context_ids`` (or before ``ids``
    without a context): reading then continues from it, and without a context it predicts ``ids[0]``, which is
    scored too. With ``return_state`` the score carries the state after the last id as well."""
    ids = ids.reshape(-1)
    first = None  # the scores for ids[0], when something before it predicts it
    if context_ids is not None and context_ids.numel() > 0:
        context_ids = context_ids.reshape(-1)
        state, _ = yield from iter_warm(model, context_ids[:-1], start, chunk_size)
        stream = torch.cat([context_ids[-1:], ids])
    elif start is not None:
        state = start
        with torch.inference_mode():
            first = log_probs(model.next_logits(state)[0])  # (V,)
        stream = ids
    else:
        state = model.init_state(1)
        stream = ids
    num_scored = stream.numel() - 1 + (first is not None)
    if num_scored < 1:
        raise ValueError("nothing to score: the text needs at least 2 characters, or 1 after a context")
    total = torch.zeros((), dtype=torch.float64)
    logprobs: list[Tensor] = []
    top_values: list[Tensor] = []
    top_indices: list[Tensor] = []

    def record(scores: Tensor, targets: Tensor) -> None:  # (t, V) log-probabilities; the targets (t,)
        nonlocal total
        lp = scores.gather(1, targets[:, None]).squeeze(1)  # (t,)
        total += lp.double().sum().cpu()
        if return_logprobs:
            logprobs.append(lp.cpu())
        if top_k:
            values, indices = top_log_probs(scores, top_k)  # (t, k)
            top_values.append(values.cpu())
            top_indices.append(indices.cpu())

    if first is not None:
        record(first[None], stream[:1].to(model.device).long())
    for begin in range(0, stream.numel() - 1, chunk_size):
        targets = stream[begin + 1 : begin + 1 + chunk_size].to(model.device).long()
        last = begin + 1 + targets.numel() == stream.numel()
        # the last chunk reads the last id too when its state is wanted (its scores are not needed)
        inputs = stream[begin : begin + targets.numel() + (last and return_state)]
        with torch.inference_mode():
            logits, state = model(_as_batch(inputs, model), state)  # (1, t, V)
            record(log_probs(logits[0, : targets.numel()]), targets)
        yield
    if return_state and stream.numel() == 1:  # one id, scored from ``start``: it still has to be read
        with torch.inference_mode():
            _, state = model(_as_batch(stream, model), state)
    return Score(
        nll=float(-total / num_scored),
        num_scored=num_scored,
        token_logprobs=torch.cat(logprobs).tolist() if return_logprobs else None,
        top_ids=torch.cat(top_indices).tolist() if top_k else None,
        top_logprobs=torch.cat(top_values).tolist() if top_k else None,
        state=state if return_state else None,
    )


def score(
    model: RNNLM,
    ids: Tensor,
    context_ids: Tensor | None = None,
    *,
    start: State | None = None,
    return_logprobs: bool = False,
    top_k: int = 0,
    return_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Score:
    """Log-likelihood of ``ids`` (1-D). From a zero state the first token only warms the state, so tokens
    2…n are scored; after a non-empty ``context`` (which only warms the state) or from a ``start`` state
    every token is scored. With ``top_k`` > 0, also the k most likely tokens and their log-probabilities at
    each scored position."""
    return drain(
        iter_score(
            model,
            ids,
            context_ids,
            start=start,
            return_logprobs=return_logprobs,
            top_k=top_k,
            return_state=return_state,
            chunk_size=chunk_size,
        )
    )
