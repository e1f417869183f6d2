"""Choosing the next token from the model's scores: greedy (temperature 0) or sampled with top-k / top-p,
after the adjustments that are set: OpenAI's ``logit_bias`` (added to a token's logit; −100 or less bans it)
and frequency and presence penalties over the tokens generated so far,
``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``; and CTRL's repetition penalty
(as Hugging Face and vLLM define it) over every token of the prompt and the generated text,
``logit[j] = logit[j] / r if logit[j] > 0 else logit[j] * r``. Sampling may also drop the tokens less likely
than ``min_p`` times the likeliest one.

``<unk>`` (id 0) is never chosen.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LARGE", "MIN_TEMPERATURE", "Sampler", "filter_scores", "sample_rows"]

LARGE = 1e30  # finite bound of an adjusted logit
# Below this, sampling is indistinguishable from argmax and float32 division would overflow: treat as greedy.
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class Sampler:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # nucleus: keep the most likely tokens whose probabilities sum to top_p
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); a bias ≤ -100 bans the token
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1: none
    min_p: float = 0.0  # 0: none

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError("temperature must be a finite number ≥ 0")
        if self.top_k < 0:
            raise ValueError("top_k must be ≥ 0")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2]")
        if not (_positive(self.repetition_penalty) and math.isfinite(self.repetition_penalty)):
            raise ValueError("repetition_penalty must be a finite number > 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if not (_positive(self.top_p) and self.top_p <= 1):
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def adjusts(self) -> bool:
        """Whether the logits are changed before choosing (a bias or a penalty is set)."""
        return (
            bool(self.logit_bias)
            or self.frequency_penalty != 0
            or self.presence_penalty != 0
            or self.repetition_penalty != 1
        )

    @property
    def needs_history(self) -> bool:
        """Whether choosing depends on the tokens seen so far (a penalty)."""
        return self.frequency_penalty != 0 or self.presence_penalty != 0 or self.repetition_penalty != 1

    def adjusted(self, logits: Tensor, counts: Tensor | None, seen: Tensor | None = None) -> Tensor:
        """A float32 CPU copy of ``logits`` with the bias and the penalties applied; ``counts`` (V,) holds how
        often each token has been generated so far, ``seen`` (V, bool) which tokens the prompt or the generated
        text holds."""
        scores = logits.detach().float().cpu().clone()
        if seen is not None and self.repetition_penalty != 1:
            r = self.repetition_penalty
            scores = torch.where(seen, torch.where(scores > 0, scores / r, scores * r), scores)
            scores = scores.clamp(-LARGE, LARGE)  # a tiny r must not make a logit infinite (inf - inf = NaN)
        if counts is not None and (self.frequency_penalty or self.presence_penalty):
            scores -= counts * self.frequency_penalty + (counts > 0).float() * self.presence_penalty
        for token, bias in self.logit_bias:
            scores[token] = -math.inf if bias <= -100 else scores[token] + bias
        return scores

    def generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen

    def choose(
        self,
        logits: Tensor,
        generator: torch.Generator | None = None,
        counts: Tensor | None = None,
        seen: Tensor | None = None,
    ) -> int:
        """The next token id for scores ``logits`` (V,), given how often each token was generated (``counts``)
        and which tokens were seen in the prompt or since (``seen``): the penalties' input."""
        if self.adjusts:
            logits = self.adjusted(logits, counts, seen)
        if self.greedy:
            try:
                return int(greedy_choice(logits.numpy()))  # a CPU tensor: numpy costs a sixth of torch
            except (RuntimeError, TypeError):  # on a GPU, or part of a graph
                return int(greedy_choice(logits))
        # One row's rule, as filter_scores applies it to rows at once; written for one row, because one row at a
        # time (a seeded request, the library's generate) it costs two thirds of filter_scores' time.
        scores = logits.detach().float().cpu().clone()
        scores[0] = -math.inf  # never <unk>
        scores = (scores - scores.max()) / self.temperature  # ≤ 0, finite or -inf: a stable softmax
        if self.top_k and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores[scores < kth] = -math.inf
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            sorted_probs = torch.softmax(sorted_scores, dim=-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # keep the first token over top_p
            drop[0] = False  # the most likely token always stays (top_p may round to 0 in float32)
            scores[order[drop]] = -math.inf
        if self.min_p > 0:  # p_j < min_p * p_max  ⇔  score_j < max score + log(min_p)
            scores[scores < scores.max() + math.log(self.min_p)] = -math.inf
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))


def log_min_p(min_p: float) -> float:
    """The min-p rule's threshold below the likeliest token's score: p_j < min_p * p_max ⇔ score_j < max +
    log(min_p) (-inf for 0: none dropped)."""
    return math.log(min_p) if min_p > 0 else -math.inf


def filter_scores(
    logits: Tensor, temperature: Tensor, top_k: Tensor | None, top_p: Tensor | None, log_min_p: Tensor | None
) -> Tensor:
    """Sampling's rule for rows at once — one row's sampler, or every row of a batch sampled without a seed of
    its own: ``logits`` (k, V) to scores (k, V) whose softmax is the distribution to draw from. Per row:
    ``<unk>`` dropped, divided by ``temperature`` (> 0) after the likeliest is moved to 0 (a stable softmax),
    then the ``top_k`` likeliest kept (0: all), then the fewest likeliest whose probabilities reach ``top_p``
    (1: all; the likeliest always stays), then those ``log_min_p`` or more below the likeliest dropped. A filter
    that no row sets is None."""
    scores = logits.float().clone()
    scores[:, 0] = -math.inf  # never <unk>
    scores = (scores - scores.max(-1, keepdim=True).values) / temperature[:, None]  # ≤ 0, finite or -inf
    vocab = scores.shape[-1]
    if top_k is not None:
        kth = scores.sort(-1, descending=True).values.gather(1, (top_k.clamp(1, vocab) - 1)[:, None])
        limited = ((top_k > 0) & (top_k < vocab))[:, None]
        scores = scores.masked_fill(limited & (scores < kth), -math.inf)
    if top_p is not None:
        sorted_scores, order = scores.sort(-1, descending=True)
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p[:, None]  # keep the first token over top_p
        drop[:, 0] = False  # the most likely token always stays (top_p may round to 0 in float32)
        drop &= (top_p < 1)[:, None]
        scores = scores.scatter(1, order, sorted_scores.masked_fill(drop, -math.inf))
    if log_min_p is not None:  # the likeliest score is 0 by now
        scores = scores.masked_fill(scores < log_min_p[:, None], -math.inf)
    return scores


def sample_rows(
    logits: Tensor,
    temperature: Tensor,
    top_k: Tensor | None,
    top_p: Tensor | None,
    log_min_p: Tensor | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row (k,), drawn from :func:`filter_scores`' distribution with one generator for all."""
    probs = torch.softmax(filter_scores(logits, temperature, top_k, top_p, log_min_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def greedy_choice(scores):
    """Greedy prediction: the argmax over the last axis of scores (…, V) — numpy or torch — never ``<unk>``
    (id 0): ids (…)."""
    return scores[..., 1:].argmax(-1) + 1


def log_probs(logits: Tensor) -> Tensor:
    """``log softmax`` over the last axis, in float32 at least: (…, V)."""
    return torch.log_softmax(logits.float(), dim=-1)


def top_log_probs(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest log-probabilities over the last axis and their ids, most likely first: (…, k) each."""
    return log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)


def _positive(x: float) -> bool:
    """x > 0, read from its bits: with denormals flushed (the engine's threads), ``5e-324 > 0`` is False."""
    return not math.isnan(x) and struct.unpack("<q", struct.pack("<d", x))[0] > 0
