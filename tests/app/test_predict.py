import json

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from model import generate, warm
from model.inference import iter_tokens
from model.sampling import Sampler
from tests.conftest import assert_error


def library_greedy(loaded, prefix: str, n: int) -> str:
    state, logits = warm(loaded.model, loaded.vocab.encode(prefix))
    ids, _ = generate(loaded.model, state, logits, n)
    return loaded.vocab.decode(ids)


def test_greedy_predict_equals_the_library_generation(client, loaded):
    r = client.post("/predict", json={"prefix": "First Citizen:\n", "num_tokens": 60})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "prefix": "First Citizen:\n",
        "completion": library_greedy(loaded, "First Citizen:\n", 60),
        "num_tokens": 60,
        "finish_reason": "length",
        "unknown_chars": 0,
        "cached_chars": 0,
    }


def test_predict_zero_tokens_only_warms(client):
    body = client.post("/predict", json={"prefix": "Speak", "num_tokens": 0}).json()
    assert body["completion"] == "" and body["num_tokens"] == 0 and body["finish_reason"] == "length"


def test_predict_counts_unknown_characters_in_the_prefix(client):
    body = client.post("/predict", json={"prefix": "Speak Zß€", "num_tokens": 3}).json()
    assert body["unknown_chars"] == 3
    assert len(body["completion"]) == 3


def test_predict_stops_before_a_stop_sequence(client, loaded):
    full = library_greedy(loaded, "All:\n", 80)
    stop = full[20:23]
    body = client.post("/predict", json={"prefix": "All:\n", "num_tokens": 80, "stop": [stop]}).json()
    assert body["finish_reason"] == "stop"
    assert body["completion"] == full[: full.index(stop)]
    assert body["num_tokens"] == len(body["completion"])


def test_sampling_with_a_seed_is_repeatable_and_matches_the_library(client, loaded):
    req = {"prefix": "Speak", "num_tokens": 40, "temperature": 1.0, "top_k": 10, "top_p": 0.9, "seed": 7}
    a = client.post("/predict", json=req).json()
    b = client.post("/predict", json=req).json()
    assert (a["cached_chars"], b["cached_chars"]) == (0, 5)  # the second read the prefix's state from the cache
    assert {**a, "cached_chars": 5} == b
    state, logits = warm(loaded.model, loaded.vocab.encode("Speak"))
    tokens = iter_tokens(loaded.model, state, logits, Sampler(temperature=1.0, top_k=10, top_p=0.9, seed=7))
    expected = "".join(loaded.vocab.tokens[next(tokens)[0]] for _ in range(40))
    assert a["completion"] == expected


def parse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, data))
    return events


def stream_predict(client, body: dict) -> tuple[list[str], dict]:
    with client.stream("POST", "/predict", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_events(r.read().decode())
    name, data = events[-1]
    assert name == "result"
    return [json.loads(d)["text"] for n, d in events[:-1] if n == "token"], json.loads(data)


def test_streaming_with_no_flush_interval_sends_one_event_per_token_then_the_result(settings, loaded):
    with TestClient(create_app(settings.model_copy(update={"stream_flush_ms": 0}))) as client:
        tokens, result = stream_predict(client, {"prefix": "All:\n", "num_tokens": 25})
    assert len(tokens) == 25
    assert "".join(tokens) == result["completion"] == library_greedy(loaded, "All:\n", 25)
    assert result["num_tokens"] == 25


def test_streamed_text_is_coalesced_by_time_and_the_first_piece_goes_at_once(settings, loaded):
    """A long flush interval: the first character comes alone (time to first token), the rest together."""
    with TestClient(create_app(settings.model_copy(update={"stream_flush_ms": 1000}))) as client:
        tokens, result = stream_predict(client, {"prefix": "All:\n", "num_tokens": 200})
    assert len(tokens[0]) == 1 and 2 <= len(tokens) < 10, [len(t) for t in tokens]
    assert "".join(tokens) == result["completion"] == library_greedy(loaded, "All:\n", 200)


def test_predict_rejects_unknown_fields(client):
    assert_error(client.post("/predict", json={"prefix": "a", "num_tokens": 1, "colour": "red"}), 422, "colour")


def test_predict_requires_a_prefix_field(client):
    assert_error(client.post("/predict", json={"num_tokens": 1}), 422, "prefix")


def test_an_empty_prefix_generates_from_the_zero_state(client, loaded):
    """The notebook's initial state H_0 = 0: the first character is predicted by the head alone (Y = 0 W_y +
    b_y = b_y), then each one read from there — a hand-written loop over the model's forward pass."""
    model, vocab = loaded.model, loaded.vocab
    with torch.no_grad():
        logits, state, chosen = model.b_y.clone(), model.init_state(1), []
        for _ in range(30):
            token = int(logits[1:].argmax()) + 1
            chosen.append(token)
            out, state = model(torch.tensor([[token]]), state)
            logits = out[0, -1]
    body = client.post("/predict", json={"prefix": "", "num_tokens": 30}).json()
    assert body["completion"] == vocab.decode(chosen) and body["cached_chars"] == 0
    tokens, result = stream_predict(client, {"prefix": "", "num_tokens": 30})
    assert "".join(tokens) == result["completion"] == vocab.decode(chosen)


def test_predict_rejects_non_finite_temperature(client):
    for bad in ("NaN", "Infinity", "-Infinity"):
        r = client.post(
            "/predict",
            content=f'{{"prefix": "a", "num_tokens": 1, "temperature": {bad}}}',
            headers={"content-type": "application/json"},
        )
        assert_error(r, 422, "temperature")


def test_predict_rejects_bad_numbers(client):
    assert_error(client.post("/predict", json={"prefix": "a", "num_tokens": -1}), 422, "num_tokens")
    assert_error(client.post("/predict", json={"prefix": "a", "num_tokens": "many"}), 422, "num_tokens")
    assert_error(client.post("/predict", json={"prefix": "a", "top_p": 0}), 422, "top_p")


def test_predict_enforces_the_token_and_character_limits(client, settings):
    assert_error(
        client.post("/predict", json={"prefix": "a", "num_tokens": settings.max_num_tokens + 1}), 422, "num_tokens"
    )
    assert client.post("/predict", json={"prefix": "a", "num_tokens": settings.max_num_tokens}).status_code == 200
    assert_error(
        client.post("/predict", json={"prefix": "a" * (settings.max_text_chars + 1), "num_tokens": 1}), 422, "prefix"
    )


def test_invalid_json_is_a_400(client):
    r = client.post("/predict", content=b'{"prefix": "a",', headers={"content-type": "application/json"})
    assert_error(r, 400)


@pytest.mark.parametrize(
    "body, words",
    [(b"", "needs a JSON object as its body"), (None, "needs a JSON object"), (b"null", "must be a JSON object")],
)
def test_no_body_or_one_that_is_not_an_object_says_so(client, body, words):
    for path in ("/predict", "/perplexity", "/v1/completions"):
        r = client.post(path, content=body, headers={"content-type": "application/json"} if body is not None else {})
        assert words in assert_error(r, 422, None)["message"]


def test_a_body_over_the_limit_is_a_413_before_parsing(client, settings):
    body = b'{"prefix": "' + b"a" * settings.max_body_bytes + b'"}'
    assert_error(client.post("/predict", content=body, headers={"content-type": "application/json"}), 413)


def test_a_chunked_body_over_the_limit_is_a_413(client, settings):
    def chunks():
        yield b'{"prefix": "'
        for _ in range(settings.max_body_bytes // 1000 + 1):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)


def test_greedy_output_is_the_same_under_concurrent_load(client, loaded):
    from concurrent.futures import ThreadPoolExecutor

    prefixes = ["First", "All:\n", "Speak, ", "hear me"] * 4
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda p: client.post("/predict", json={"prefix": p, "num_tokens": 30}).json(), prefixes)
        )
    for p, r in zip(prefixes, results):
        assert r["completion"] == library_greedy(loaded, p, 30)
    assert torch.get_num_threads() >= 1
