import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_error


def independent_nll(loaded, text: str) -> float:
    ids = loaded.vocab.encode(text)
    with torch.no_grad():
        logits, _ = loaded.model(ids[None, :-1])
    return F.cross_entropy(logits[0], ids[1:]).item()


def test_perplexity_equals_exp_cross_entropy_of_the_model(client, loaded):
    text = "Before we proceed any further, hear me speak."
    body = client.post("/perplexity", json={"text": text}).json()
    nll = independent_nll(loaded, text)
    assert body["nll"] == pytest.approx(nll, rel=1e-5)
    assert body["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert body["bits_per_char"] == pytest.approx(nll / math.log(2), rel=1e-5)
    assert body["num_scored"] == len(text) - 1
    assert body["unknown_chars"] == 0
    assert "tokens" not in body and "token_logprobs" not in body


def test_token_logprobs_give_one_entry_per_scored_character(client):
    text = "Speak, speak."
    body = client.post("/perplexity", json={"text": text, "token_logprobs": True}).json()
    assert body["tokens"] == list(text[1:])
    assert len(body["token_logprobs"]) == body["num_scored"] == len(text) - 1
    assert -sum(body["token_logprobs"]) / len(text[1:]) == pytest.approx(body["nll"], rel=1e-5)


def test_a_context_only_warms_the_state_and_every_text_character_is_scored(client):
    whole = client.post("/perplexity", json={"text": "All:\nSpeak", "token_logprobs": True}).json()
    after = client.post("/perplexity", json={"text": "Speak", "context": "All:\n", "token_logprobs": True}).json()
    assert after["num_scored"] == 5 and after["tokens"] == list("Speak")
    assert after["token_logprobs"] == pytest.approx(whole["token_logprobs"][-5:], abs=1e-5)


def test_unknown_characters_are_counted(client):
    assert client.post("/perplexity", json={"text": "Speak ZZ", "context": "€"}).json()["unknown_chars"] == 3


def test_text_too_short_to_score_is_a_422(client):
    assert_error(client.post("/perplexity", json={"text": "a"}), 422, "text")
    assert_error(client.post("/perplexity", json={"text": ""}), 422, "text")
    assert client.post("/perplexity", json={"text": "a", "context": "b"}).json()["num_scored"] == 1


def test_text_and_context_over_the_limit_are_422(client, settings):
    too_long = "a" * (settings.max_text_chars + 1)
    assert_error(client.post("/perplexity", json={"text": too_long}), 422, "text")
    assert_error(client.post("/perplexity", json={"text": "ab", "context": too_long}), 422, "context")


def test_perplexity_rejects_unknown_fields_and_wrong_types(client):
    assert_error(client.post("/perplexity", json={"text": "abc", "temperature": 1}), 422, "temperature")
    assert_error(client.post("/perplexity", json={"text": 5}), 422, "text")
