"""Continuous batching and the prefix cache, seen from HTTP clients: concurrent requests run together in one
batch and get exactly what each would get alone; a full queue answers 429; cached prefixes are reported."""

import asyncio
import json
import re
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.engine.prefix_cache import PrefixCache
from app.main import create_app
from model import load_weights, score, warm
from model.inference import iter_tokens
from model.sampling import Sampler
from tests.app.test_perplexity import independent_nll
from tests.app.test_predict import library_greedy, parse_events
from tests.conftest import assert_error, make_weights_file, start_server, stop_server

SHIPPED = "weights/rnn.safetensors"
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"
    "You are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\nFirst Citizen:\n"
    "First, you know Caius Marcius is chief enemy to the people.\n"
)


def prefixes(n: int) -> list[str]:
    return [TEXT[(7 * i) % 150 : (7 * i) % 150 + 5 + (13 * i) % 60] for i in range(n)]


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def shipped():
    return load_weights(SHIPPED)


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    base, proc = start_server(SHIPPED, tmp_path_factory.mktemp("srv") / "server.log")
    yield base
    stop_server(proc)


async def post_all(base: str, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        return await asyncio.gather(*(http.post(path, json=body) for path, body in requests))


def test_concurrent_greedy_requests_are_batched_and_equal_each_alone(shipped_server, shipped):
    """32 clients at once against the real server with the shipped model: every completion is the one the
    single-stream loop gives, and the scheduler really ran them together (mean batch size > 1)."""
    before = httpx.get(f"{shipped_server}/metrics").text
    texts = prefixes(32)
    responses = asyncio.run(post_all(shipped_server, [("/predict", {"prefix": p, "num_tokens": 150}) for p in texts]))
    after = httpx.get(f"{shipped_server}/metrics").text
    for p, r in zip(texts, responses):
        assert r.status_code == 200, r.text
        assert r.json()["completion"] == library_greedy(shipped, p, 150), p
    steps = metric(after, "rnnlm_batch_steps_total") - metric(before, "rnnlm_batch_steps_total")
    rows = metric(after, "rnnlm_batch_rows_stepped_total") - metric(before, "rnnlm_batch_rows_stepped_total")
    assert rows / steps > 4, (rows, steps)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_batch_through_the_general_step(cell, tmp_path):
    """GRU and LSTM rows step through the model's own forward pass on (n, 1) tokens; still each as alone."""
    path = make_weights_file(tmp_path / f"{cell}.safetensors", cell)
    loaded = load_weights(path)
    base, proc = start_server(path, tmp_path / "server.log")
    try:
        texts = ["First", "All:\n", "Speak, speak", "Before we proceed any", "hear me", "Citizen:"]
        responses = asyncio.run(post_all(base, [("/predict", {"prefix": p, "num_tokens": 60}) for p in texts]))
        for p, r in zip(texts, responses):
            assert r.json()["completion"] == library_greedy(loaded, p, 60)
    finally:
        stop_server(proc)


def test_generation_scoring_and_sampling_mixed_in_one_batch(shipped_server, shipped):
    long_text = TEXT * 20  # several chunks of scoring while generations run
    requests = [("/predict", {"prefix": p, "num_tokens": 80}) for p in prefixes(6)]
    requests += [("/perplexity", {"text": long_text}), ("/perplexity", {"text": "hear me", "context": TEXT[:90]})]
    requests += [("/predict", {"prefix": "All:", "num_tokens": 60, "temperature": 0.8, "top_k": 20, "seed": 3})]
    responses = asyncio.run(post_all(shipped_server, requests))
    for (_, body), r in zip(requests[:6], responses[:6]):
        assert r.json()["completion"] == library_greedy(shipped, body["prefix"], 80)
    assert responses[6].json()["nll"] == pytest.approx(independent_nll(shipped, long_text), rel=1e-5)
    expected = score(shipped.model, shipped.vocab.encode("hear me"), shipped.vocab.encode(TEXT[:90])).nll
    assert responses[7].json()["nll"] == pytest.approx(expected, rel=1e-5)
    state, logits = warm(shipped.model, shipped.vocab.encode("All:"))
    tokens = iter_tokens(shipped.model, state, logits, Sampler(temperature=0.8, top_k=20, seed=3))
    assert responses[8].json()["completion"] == "".join(shipped.vocab.tokens[next(tokens)[0]] for _ in range(60))


def test_streaming_and_plain_requests_together_give_the_same_text(shipped_server, shipped):
    async def run():
        async with httpx.AsyncClient(base_url=shipped_server, timeout=60) as http:

            async def streamed(prefix):
                pieces = []
                async with http.stream(
                    "POST", "/predict", json={"prefix": prefix, "num_tokens": 100, "stream": True}
                ) as r:
                    text = (await r.aread()).decode()
                for name, data in parse_events(text):
                    if name == "token":
                        pieces.append(json.loads(data)["text"])
                return "".join(pieces)

            plain = [http.post("/predict", json={"prefix": p, "num_tokens": 100}) for p in prefixes(4)]
            return await asyncio.gather(*(streamed(p) for p in prefixes(4)), *plain)

    results = asyncio.run(run())
    for i, p in enumerate(prefixes(4)):
        expected = library_greedy(shipped, p, 100)
        assert results[i] == expected
        assert results[4 + i].json()["completion"] == expected


def test_a_full_queue_answers_429_with_the_error_body(weights_file, tmp_path):
    base, proc = start_server(
        weights_file,
        tmp_path / "server.log",
        RNNLM_MAX_BATCH_SIZE="1",
        RNNLM_MAX_QUEUE="2",
        RNNLM_MAX_NUM_TOKENS="2000",
    )
    try:
        responses = asyncio.run(post_all(base, [("/predict", {"prefix": "All:", "num_tokens": 2000})] * 12))
        codes = sorted(r.status_code for r in responses)
        # The queue's two places are always served; the running one may still be queued when the rest arrive.
        assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
        assert set(codes) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert_error(refused, 429)
        assert refused.headers["retry-after"] == "1"
        assert httpx.post(f"{base}/predict", json={"prefix": "All:", "num_tokens": 5}).status_code == 200
    finally:
        stop_server(proc)


def test_a_client_that_goes_away_frees_its_batch_row(weights_file, tmp_path):
    base, proc = start_server(weights_file, tmp_path / "server.log", RNNLM_MAX_NUM_TOKENS="100000")
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            with http.stream("POST", "/predict", json={"prefix": "All:", "num_tokens": 100000, "stream": True}) as r:
                chunks = r.iter_bytes()  # held: dropping a half-read iterator closes the connection
                next(chunks)
                assert metric(http.get("/metrics").text, "rnnlm_batch_rows") == 1
            deadline = time.monotonic() + 10
            while metric(http.get("/metrics").text, "rnnlm_batch_rows") != 0:
                assert time.monotonic() < deadline, "the abandoned generation kept running"
                time.sleep(0.05)
    finally:
        stop_server(proc)


def test_one_requests_many_prompts_do_not_hold_the_batch_from_a_newcomer(tmp_path, shipped):
    """A completions request of 12 prompts × 2,000 tokens fills a batch of 4; a /predict sent meanwhile is
    answered while it still runs (a row of it put aside), and every text is what it would be alone."""
    base, proc = start_server(SHIPPED, tmp_path / "server.log", RNNLM_MAX_BATCH_SIZE="4")
    prompts = prefixes(12)

    async def scenario():
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            big = asyncio.create_task(
                http.post("/v1/completions", json={"prompt": prompts, "max_tokens": 2000, "temperature": 0})
            )
            while metric((await http.get("/metrics")).text, "rnnlm_batch_rows") < 4:
                await asyncio.sleep(0.01)
            small = await http.post("/predict", json={"prefix": "KING", "num_tokens": 20})
            big_running = not big.done()
            put_aside = metric((await http.get("/metrics")).text, "rnnlm_batch_rows_put_aside_total")
            return small, big_running, put_aside, await big

    try:
        small, big_running, put_aside, big = asyncio.run(scenario())
    finally:
        stop_server(proc)
    assert small.status_code == 200 and small.json()["completion"] == library_greedy(shipped, "KING", 20)
    assert big_running and put_aside >= 1
    assert big.status_code == 200, big.text
    choices = big.json()["choices"]
    assert [c["index"] for c in choices] == list(range(12))
    for i in (0, 5, 11):
        assert choices[i]["text"] == library_greedy(shipped, prompts[i], 2000)


def test_a_request_asking_for_more_sequences_than_the_bound_gets_422(client, settings):
    limit = settings.max_request_rows
    too_many = client.post("/v1/completions", json={"prompt": ["a"] * (limit + 1), "max_tokens": 1})
    assert_error(too_many, 422, "prompt")
    times = client.post("/v1/completions", json={"prompt": ["a"] * (limit // 4 + 1), "n": 2, "best_of": 4})
    assert f"at most {limit}" in assert_error(times, 422, "best_of")["message"]
    at_the_bound = client.post("/v1/completions", json={"prompt": ["a"] * (limit // 4), "best_of": 4, "max_tokens": 1})
    assert at_the_bound.status_code == 200 and len(at_the_bound.json()["choices"]) == limit // 4


# -- the prefix cache ----------------------------------------------------------------------------------------
def test_a_longer_prompt_reuses_the_cached_state_of_its_prefix(client, loaded):
    first = client.post("/predict", json={"prefix": "Before we proceed", "num_tokens": 20}).json()
    assert first["cached_chars"] == 0
    longer = "Before we proceed any further"
    second = client.post("/predict", json={"prefix": longer, "num_tokens": 30}).json()
    assert second["cached_chars"] == len("Before we proceed")
    assert second["completion"] == library_greedy(loaded, longer, 30)


def test_continuing_a_completion_reuses_the_state_after_it(client, loaded):
    first = client.post("/predict", json={"prefix": "All:\n", "num_tokens": 40}).json()
    follow = "All:\n" + first["completion"] + "\nFirst"
    second = client.post("/predict", json={"prefix": follow, "num_tokens": 25}).json()
    assert second["cached_chars"] == len("All:\n") + 40
    assert second["completion"] == library_greedy(loaded, follow, 25)


def test_the_whole_prompt_cached_skips_reading_and_gives_the_same_answer(client, loaded):
    a = client.post("/v1/completions", json={"prompt": "Speak, speak.", "max_tokens": 30, "temperature": 0}).json()
    b = client.post("/v1/completions", json={"prompt": "Speak, speak.", "max_tokens": 30, "temperature": 0}).json()
    assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] == len("Speak, speak.")
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == library_greedy(loaded, "Speak, speak.", 30)


def test_perplexity_reuses_a_cached_context(client, loaded):
    context = "First Citizen:\nBefore we proceed any further"
    a = client.post("/perplexity", json={"text": ", hear me speak.", "context": context}).json()
    b = client.post("/perplexity", json={"text": ", hear me speak.", "context": context}).json()
    assert (a["cached_chars"], b["cached_chars"]) == (0, len(context) - 1)
    expected = score(loaded.model, loaded.vocab.encode(", hear me speak."), loaded.vocab.encode(context)).nll
    assert a["nll"] == pytest.approx(expected, rel=1e-6) and b["nll"] == pytest.approx(expected, rel=1e-6)


def test_metrics_report_the_cache_and_the_batch(client):
    client.post("/predict", json={"prefix": "Speak", "num_tokens": 5})
    client.post("/predict", json={"prefix": "Speak", "num_tokens": 5})
    text = client.get("/metrics").text
    assert metric(text, "rnnlm_prefix_cache_entries") >= 2  # the prompt, and the prompt + its completion
    assert metric(text, "rnnlm_prefix_cache_bytes") > 0
    assert metric(text, "rnnlm_prefix_cache_hits_total") >= 1
    assert metric(text, "rnnlm_batch_steps_total") >= 10


@pytest.mark.parametrize(
    "off", [{"batching": False}, {"prefix_cache_entries": 0}, {"batching": False, "prefix_cache_entries": 0}]
)
def test_switching_batching_or_the_cache_off_gives_the_same_answers(settings, loaded, off):
    with TestClient(create_app(settings.model_copy(update=off))) as client:
        for _ in range(2):
            body = client.post("/predict", json={"prefix": "First Citizen:\n", "num_tokens": 60}).json()
            assert body["completion"] == library_greedy(loaded, "First Citizen:\n", 60)
            assert body["cached_chars"] == (0 if off.get("prefix_cache_entries") == 0 else body["cached_chars"])
            r = client.post("/perplexity", json={"text": "hear me speak.", "context": "Before we proceed"}).json()
            expected = score(
                loaded.model, loaded.vocab.encode("hear me speak."), loaded.vocab.encode("Before we proceed")
            ).nll
            assert r["nll"] == pytest.approx(expected, rel=1e-6)
        assert client.get("/info").json()["serving"]["batching"] == off.get("batching", True)


def test_a_long_prompt_is_read_in_chunks_then_joins_the_batch(settings, loaded):
    long_prompt = (TEXT * 3)[:700]
    tight = settings.model_copy(update={"prefill_chars": 16, "chunk_chars": 37})
    with TestClient(create_app(tight)) as client:
        body = client.post("/predict", json={"prefix": long_prompt, "num_tokens": 50}).json()
        assert body["completion"] == library_greedy(loaded, long_prompt, 50)
        r = client.post("/perplexity", json={"text": long_prompt}).json()
        assert r["nll"] == pytest.approx(independent_nll(loaded, long_prompt), rel=1e-5)


def test_prefix_cache_finds_the_longest_prefix_and_evicts_least_recently_used(loaded):
    state, logits = warm(loaded.model, loaded.vocab.encode("abc"))
    cache = PrefixCache(max_entries=2, max_bytes=10**6)
    cache.put("ab", state, logits)
    cache.put("abcd", state, logits)
    assert cache.lookup("abcdef").length == 4
    assert cache.lookup("abcdef", max_length=3).length == 2
    assert cache.lookup("xyz") is None
    cache.lookup("ab")  # "ab" is now the most recently used
    cache.put("q", state, logits)  # evicts "abcd"
    assert len(cache) == 2 and cache.lookup("abcdef").length == 2
    one = cache.bytes // 2
    small = PrefixCache(max_entries=100, max_bytes=int(one * 2.5))
    for key in ("a", "b", "c", "d"):
        small.put(key, state, logits)
    assert len(small) == 2 and small.bytes <= small.max_bytes  # bounded by memory as well as by count


def test_prefix_cache_lookup_compares_long_and_short_keys_in_place(loaded):
    state, logits = warm(loaded.model, loaded.vocab.encode("abc"))
    cache = PrefixCache(max_entries=100, max_bytes=10**7)
    base = "x" * 40
    for key in ("x" * 5, base, base + "y" * 10, base + "z" * 10, "w" * 60):
        cache.put(key, state, logits)
    assert cache.lookup(base + "y" * 30).length == 50  # the longest of three long keys that fit
    assert cache.lookup(base + "q").length == 40
    assert cache.lookup("x" * 39).length == 5  # too short for the long keys: the short one
    assert cache.lookup("x" * 45, max_length=20).length == 5
    assert cache.lookup("w" * 59) is None
    small = PrefixCache(max_entries=1, max_bytes=10**7)
    small.put(base, state, logits)
    small.put("x" * 5, state, logits)  # evicts the long key and empties its bucket
    assert small.lookup(base + "y").length == 5 and small._by_head == {}
