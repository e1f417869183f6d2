"""End to end: the real server (``python -m app``, as ``rnnlm-serve`` runs it) on a free 127.0.0.1 port."""

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.app.test_perplexity import independent_nll
from tests.app.test_predict import library_greedy, parse_events
from tests.conftest import free_port


def test_real_server_serves_predict_and_perplexity_over_tcp(server, loaded):
    base, proc = server
    with httpx.Client(base_url=base, timeout=10) as http:
        r = http.post("/predict", json={"prefix": "First Citizen:\n", "num_tokens": 50})
        assert r.status_code == 200
        assert r.json()["completion"] == library_greedy(loaded, "First Citizen:\n", 50)
        r = http.post("/perplexity", json={"text": "hear me speak."})
        assert r.json()["nll"] == pytest.approx(independent_nll(loaded, "hear me speak."), rel=1e-5)
        assert http.get("/info").json()["limits"]["max_num_tokens"] == 500  # settings from the environment
        with http.stream("POST", "/predict", json={"prefix": "All:", "num_tokens": 5, "stream": True}) as s:
            events = parse_events(s.read().decode())
        assert "".join(json.loads(d)["text"] for n, d in events if n == "token") == library_greedy(loaded, "All:", 5)
        assert events[-1][0] == "result"


def test_real_server_shuts_down_cleanly_on_sigterm(server):
    _, proc = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("content, problem", [(None, "file not found"), (b"garbage" * 20, "not a safetensors file")])
def test_start_up_with_a_bad_weight_file_exits_non_zero_with_one_line(tmp_path, content, problem):
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(free_port()), "--weights", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and str(path) in lines[0]


@pytest.mark.parametrize(
    "env, args, name",
    [
        ({"RNNLM_BLAS_THREADS": "-1"}, [], "RNNLM_BLAS_THREADS"),
        ({"RNNLM_MAX_BATCH_SIZE": "many"}, [], "RNNLM_MAX_BATCH_SIZE"),
        ({}, ["--workers", "0"], "--workers"),
        ({}, ["--port", "99999"], "--port"),
    ],
)
def test_an_invalid_setting_exits_with_status_2_and_one_line_naming_it(weights_file, env, args, name):
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--weights", str(weights_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnlm-serve: error: ") and name in lines[0], proc.stderr
