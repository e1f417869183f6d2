import math

import openai
import pytest

from tests.app.test_predict import library_greedy
from tests.conftest import assert_error


@pytest.fixture
def oai(client):
    return openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key="unused", http_client=client, max_retries=0)


def test_models_lists_the_served_model(oai):
    models = oai.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_openai_client_greedy_completion_equals_the_library(oai, loaded):
    r = oai.completions.create(model="tiny", prompt="All:\n", max_tokens=30, temperature=0)
    assert r.choices[0].text == library_greedy(loaded, "All:\n", 30)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 30 and r.usage.total_tokens == 35


def test_openai_client_stop_and_n(oai, loaded):
    full = library_greedy(loaded, "Speak", 50)
    stop = full[10:12]
    r = oai.completions.create(model="tiny", prompt="Speak", max_tokens=50, temperature=0, stop=[stop], n=2)
    assert [c.text for c in r.choices] == [full[: full.index(stop)]] * 2
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].finish_reason == "stop"


def test_openai_client_streaming(oai, loaded):
    stream = oai.completions.create(model="tiny", prompt="All:\n", max_tokens=20, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == library_greedy(loaded, "All:\n", 20)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_logprobs_of_generated_tokens(oai, client):
    r = oai.completions.create(model="tiny", prompt="Speak", max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.top_logprobs) == 8 and all(len(t) == 3 for t in lp.top_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value == pytest.approx(max(top.values()), abs=1e-6)  # greedy picks the most likely
        assert top[token] == pytest.approx(value, abs=1e-6)
    assert lp.text_offset == list(range(8))


def test_echo_with_logprobs_and_no_tokens_scores_the_prompt(oai, client):
    prompt = "Before we proceed"
    r = oai.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = r.choices[0]
    assert choice.text == prompt
    assert choice.logprobs.tokens == list(prompt)
    assert choice.logprobs.token_logprobs[0] is None
    ppl = client.post("/perplexity", json={"text": prompt, "token_logprobs": True}).json()
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(ppl["token_logprobs"], abs=1e-6)
    assert math.exp(-sum(choice.logprobs.token_logprobs[1:]) / (len(prompt) - 1)) == pytest.approx(ppl["perplexity"])


def test_seeded_sampling_is_repeatable(oai):
    a = oai.completions.create(model="tiny", prompt="Speak", max_tokens=30, temperature=0.8, seed=3)
    b = oai.completions.create(model="tiny", prompt="Speak", max_tokens=30, temperature=0.8, seed=3)
    assert a.choices[0].text == b.choices[0].text


def test_unknown_model_is_a_404(client):
    assert_error(client.post("/v1/completions", json={"model": "gpt-5", "prompt": "a"}), 404, "model")


def test_openai_client_raises_on_bad_requests(oai):
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="tiny", prompt="a", max_tokens=10_000)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.completions.create(model="tiny", prompt="", max_tokens=1)


def test_streaming_with_echo_sends_the_prompt_first(oai, loaded):
    chunks = list(
        oai.completions.create(model="tiny", prompt="All:\n", max_tokens=12, temperature=0, stream=True, echo=True)
    )
    assert chunks[0].choices[0].text == "All:\n"
    assert "".join(c.choices[0].text for c in chunks[1:]) == library_greedy(loaded, "All:\n", 12)
