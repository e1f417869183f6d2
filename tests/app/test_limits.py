"""The server's limits (RNNLM_MAX_*) are its request bodies' Field constraints: the schema and the validation
say the same bounds, each app its own, and a request over one gets the project's error with the value and the
limit."""

import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import assert_error


def _props(app, model: str) -> dict:
    return app.openapi()["components"]["schemas"][model]["properties"]


def _branches(spec: dict) -> list[dict]:
    return spec.get("anyOf", [spec])


@pytest.mark.parametrize("tokens, chars, stops", [(300, 5000, 4), (7, 12, 2)])
def test_each_app_s_schema_states_its_own_limits(tokens, chars, stops):
    app = create_app(Settings(max_num_tokens=tokens, max_text_chars=chars, max_stop_sequences=stops), load_model=False)
    predict = _props(app, "PredictRequest")
    assert [b.get("maximum") for b in _branches(predict["num_tokens"])] == [tokens, None]
    assert predict["prefix"]["maxLength"] == chars
    assert predict["stop"]["maxItems"] == stops and predict["stop"]["items"]["maxLength"] == chars
    perplexity = _props(app, "PerplexityRequest")
    assert perplexity["text"]["maxLength"] == chars and perplexity["text"]["minLength"] == 1  # the field's own
    assert [b.get("maxLength") for b in _branches(perplexity["context"])] == [chars, None]
    completion = _props(app, "CompletionRequest")
    text, texts, ids, id_lists = _branches(completion["prompt"])
    assert text["maxLength"] == chars and texts["items"]["maxLength"] == chars
    assert ids["maxItems"] == chars and id_lists["items"]["maxItems"] == chars  # one token id, one character
    assert [b.get("maximum") for b in _branches(completion["max_tokens"])] == [tokens, None]
    assert completion["max_tokens"]["default"] == 16  # the field keeps its default and description
    chat = _props(app, "ChatCompletionRequest")
    for name in ("max_tokens", "max_completion_tokens"):
        assert [b.get("maximum") for b in _branches(chat[name])] == [tokens, None]
    string, array, _ = _branches(chat["stop"])
    assert string["maxLength"] == chars and array["maxItems"] == stops
    assert [b.get("maxLength") for b in _branches(_props(app, "TokenizeRequest")["prompt"])] == [chars, None]


def test_two_apps_in_one_process_keep_their_own_limits():
    small = create_app(Settings(max_num_tokens=5), load_model=False)
    large = create_app(Settings(max_num_tokens=5000), load_model=False)
    assert _branches(_props(small, "PredictRequest")["num_tokens"])[0]["maximum"] == 5
    assert _branches(_props(large, "PredictRequest")["num_tokens"])[0]["maximum"] == 5000


def test_over_a_limit_the_error_names_the_value_and_the_limit(client, settings):
    over = settings.max_num_tokens + 1
    error = assert_error(client.post("/predict", json={"prefix": "a", "num_tokens": over}), 422, "num_tokens")
    assert error["message"] == f"num_tokens is {over:,}; the limit is {settings.max_num_tokens:,}"
    long = "a" * (settings.max_text_chars + 1)
    error = assert_error(client.post("/perplexity", json={"text": long}), 422, "text")
    assert error["message"] == f"text has {len(long):,} characters; the limit is {settings.max_text_chars:,}"
    # a union (prompt: a text, texts, or token ids) reports the one problem once
    error = assert_error(client.post("/v1/completions", json={"prompt": long, "max_tokens": 1}), 422, "prompt")
    assert error["message"] == f"prompt has {len(long):,} characters; the limit is {settings.max_text_chars:,}"
    ids = [1] * (settings.max_text_chars + 1)
    error = assert_error(client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1}), 422, "prompt")
    assert error["message"] == f"prompt has {len(ids):,} items; the limit is {settings.max_text_chars:,}"
    stops = ["x"] * (settings.max_stop_sequences + 1)
    error = assert_error(client.post("/predict", json={"prefix": "a", "stop": stops}), 422, "stop")
    assert error["message"] == f"stop has {len(stops)} items; the limit is {settings.max_stop_sequences}"
    error = assert_error(
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": over}),
        422,
        "max_tokens",
    )
    assert error["message"] == f"max_tokens is {over:,}; the limit is {settings.max_num_tokens:,}"


def test_at_the_limit_is_accepted_and_a_rendered_chat_is_bounded_too(client, settings):
    assert client.post("/predict", json={"prefix": "a", "num_tokens": settings.max_num_tokens}).status_code == 200
    exact = "a" * settings.max_text_chars
    assert client.post("/perplexity", json={"text": exact}).status_code == 200
    assert client.post("/tokenize", json={"prompt": exact}).json()["count"] == settings.max_text_chars
    # each message is within the limit; the conversation the template writes from them is not
    half = "a" * (settings.max_text_chars // 2 + 1)
    messages = [{"role": "user", "content": half}, {"role": "assistant", "content": half}]
    error = assert_error(client.post("/v1/chat/completions", json={"messages": messages}), 422, "messages")
    assert "the limit is" in error["message"]
    assert_error(client.post("/tokenize", json={"messages": messages}), 422, "messages")


def test_problems_with_other_fields_are_counted_by_field(client, settings):
    over = settings.max_num_tokens + 1
    error = assert_error(client.post("/predict", json={"prefix": 5, "num_tokens": over}), 422, "num_tokens")
    assert error["message"].endswith("the limit is 300 (and problems with 1 more field)")
    error = assert_error(client.post("/predict", json={"prefix": 5, "num_tokens": "x", "stream": "y"}), 422, "prefix")
    assert error["message"].endswith("(and problems with 2 more fields)")
    error = assert_error(client.post("/predict", json={"prefix": "a", "stop": ["x" * 6000, "y" * 6000]}), 422)
    assert error["param"] == "stop.0" and "more field" not in error["message"]


def test_the_log_probabilities_one_response_carries_are_bounded(settings):
    """echo with logprobs answers a few bytes per character per alternative: characters × (logprobs + 1) over the
    choices is at most max_logprob_entries (lm-evaluation-harness's gguf client asks for 10 alternatives)."""
    from fastapi.testclient import TestClient

    limit = 1100
    with TestClient(create_app(settings.model_copy(update={"max_logprob_entries": limit}))) as client:
        at = {"prompt": "a" * 100, "max_tokens": 0, "echo": True, "logprobs": 10}  # 100 × 11: the bound
        assert len(client.post("/v1/completions", json=at).json()["choices"][0]["logprobs"]["tokens"]) == 100
        over = {**at, "prompt": ["a" * 51] * 2}  # 102 characters × 11
        error = assert_error(client.post("/v1/completions", json=over), 422, "logprobs")
        assert "1,122 log-probabilities" in error["message"] and "1,100" in error["message"]
        generated = {"prompt": "a" * 100, "max_tokens": 51, "n": 2, "logprobs": 10}  # 51 × 2 × 11
        assert_error(client.post("/v1/completions", json=generated), 422, "logprobs")
        assert client.post("/v1/completions", json={**generated, "n": 1, "logprobs": 20}).status_code == 200


def test_memory_is_given_back_after_a_large_response_only(monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.testclient import TestClient as StarletteClient

    import app.memory as memory

    assert memory.give_back_freed_memory() in (True, False)  # glibc's malloc_trim is there and callable
    calls = []
    monkeypatch.setattr(memory, "give_back_freed_memory", lambda: calls.append(1) or True)
    sizes = {"small": 1000, "large": memory.LARGE_REPLY_BYTES + 1}
    routes = [Route(f"/{name}", lambda request, n=n: Response(b"x" * n)) for name, n in sizes.items()]
    client = StarletteClient(memory.GiveBackMemory(Starlette(routes=routes)))
    assert len(client.get("/small").content) == 1000 and calls == []
    assert len(client.get("/large").content) == sizes["large"] and calls == [1]
