"""Load test: the real server on 127.0.0.1 driven by an httpx async load generator at 1, 8 and 64 concurrent
clients, each sending /predict (N = 200 tokens, greedy, prefixes drawn from the corpus) back to back for a
bounded time. The same load then runs against the server with batching and the prefix cache switched off,
in the same run, and the ratio is printed.

    python benchmarks/load.py [--weights weights/rnn.safetensors] [--clients 1 8 64] [--tokens 200]
                              [--seconds 10] [--corpus ../shared/data/tinyshakespeare.txt]

The load generator shares the machine with the server (2 cores here), so the figures include its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import start_server, stop_server  # noqa: E402

MODES = {
    "batching + cache": {},
    "batching/cache off": {"RNNLM_BATCHING": "false", "RNNLM_PREFIX_CACHE_ENTRIES": "0"},
}


async def run_load(base: str, clients: int, seconds: float, tokens: int, prefixes: list[str]) -> dict:
    latencies: list[float] = []
    generated = 0
    errors = 0
    rng = random.Random(clients)
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
    elapsed = time.perf_counter() - start
    latencies.sort()
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
    args = parser.parse_args()
    corpus = Path(args.corpus).read_text(encoding="utf-8")
    rng = random.Random(0)
    prefixes = []
    for _ in range(2000):
        start, length = rng.randrange(len(corpus) - 200), rng.randint(20, 120)
        prefixes.append(corpus[start : start + length])

    results: dict[tuple[str, int], dict] = {}
    for mode, env in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            base, proc = start_server(args.weights, Path(tmp) / "server.log", **env)
            try:
                for clients in args.clients:
                    asyncio.run(run_load(base, clients, 1.0, args.tokens, prefixes))  # warm-up
                    r = results[mode, clients] = asyncio.run(run_load(base, clients, args.seconds, args.tokens,
                                                                      prefixes))
                    print(f"{mode:<18} {clients:>3} clients: {r['requests/s']:>7,.1f} req/s  "
                          f"{r['tokens/s']:>8,.0f} tok/s  p50 {r['p50 ms']:>7,.1f} ms  p99 {r['p99 ms']:>7,.1f} ms  "
                          f"errors {r['errors']}  ({r['requests']} requests)", flush=True)
            finally:
                stop_server(proc)
    on, off = MODES
    for clients in args.clients:
        a, b = results[on, clients], results[off, clients]
        print(f"{clients:>3} clients: batching + cache / off = {a['tokens/s'] / b['tokens/s']:.2f}x tokens/s, "
              f"p50 {a['p50 ms']:.1f} vs {b['p50 ms']:.1f} ms")


if __name__ == "__main__":
    main()
