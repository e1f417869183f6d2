import math

import pytest
import torch

from model.sampling import Sampler, filter_scores, sample_rows

LOGITS = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.5, -1.0, -3.0])  # id 0 (<unk>) is the largest on purpose


def draws(sampler: Sampler, n: int = 2000) -> list[int]:
    gen = sampler.generator()
    return [sampler.choose(LOGITS, gen) for _ in range(n)]


def test_greedy_is_the_argmax_without_unk():
    assert Sampler().choose(LOGITS) == 1
    assert Sampler(temperature=0.0).greedy


def test_sampling_never_returns_unk_and_is_repeatable_with_a_seed():
    a = draws(Sampler(temperature=2.0, seed=5))
    assert 0 not in a
    assert a == draws(Sampler(temperature=2.0, seed=5))
    assert a != draws(Sampler(temperature=2.0, seed=6))


def test_top_k_samples_only_the_k_most_likely():
    assert set(draws(Sampler(temperature=5.0, top_k=3, seed=0))) == {1, 2, 3}
    assert set(draws(Sampler(temperature=5.0, top_k=1, seed=0), 200)) == {1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS[1:], 0)  # over the real tokens (ids 1..6), already sorted
    cumulative = probs.cumsum(0)
    p = float(cumulative[2] - 1e-4)  # needs the first three tokens
    assert set(draws(Sampler(temperature=1.0, top_p=p, seed=1))) == {1, 2, 3}


def test_sample_frequencies_follow_the_softmax_at_the_temperature():
    temperature = 1.5
    counts = torch.bincount(torch.tensor(draws(Sampler(temperature=temperature, seed=2), 20_000)), minlength=7)
    expected = torch.softmax(LOGITS[1:] / temperature, 0)
    observed = counts[1:] / counts.sum()
    assert torch.allclose(observed, expected, atol=0.015)


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1), dict(temperature=math.nan), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Sampler(**bad)


def test_a_tiny_temperature_is_greedy_and_never_nan():
    assert Sampler(temperature=1e-300, seed=0).choose(LOGITS) == 1
    assert Sampler(temperature=1.0, top_p=5e-324, seed=0).choose(LOGITS) == 1


def test_a_tiny_repetition_penalty_leaves_the_logits_finite_and_sampling_works():
    """Found by schemathesis: r = 5e-324 made logits / r infinite and the softmax NaN (a 500)."""
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5, 3.0])
    seen = torch.tensor([False, True, True, False, True])
    for r in (5e-324, 1e-30, 0.01):
        sampler = Sampler(temperature=1.0, repetition_penalty=r, seed=0)
        scores = sampler.adjusted(logits, None, seen)
        assert torch.isfinite(scores).all()
        assert sampler.choose(logits, sampler.generator(), None, seen) in (1, 4)  # the boosted positive ones


def reference_probs(logits: list[float], temperature: float, top_k: int, top_p: float, min_p: float) -> list[float]:
    """The sampling rule written out for one row in plain Python (float64), independent of the library's."""
    scores = [-math.inf] + [x / temperature for x in logits[1:]]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    keep = set(order)
    if 0 < top_k < len(scores):
        kth = scores[order[top_k - 1]]
        keep = {j for j in keep if scores[j] >= kth}
    if top_p < 1:
        total = sum(weights[j] for j in keep)
        kept, mass = set(), 0.0
        for j in (j for j in order if j in keep):
            kept.add(j)
            mass += weights[j] / total
            if mass >= top_p:
                break
        keep = kept
    if min_p > 0:
        keep = {j for j in keep if weights[j] >= min_p}  # weights[likeliest] = 1
    total = sum(weights[j] for j in keep)
    return [weights[j] / total if j in keep else 0.0 for j in range(len(scores))]


def test_rows_filtered_at_once_each_follow_their_own_settings():
    """sample_rows' distribution for a batch of rows, each with other settings, is the rule written out per row."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 30, generator=generator) * 2.5
    temperatures, top_ks, top_ps, min_ps = [0.5, 1.0, 1.7, 3.0], [0, 1, 5, 12, 40], [1, 0.9, 0.5, 0.2], [0, 0.05, 0.3]
    settings = [(temperatures[i % 4], top_ks[i % 5], top_ps[i // 2 % 4], min_ps[i % 3]) for i in range(40)]
    temperature, top_k, top_p, min_p = (torch.tensor(column) for column in zip(*settings))
    log_min_p = torch.tensor([math.log(m) if m else -math.inf for m in min_p.tolist()])
    probs = torch.softmax(filter_scores(logits, temperature.float(), top_k, top_p.float(), log_min_p.float()), -1)
    for i, (t, k, p, m) in enumerate(settings):
        expected = reference_probs(logits[i].tolist(), t, k, p, m)
        assert probs[i].tolist() == pytest.approx(expected, abs=1e-5), (i, t, k, p, m)
    # a filter no row sets may be left out, and one draw gives a token each row allows
    plain = torch.softmax(filter_scores(logits, temperature.float(), None, None, None), -1)
    assert torch.allclose(plain, torch.softmax(filter_scores(logits, temperature.float(), top_k * 0, None, None), -1))
    drawn = sample_rows(logits, temperature.float(), top_k, top_p.float(), log_min_p.float(), generator)
    assert drawn.shape == (40,) and all(probs[i, j] > 0 for i, j in enumerate(drawn.tolist()))


def test_a_batch_draw_follows_each_rows_distribution():
    """Drawing many rows with the same logits at once gives the softmax's frequencies (one generator for all)."""
    rows = 20_000
    logits = LOGITS.expand(rows, -1)
    drawn = sample_rows(logits, torch.full((rows,), 1.5), None, None, None, torch.Generator().manual_seed(4))
    observed = torch.bincount(drawn, minlength=7)[1:] / rows
    assert torch.allclose(observed, torch.softmax(LOGITS[1:] / 1.5, 0), atol=0.015)


def test_a_top_k_beyond_any_integer_type_means_no_limit():
    """The API bounds top_k from below only: 2**80 is every token, per row and in a batch draw."""
    huge = Sampler(temperature=5.0, top_k=2**80, seed=0)
    assert set(draws(huge)) == set(draws(Sampler(temperature=5.0, seed=0)))


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [(1.0, 3, 1.0, 0), (2.0, 0, 0.7, 0), (3.0, 5, 0.9, 0.2)])
def test_one_rows_sampler_keeps_the_tokens_the_rule_keeps(temperature, top_k, top_p, min_p):
    """Sampler.choose, written for one row, and filter_scores, for rows at once, state one rule: the tokens one row
    draws are those the written-out rule gives a probability, each it gives over 5 % drawn."""
    expected = reference_probs(LOGITS.tolist(), temperature, top_k, top_p, min_p)
    drawn = set(draws(Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=7)))
    assert drawn <= {j for j, p in enumerate(expected) if p > 0}
    assert drawn >= {j for j, p in enumerate(expected) if p > 0.05}
