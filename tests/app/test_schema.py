"""Property-based API tests from the OpenAPI schema: the schemathesis command, as users run it, against the
real server on 127.0.0.1 — no 5xx, responses match the schema, schema-valid requests are accepted and invalid
ones refused: every check passes."""

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import make_weights_file, start_server, stop_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
ROOT = Path(__file__).resolve().parents[2]


def test_api_conforms_to_its_schema(tmp_path):
    weights = make_weights_file(tmp_path / "tiny.safetensors")
    base, proc = start_server(weights, tmp_path / "server.log", RNNLM_MAX_NUM_TOKENS="50", RNNLM_MAX_TEXT_CHARS="2000")
    try:
        tokens = [
            httpx.post(f"{base}/predict", json={"prefix": prefix, "num_tokens": n, "return_state": True}).json()[
                "state"
            ]
            for prefix, n in (("F", 0), ("All:\n", 5))
        ]
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.app.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
            "RNNLM_TEST_STATE_TOKENS": ",".join(tokens),
        }
        # Every check, "schema-valid data is accepted" included: the schema states the cross-field rules (a text
        # needs 2 characters or a context; /tokenize takes prompt or messages) and this server's limits and
        # vocabulary (token ids); fields it refuses with a 400 are declared with the values it takes; state tokens
        # are drawn from genuine ones (tests/app/schemathesis_hooks.py).
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "100",
                "--seed",
                "1",
                "--workers",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env=env,
        )
    finally:
        stop_server(proc)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
