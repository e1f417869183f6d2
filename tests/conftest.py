"""Shared fixtures: a small model saved to a weight file, settings that point at it, and an app client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model import RNNLM, LMConfig, Vocab, load_weights, save_weights

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"


def make_weights_file(path, cell: str = "rnn") -> str:
    """A small random-weight model (tanh RNN by default) over the characters of CORPUS, sharpened ×1.5 so greedy
    text varies — and no more: at ×3 the 2-layer tanh RNN is chaotic, and a 1e-7 difference in rounding (a
    batched matmul against a one-row one, a long read against short ones) grows to another text within ~50
    characters, so no two ways of computing the same thing would agree."""
    torch.manual_seed(0)
    vocab = Vocab.from_corpus(CORPUS)
    model = RNNLM(LMConfig(cell=cell, vocab_size=len(vocab), hidden_size=32, num_layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    save_weights(path, model, vocab, {"corpus": [{"name": "inline"}], "note": "test model"})
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory):
    """The trainer's token-id files go to a folder of this test session (and its subprocesses), never ~/.cache."""
    os.environ["RNNLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("rnnlm-cache"))
    yield os.environ["RNNLM_CACHE_DIR"]


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> str:
    return make_weights_file(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="session")
def loaded(weights_file):
    return load_weights(weights_file)


@pytest.fixture
def settings(weights_file) -> Settings:
    return Settings(weights=weights_file, max_num_tokens=300, max_text_chars=5000, max_body_bytes=20_000)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def assert_error(response, status: int, param: str | None = "<any>") -> dict:
    """The project's error body, with the given status (and parameter, when one is named)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if param != "<any>":
        assert error["param"] == param
    return error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: str, log_path, module: str = "app", **env: str):
    """``python -m app`` (what ``rnnlm-serve`` runs; or another ``module`` taking the same options) on a free
    127.0.0.1 port; returns (base URL, process) once /ready answers 200 (at most 30 s)."""
    port = free_port()
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--weights",
            weights,
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, open(log_path).read()
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return base, proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become ready in 30 s"
        time.sleep(0.1)


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    proc.log.close()


@pytest.fixture
def server(weights_file, tmp_path):
    base, proc = start_server(weights_file, tmp_path / "server.log", RNNLM_MAX_NUM_TOKENS="500")
    yield base, proc
    stop_server(proc)


def assert_greedy(loaded, prefix: str, completion: str, tolerance: float = 1e-4) -> None:
    """``completion`` is greedy after ``prefix`` by the model's own forward pass over the whole text: each
    character is the likeliest one (never ``<unk>``) given the text before it, up to ``tolerance`` in logit.

    The tolerance admits only float ties: a batched matmul rounds differently from a one-row one (by ~1e-6 in
    the logits), so where two characters are that close either may be chosen — after which the texts differ,
    and each is still checked along its own history."""
    ids = loaded.vocab.encode(prefix + completion)
    with torch.inference_mode():
        logits, _ = loaded.model(ids[None, :-1] if len(completion) else ids[None])
    for i in range(len(completion)):
        position = len(prefix) - 1 + i  # the logits there predict completion[i]
        row = logits[0, position, 1:]
        chosen = int(ids[len(prefix) + i]) - 1
        gap = float(row.max() - row[chosen])
        assert gap <= tolerance, (
            f"character {i} of the completion of {prefix!r} is {completion[i]!r}, "
            f"{gap:.3g} below the likeliest {loaded.vocab.tokens[int(row.argmax()) + 1]!r}"
        )
