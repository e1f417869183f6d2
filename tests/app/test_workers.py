"""Several worker processes: OpenBLAS sized per worker (usable cores from affinity and cgroup quotas, in files
made by the tests; the share per worker), and a real two-worker server whose every worker runs its share,
answers as one worker alone, and whose /metrics report the sum over both workers whichever one answers."""

import asyncio
import os
import re
import time

import httpx
import pytest

from app.cpus import blas_threads_per_worker, usable_cpus
from model import load_weights
from tests.app.test_batching import SHIPPED, post_all, prefixes
from tests.app.test_predict import library_greedy
from tests.conftest import start_server, stop_server

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, expected", [
    ({}, AFFINITY),  # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no quota
    ({"cpu.max": "50000 100000\n"}, 1),  # v2, half a core: rounded up
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "6400000 100000\n"}, AFFINITY),  # a quota above the affinity: the affinity
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, no quota
    ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: no quota
])
def test_usable_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == expected


@pytest.mark.parametrize("requested, workers, cpus, expected", [
    (0, 1, 2, 2), (0, 2, 2, 1), (0, 4, 2, 1), (0, 2, 16, 8), (0, 3, 16, 5), (3, 2, 2, 3)])
def test_blas_threads_share_the_cores_between_workers(requested, workers, cpus, expected):
    assert blas_threads_per_worker(requested, workers, cpus) == expected


def test_a_two_worker_server_runs_its_share_of_blas_threads_answers_as_alone_and_sums_its_metrics(tmp_path):
    shipped = load_weights(SHIPPED)
    base, proc = start_server(SHIPPED, tmp_path / "server.log", RNNLM_WORKERS="2")
    try:
        # A fresh connection each time: the kernel hands them to either worker.
        serving = [httpx.get(f"{base}/info").json()["serving"] for _ in range(8)]
        assert {(s["workers"], s["blas_threads"]) for s in serving} == {(2, max(1, usable_cpus() // 2))}
        texts = prefixes(16)
        responses = asyncio.run(post_all(base, [("/predict", {"prefix": p, "num_tokens": 100}) for p in texts]))
        for p, r in zip(texts, responses):
            assert r.status_code == 200, r.text
            assert r.json()["completion"] == library_greedy(shipped, p, 100), p
        # Request counters are written as they happen; the engine's figures within a publishing interval.
        deadline = time.monotonic() + 10
        while True:
            scrapes = [httpx.get(f"{base}/metrics").text for _ in range(4)]
            stepped = [sample(t, "rnnlm_batch_rows_stepped_total") for t in scrapes]
            if all(rows >= 16 * 100 for rows in stepped) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for text in scrapes:
            assert sample(text, "rnnlm_generated_tokens_total") == 16 * 100
            assert sample(text, "rnnlm_requests_total", route="/predict", status="200") == 16
            assert sample(text, "rnnlm_model_loaded") == 1
            assert sample(text, "rnnlm_batch_rows_stepped_total") >= 16 * 100  # every token read is a row step
    finally:
        stop_server(proc)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, its labels in any order (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:{{(.*)}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0
