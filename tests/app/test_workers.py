"""Several HTTP worker processes and one engine: the engine's OpenBLAS threads (usable cores from affinity and
cgroup quotas, in files made by the tests), and a real two-worker server whose workers share the engine."""

import asyncio
import os
import re

import httpx
import pytest

from app.engine.cpus import engine_blas_threads, usable_cpus
from model import load_weights
from tests.app.test_batching import SHIPPED, post_all, prefixes
from tests.app.test_predict import library_greedy
from tests.conftest import start_server, stop_server

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, AFFINITY),  # no cgroup files: the affinity
        ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no quota
        ({"cpu.max": "50000 100000\n"}, 1),  # v2, half a core: rounded up
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "6400000 100000\n"}, AFFINITY),  # a quota above the affinity: the affinity
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, no quota
        ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: no quota
    ],
)
def test_usable_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == expected


@pytest.mark.parametrize("requested, cpus, expected", [(0, 1, 1), (0, 2, 2), (0, 16, 16), (3, 2, 3), (1, 16, 1)])
def test_the_engine_takes_the_requested_blas_threads_or_the_usable_cores(requested, cpus, expected):
    assert engine_blas_threads(requested, cpus) == expected


def test_two_http_workers_share_one_engine_its_prefix_cache_and_its_metrics(tmp_path):
    """RNNLM_WORKERS=2: both workers relay to the same engine process (one batch, one prefix cache): a
    continuation hits the cache whichever worker it reaches, answers are as alone, and every scrape reports the
    HTTP figures summed over both workers and the engine's once."""
    shipped = load_weights(SHIPPED)
    base, proc = start_server(SHIPPED, tmp_path / "server.log", RNNLM_WORKERS="2")
    try:
        # A fresh connection each time: the kernel hands them to either worker.
        serving = [httpx.get(f"{base}/info").json()["serving"] for _ in range(8)]
        assert len({s["engine_pid"] for s in serving}) == 1 and {s["workers"] for s in serving} == {2}
        texts = prefixes(16)
        responses = asyncio.run(post_all(base, [("/predict", {"prefix": p, "num_tokens": 100}) for p in texts]))
        for p, r in zip(texts, responses):
            assert r.status_code == 200, r.text
            assert r.json()["completion"] == library_greedy(shipped, p, 100), p
        # Each continuation on a fresh connection (either worker): the engine's cache has the whole text.
        for p, r in zip(texts[:8], responses[:8]):
            follow = p + r.json()["completion"]
            again = httpx.post(f"{base}/predict", json={"prefix": follow + "\n", "num_tokens": 10}).json()
            assert again["cached_chars"] == len(follow)
            assert again["completion"] == library_greedy(shipped, follow + "\n", 10)
        for text in [httpx.get(f"{base}/metrics").text for _ in range(4)]:
            assert sample(text, "rnnlm_generated_tokens_total") == 16 * 100 + 8 * 10
            assert sample(text, "rnnlm_requests_total", route="/predict", status="200") == 16 + 8
            assert sample(text, "rnnlm_model_loaded") == 1
            # every token read is a row step, counted once by the one engine
            assert 16 * 100 + 8 * 10 <= sample(text, "rnnlm_batch_rows_stepped_total") < 2 * (16 * 100 + 8 * 10)
            assert sample(text, "rnnlm_prefix_cache_hits_total") >= 8
    finally:
        stop_server(proc)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, its labels in any order (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0
