"""Portable state: a state token taken back continues or scores a text exactly as the whole text sent at once
would — on the same server or another that shares the secret — and a token that is not genuine is refused.

The oracle throughout is the same server's one-shot answer for the concatenated text (and, for the format,
the weight file itself: its sha256 and its state's shape)."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from pathlib import Path

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient

from app.engine.state_tokens import HEADER, MAX_CHARS, TAG_BYTES, VERSION, StateCodec, StateTokenError
from app.main import create_app
from app.settings import Settings
from model import load_weights
from tests.conftest import CORPUS, assert_error, assert_greedy, make_weights_file, start_server, stop_server

SECRET = "a shared secret"
A, B = "First Citizen:\nBefore we proceed", " any further, hear me"


@pytest.fixture(scope="module", params=["rnn", "gru", "lstm"])
def cell_weights(request, tmp_path_factory) -> str:
    return make_weights_file(tmp_path_factory.mktemp(request.param) / f"{request.param}.safetensors", request.param)


@pytest.fixture(scope="module")
def api(cell_weights):
    settings = Settings(
        weights=cell_weights, state_secret=SECRET, max_num_tokens=300, max_text_chars=30_000, max_body_bytes=200_000
    )
    with TestClient(create_app(settings)) as c:
        yield c


def assert_same_greedy(weights: str, text: str, got: str, want: str) -> None:
    """``got`` (from a state) is ``want`` (one-shot): the same characters — or, where the two ways of reading
    rounded a float tie differently, still greedy after ``text`` by the model's own forward pass."""
    assert len(got) == len(want)
    if got != want:
        assert_greedy(load_weights(weights), text, got)


def predict(client, prefix: str, n: int, **more) -> dict:
    r = client.post("/predict", json={"prefix": prefix, "num_tokens": n, **more})
    assert r.status_code == 200, r.text
    return r.json()


def perplexity(client, text: str, **more) -> dict:
    r = client.post("/perplexity", json={"text": text, **more})
    assert r.status_code == 200, r.text
    return r.json()


def sample_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    chars = sorted(set(CORPUS))
    return "".join(rng.choice(chars) for _ in range(n))


# -- in one process, every cell -------------------------------------------------------------------------------
def test_predict_from_a_state_equals_predict_of_the_whole_text(api, cell_weights):
    whole = predict(api, A + B, 60)
    warmed = predict(api, A, 0, return_state=True)
    assert warmed["completion"] == "" and warmed["state_chars"] == len(A)
    continued = predict(api, B, 60, state=warmed["state"], return_state=True)
    assert_same_greedy(cell_weights, A + B, continued["completion"], whole["completion"])
    assert continued["state_chars"] == len(A + B) + 60
    # the returned state has read the completion too: an empty prefix continues it
    more = predict(api, "", 30, state=continued["state"])
    read = A + B + continued["completion"]
    assert_same_greedy(cell_weights, read, more["completion"], predict(api, read, 30)["completion"])
    assert "state" not in whole and "state_chars" not in whole  # only on request


def test_with_batching_off_a_state_continues_the_same(weights_file):
    settings = Settings(weights=weights_file, state_secret=SECRET, batching=False)
    with TestClient(create_app(settings)) as alone:
        whole = predict(alone, A + B, 50)
        state = predict(alone, A, 0, return_state=True)["state"]
        continued = predict(alone, B, 50, state=state, return_state=True)
        assert_same_greedy(weights_file, A + B, continued["completion"], whole["completion"])
        read = A + B + continued["completion"]
        more = predict(alone, "", 20, state=continued["state"])
        assert_same_greedy(weights_file, read, more["completion"], predict(alone, read, 20)["completion"])


def test_a_stopped_generation_s_state_has_read_its_stop_sequence(api, cell_weights):
    stop = predict(api, A, 20)["completion"][-2:]  # a stop sequence the model writes (perhaps earlier, too)
    first = predict(api, A, 200, stop=[stop], return_state=True)
    assert first["finish_reason"] == "stop" and first["stop_reason"] == stop
    assert first["state_chars"] == len(A) + len(first["completion"]) + len(stop)
    after = predict(api, B, 40, state=first["state"])
    read = A + first["completion"] + stop + B
    assert_same_greedy(cell_weights, read, after["completion"], predict(api, read, 40)["completion"])


def test_scoring_in_pieces_with_the_state_carried_equals_scoring_the_whole(api):
    text = sample_text(3000)
    whole = perplexity(api, text, token_logprobs=True)
    cuts = [0, 2, 3, 700, 701, 2500, 3000]  # one-character pieces too
    state, total, scored, logprobs = None, 0.0, 0, []
    for start, end in zip(cuts, cuts[1:]):
        body = {"return_state": True, "token_logprobs": True} | ({"state": state} if state else {})
        piece = perplexity(api, text[start:end], **body)
        # the state predicts the piece's first character: only the first piece has nothing before it
        assert piece["num_scored"] == end - start - (start == 0)
        assert piece["state_chars"] == end
        total += piece["nll"] * piece["num_scored"]
        scored += piece["num_scored"]
        logprobs += piece["token_logprobs"]
        state = piece["state"]
    assert scored == whole["num_scored"]
    assert total / scored == pytest.approx(whole["nll"], abs=1e-5)
    assert logprobs == pytest.approx(whole["token_logprobs"], abs=1e-4)


def test_a_context_after_a_state_is_the_state_s_text_and_the_context(api):
    state = perplexity(api, A, return_state=True)["state"]
    after = perplexity(api, "hear me speak.", context=B, state=state)
    oracle = perplexity(api, "hear me speak.", context=A + B)
    assert after["num_scored"] == oracle["num_scored"] == len("hear me speak.")
    assert after["nll"] == pytest.approx(oracle["nll"], abs=1e-5)
    one = perplexity(api, "h", state=state)  # one character is enough after a state
    assert one["num_scored"] == 1
    # "" is no state: the same as sending none
    assert perplexity(api, A, state="") == perplexity(api, A)
    assert predict(api, A, 10, state="")["completion"] == predict(api, A, 10)["completion"]


def test_the_prefix_cache_keys_on_the_token(api, cell_weights):
    a = "Speak, speak.\nAll:\n"  # a text no other test reads: nothing cached after it yet
    state = predict(api, a, 0, return_state=True)["state"]
    first = predict(api, B, 10, state=state)
    again = predict(api, B, 10, state=state)
    assert first["cached_chars"] == 0 and again["cached_chars"] == len(B)
    assert again["completion"] == first["completion"]
    longer = predict(api, B + " speak", 10, state=state)  # the longest cached continuation of that state
    assert longer["cached_chars"] == len(B)
    read = a + B + " speak"
    assert_same_greedy(cell_weights, read, longer["completion"], predict(api, read, 10)["completion"])


def test_the_token_holds_the_model_s_state_as_documented(api, cell_weights):
    token = predict(api, A, 0, return_state=True)["state"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    version, digest, chars = HEADER.unpack_from(raw)
    assert version == VERSION and chars == len(A)
    assert digest == hashlib.sha256(Path(cell_weights).read_bytes()).digest()
    info = api.get("/info").json()
    config = info["config"]
    tensors = 2 if config["cell"] == "lstm" else 1
    floats = tensors * config["num_layers"] * config["hidden_size"]
    assert len(raw) == HEADER.size + 4 * floats + TAG_BYTES == info["state_token"]["bytes"]
    assert len(token) == info["state_token"]["chars"]
    # the state itself: what the model's own forward pass gives after reading A
    from model import load_weights

    loaded = load_weights(cell_weights)
    with torch.inference_mode():
        _, state = loaded.model(loaded.vocab.encode(A).reshape(1, -1))
    values = struct.unpack(f"<{floats}f", raw[HEADER.size : HEADER.size + 4 * floats])
    assert list(values) == pytest.approx(torch.stack(state).reshape(-1).tolist(), abs=1e-5)


# -- refusals ---------------------------------------------------------------------------------------------------
def reseal(
    token: str, secret: str, sha256: bytes | None = None, values: bytes | None = None, chars: int | None = None
) -> str:
    """The token's state, signed again: with another secret, another model's digest, other values or another
    character count."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    version, digest, read = HEADER.unpack_from(raw)
    data = raw[HEADER.size : -TAG_BYTES] if values is None else values
    codec = StateCodec(secret.encode(), (sha256 or digest).hex(), len(data) // 4)
    return codec.seal(read if chars is None else chars, data)


def test_tokens_that_are_not_genuine_are_refused_naming_the_problem(api):
    token = predict(api, A, 0, return_state=True)["state"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    floats = (len(raw) - HEADER.size - TAG_BYTES) // 4

    def refused(bad: str, status: int, words: str, route: str = "/predict") -> None:
        body = {"prefix": B, "num_tokens": 5, "state": bad} if route == "/predict" else {"text": B, "state": bad}
        error = assert_error(api.post(route, json=body), status, "state")
        assert words in error["message"], error["message"]

    flipped = bytearray(raw)
    flipped[HEADER.size + 5] ^= 0x01  # one bit of the state
    refused(base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode(), 400, "signature does not match")
    refused(reseal(token, "another secret"), 400, "signed with another RNNLM_STATE_SECRET", "/perplexity")
    refused(reseal(token, SECRET, hashlib.sha256(b"another model").digest()), 409, "another model")
    refused(token[:-10], 400, "truncated")
    refused(token[: HEADER.size], 400, "truncated")
    refused(token + "AAAA", 400, "too long")
    refused(token * 40, 400, "too long")
    refused(token[:-1] + "*", 400, "base64")
    refused("A", 400, "truncated")
    refused(token[:100] + "=", 400, "base64")
    nan = reseal(token, SECRET, values=struct.pack(f"<{floats}f", *([float("nan")] + [0.0] * (floats - 1))))
    refused(nan, 422, "NaN or infinite")
    inf = reseal(token, SECRET, values=struct.pack(f"<{floats}f", *([0.0] * (floats - 1) + [float("inf")])))
    refused(inf, 422, "NaN or infinite", "/perplexity")
    other_version = bytearray(raw)
    other_version[0] = VERSION + 1
    refused(base64.urlsafe_b64encode(bytes(other_version)).rstrip(b"=").decode(), 400, "format version")
    # genuine, but claiming a count no server reads (2^64 - 1 would overflow the count of the next token)
    for route in ("/predict", "/perplexity"):
        refused(reseal(token, SECRET, chars=2**64 - 1), 422, "claims to have read", route)
    most = predict(api, B, 5, state=reseal(token, SECRET, chars=MAX_CHARS - 1), return_state=True)
    assert most["state_chars"] == MAX_CHARS - 1 + len(B) + 5
    # the genuine token still works after all that
    assert predict(api, B, 5, state=token)["num_tokens"] == 5


def test_random_byte_flips_never_yield_a_2xx(api):
    token = predict(api, A, 0, return_state=True)["state"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    rng = random.Random(1)
    for _ in range(150):
        bad = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(bad))] ^= rng.randint(1, 255)
        r = api.post(
            "/perplexity", json={"text": B, "state": base64.urlsafe_b64encode(bytes(bad)).decode().rstrip("=")}
        )
        assert 400 <= r.status_code < 500, r.text
        assert_error(r, r.status_code, "state")


def test_the_codec_refuses_what_it_did_not_seal():
    codec = StateCodec(b"k", "00" * 32, 8)
    data = struct.pack("<8f", *range(8))
    token = codec.seal(5, data)
    opened = codec.open(token)
    assert (opened.chars, opened.data) == (5, data)
    assert len(opened.tag) == TAG_BYTES
    with pytest.raises(StateTokenError) as e:
        StateCodec(b"other", "00" * 32, 8).open(token)
    assert e.value.status == 400
    with pytest.raises(StateTokenError) as e:
        StateCodec(b"k", "11" * 32, 8).open(token)
    assert e.value.status == 409
    with pytest.raises(ValueError):
        codec.seal(1, data[:-4])
    with pytest.raises(ValueError):
        codec.seal(2**64, data)


# -- the OpenAI routes, through the openai client ---------------------------------------------------------------
def test_openai_completions_and_chat_carry_the_state(server_with_secret, weights_file):
    base = server_with_secret
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    first = client.completions.create(
        model="tiny", prompt=A, max_tokens=20, temperature=0, extra_body={"rnnlm_return_state": True}
    )
    choice = first.choices[0]
    assert choice.rnnlm_state_chars == len(A) + 20
    second = client.completions.create(
        model="tiny", prompt=B, max_tokens=20, temperature=0, extra_body={"rnnlm_state": choice.rnnlm_state}
    )
    read = A + choice.text + B
    whole = client.completions.create(model="tiny", prompt=read, max_tokens=20, temperature=0)
    assert_same_greedy(weights_file, read, second.choices[0].text, whole.choices[0].text)
    assert not hasattr(whole.choices[0], "rnnlm_state") or whole.choices[0].rnnlm_state is None

    # streaming: the state comes in the final event of the choice
    chunks = list(
        client.completions.create(
            model="tiny", prompt=A, max_tokens=20, temperature=0, stream=True, extra_body={"rnnlm_return_state": True}
        )
    )
    final = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].rnnlm_state_chars == len(A) + 20
    streamed = client.completions.create(
        model="tiny", prompt=B, max_tokens=20, temperature=0, extra_body={"rnnlm_state": final[0].rnnlm_state}
    )
    assert_same_greedy(weights_file, read, streamed.choices[0].text, whole.choices[0].text)

    # chat: the second turn sends only its own message, with the first turn's state
    turn1 = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "speak"}],
        max_tokens=300,
        temperature=0,
        extra_body={"rnnlm_return_state": True},
    )
    reply = turn1.choices[0]
    turn2 = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hear me"}],
        max_tokens=30,
        temperature=0,
        extra_body={"rnnlm_state": reply.rnnlm_state},
    )
    history = client.chat.completions.create(
        model="tiny",
        max_tokens=30,
        temperature=0,
        messages=[
            {"role": "user", "content": "speak"},
            {"role": "assistant", "content": reply.message.content},
            {"role": "user", "content": "hear me"},
        ],
    )
    assert reply.finish_reason == "stop" and reply.stop_reason == "\n"  # the template's turn end: read by the state
    rendered = httpx.post(
        f"{base}/tokenize",
        json={
            "messages": [
                {"role": "user", "content": "speak"},
                {"role": "assistant", "content": reply.message.content},
                {"role": "user", "content": "hear me"},
            ]
        },
    ).json()["tokens"]
    text = httpx.post(f"{base}/detokenize", json={"tokens": rendered}).json()["prompt"]
    assert_same_greedy(weights_file, text, turn2.choices[0].message.content, history.choices[0].message.content)

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=B, max_tokens=5, extra_body={"rnnlm_state": "AAAA"})
    assert e.value.body["param"] == "rnnlm_state"


# -- real servers: two processes sharing a secret ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server_with_secret(weights_file, tmp_path_factory):
    # turns end at a newline, which the tiny test model writes often (a blank line it never writes)
    base, proc = start_server(
        weights_file,
        tmp_path_factory.mktemp("s") / "server.log",
        RNNLM_STATE_SECRET=SECRET,
        RNNLM_CHAT_TEMPLATE="{role}:\n{content}\n",
    )
    yield base
    stop_server(proc)


@pytest.fixture(scope="module", params=["rnn", "lstm"])
def two_servers(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"two-{request.param}")
    weights = make_weights_file(folder / f"{request.param}.safetensors", request.param)
    servers = [start_server(weights, folder / f"server{i}.log", RNNLM_STATE_SECRET=SECRET) for i in range(2)]
    stranger = start_server(weights, folder / "stranger.log", RNNLM_STATE_SECRET="not the same")
    yield [base for base, _ in servers], stranger[0], weights
    for _, proc in [*servers, stranger]:
        stop_server(proc)


def test_a_state_made_on_one_server_continues_on_another(two_servers):
    (one, two), stranger, weights = two_servers
    with httpx.Client(timeout=60) as http:
        whole = http.post(f"{one}/predict", json={"prefix": A + B, "num_tokens": 80}).json()
        state = http.post(f"{one}/predict", json={"prefix": A, "num_tokens": 0, "return_state": True}).json()["state"]
        there = http.post(f"{two}/predict", json={"prefix": B, "num_tokens": 80, "state": state}).json()
        assert_same_greedy(weights, A + B, there["completion"], whole["completion"])
        refused = http.post(f"{stranger}/predict", json={"prefix": B, "num_tokens": 80, "state": state})
        error = assert_error(refused, 400, "state")
        assert "RNNLM_STATE_SECRET" in error["message"]


def test_scoring_20000_characters_in_5_pieces_alternating_servers_equals_one_shot(two_servers):
    (one, two), _, _ = two_servers
    text = sample_text(20_000, seed=3)
    with httpx.Client(timeout=60) as http:
        whole = http.post(f"{one}/perplexity", json={"text": text}).json()
        state, total, scored = None, 0.0, 0
        for i in range(5):
            body = {"text": text[i * 4000 : (i + 1) * 4000], "return_state": True}
            if state is not None:
                body["state"] = state
            piece = http.post(f"{(one, two)[i % 2]}/perplexity", json=body).json()
            state = piece["state"]
            total += piece["nll"] * piece["num_scored"]
            scored += piece["num_scored"]
        assert piece["state_chars"] == len(text)
    assert scored == whole["num_scored"] == len(text) - 1
    assert total / scored == pytest.approx(whole["nll"], abs=1e-5)
