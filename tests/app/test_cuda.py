"""The service with its model on a CUDA device answers exactly as with the model on the CPU.
Needs a CUDA device; on a CPU-only machine (CI) these are reported as skipped."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from model import load_weights
from tests.conftest import assert_greedy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH = [{"prefix": p, "num_tokens": 80} for p in ("First", "All:", "Speak, speak", "hear me", "Before we", "A")]
REQUESTS = [
    ("/predict", {"prefix": "First Citizen:\n", "num_tokens": 120}),
    ("/predict", {"prefix": "Speak", "num_tokens": 40, "temperature": 1.0, "top_k": 10, "seed": 7}),
    ("/perplexity", {"text": "Before we proceed any further, hear me speak.", "token_logprobs": True}),
]


def answers(settings) -> list[dict]:
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()
        out = [client.post(path, json=body).json() for path, body in REQUESTS]
        with ThreadPoolExecutor(8) as pool:  # concurrent: the scheduler batches them on the device
            together = list(pool.map(lambda body: client.post("/predict", json=body).json(), BATCH))
    return [info] + out + [together]


def test_cuda_service_answers_as_the_cpu_service(settings):
    cpu_info, *cpu = answers(settings)
    gpu_info, *gpu = answers(settings.model_copy(update={"device": "cuda"}))
    assert gpu_info["device"].startswith("cuda") and cpu_info["device"] == "cpu"
    assert gpu[0] == cpu[0] and gpu[1] == cpu[1]
    assert gpu[2]["perplexity"] == pytest.approx(cpu[2]["perplexity"], rel=1e-5)
    assert gpu[2]["token_logprobs"] == pytest.approx(cpu[2]["token_logprobs"], abs=1e-4)
    # Six rows stepped together: the GPU's matmuls (and a CUDA graph's padded batch) round differently from the
    # CPU's, so where two characters tie within float error either may follow; each completion is checked
    # against the model's forward pass on the CPU along its own history.
    loaded = load_weights(settings.weights)
    for body, g, c in zip(BATCH, gpu[3], cpu[3]):
        assert len(g["completion"]) == len(c["completion"]) == body["num_tokens"]
        assert_greedy(loaded, body["prefix"], g["completion"])
