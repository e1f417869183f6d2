import math

import pytest
import torch

from model.sampling import Sampler

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
