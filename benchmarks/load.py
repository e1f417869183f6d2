"""Load test: the real server on 127.0.0.1 driven by an httpx async load generator at 1, 8 and 64 concurrent
clients, each sending /predict (N = 200 tokens, greedy, prefixes drawn from the corpus) back to back for a
bounded time: the default server (one worker) and, on a machine with several usable cores, one worker per
core (``RNNLM_WORKERS``, each with its share of OpenBLAS threads). The same load then runs, in the same run,
against the server with batching and the prefix cache switched off, and against a server that runs the
notebook's predict loop per request (benchmarks/notebook_server.py); the ratios are printed.

    python benchmarks/load.py [--weights weights/rnn.safetensors] [--clients 1 8 64] [--tokens 200]
                              [--seconds 10] [--corpus ../shared/data/tinyshakespeare.txt]

The load generator shares the machine with the server (2 cores here), so the figures include its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.cpus import usable_cpus  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

CORES = usable_cpus()
SERVED = {  # name: (server module, environment)
    "batching + cache": ("app", {}),
    **({f"{CORES} workers": ("app", {"RNNLM_WORKERS": str(CORES)})} if CORES > 1 else {}),
}
BASELINES = {
    "batching/cache off": ("app", {"RNNLM_BATCHING": "false", "RNNLM_PREFIX_CACHE_ENTRIES": "0"}),
    "notebook loop": ("benchmarks.notebook_server", {}),
}
MODES = {**SERVED, **BASELINES}


async def run_clients(base: str, clients: int, seconds: float, tokens: int, prefixes: list[str],
                      seed: int) -> tuple[list[float], int, int, float]:
    """``clients`` concurrent clients, each sending /predict back to back until ``seconds`` have passed:
    (latencies in s, tokens generated, errors, elapsed s)."""
    latencies: list[float] = []
    generated = 0
    errors = 0
    rng = random.Random(seed)
    # One connection per client, like independent users (httpx's shared pool itself collapses at 64
    # concurrent connections: 126 req/s on /health here, against 462 with a client each). Made before the
    # clock starts: each loads the CA bundle (~20 ms).
    https = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal generated, errors
        async with http:
            while time.perf_counter() < deadline:
                body = {"prefix": rng.choice(prefixes), "num_tokens": tokens}
                start = time.perf_counter()
                try:
                    r = await http.post("/predict", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                    generated += r.json()["num_tokens"]
                else:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(http) for http in https))
    return latencies, generated, errors, time.perf_counter() - start


def _client_process(args: tuple) -> tuple[list[float], int, int, float]:
    return asyncio.run(run_clients(*args))


def run_load(base: str, clients: int, seconds: float, tokens: int, prefixes: list[str],
             pool: ProcessPoolExecutor | None = None) -> dict:
    """The load, from this process or split over the pool's processes (an asyncio client process tops out
    near one core, which at 64 clients is the limit, not the server)."""
    if pool is None or clients == 1:
        parts = [asyncio.run(run_clients(base, clients, seconds, tokens, prefixes, clients))]
    else:
        n = pool._max_workers
        shares = [clients // n + (i < clients % n) for i in range(n)]
        jobs = [(base, k, seconds, tokens, prefixes, clients * 100 + i) for i, k in enumerate(shares) if k]
        parts = list(pool.map(_client_process, jobs))
    latencies = sorted(lat for part in parts for lat in part[0])
    generated, errors = sum(p[1] for p in parts), sum(p[2] for p in parts)
    elapsed = max(p[3] for p in parts)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
    return {"requests/s": len(latencies) / elapsed, "tokens/s": generated / elapsed, "p50 ms": pick(0.5),
            "p99 ms": pick(0.99), "errors": errors, "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rnn.safetensors")
    parser.add_argument("--corpus", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level (after a 1 s warm-up)")
    parser.add_argument("--processes", type=int, default=1,
                        help="client processes to split the clients over (default 1: one asyncio loop)")
    args = parser.parse_args()
    corpus = Path(args.corpus).read_text(encoding="utf-8")
    rng = random.Random(0)
    prefixes = []
    for _ in range(2000):
        start, length = rng.randrange(len(corpus) - 200), rng.randint(20, 120)
        prefixes.append(corpus[start : start + length])

    pool = ProcessPoolExecutor(args.processes) if args.processes > 1 else None
    results: dict[tuple[str, int], dict] = {}
    for mode, (module, env) in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            base, proc = start_server(args.weights, Path(tmp) / "server.log", module, **env)
            try:
                for clients in args.clients:
                    run_load(base, clients, 1.0, args.tokens, prefixes, pool)  # warm-up
                    r = results[mode, clients] = run_load(base, clients, args.seconds, args.tokens, prefixes, pool)
                    print(f"{mode:<18} {clients:>3} clients: {r['requests/s']:>7,.1f} req/s  "
                          f"{r['tokens/s']:>8,.0f} tok/s  p50 {r['p50 ms']:>7,.1f} ms  p99 {r['p99 ms']:>7,.1f} ms  "
                          f"errors {r['errors']}  ({r['requests']} requests)", flush=True)
            finally:
                stop_server(proc)
    for clients in args.clients:
        for served in SERVED:
            a = results[served, clients]
            for baseline in BASELINES:
                b = results[baseline, clients]
                print(f"{clients:>3} clients: {served} / {baseline} = {a['tokens/s'] / b['tokens/s']:.2f}x tokens/s, "
                      f"p50 {a['p50 ms']:.1f} vs {b['p50 ms']:.1f} ms")


if __name__ == "__main__":
    main()
