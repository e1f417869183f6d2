"""Load test with wrk: the real server (``python -m app``) on 127.0.0.1, driven by wrk — a C load generator
that costs the 2-core machine far less than the server does (a Python client measures mostly itself) — with a
Lua script that POSTs /predict bodies whose prefixes are drawn at random from the validation text (the last
10 % of tiny Shakespeare).

Lines, each measured in this one run (so ratios between them hold while the machine's speed drifts):
- ``engine in process``: the engine alone, no HTTP or IPC — one request at a time through
  :class:`app.engine.core.EngineCore` (the time to beat for 1 client), and for each client count above 1,
  that many requests submitted at once (the time to beat for that many clients), its OpenBLAS threads sized
  per turn as the serving engine sizes them (``app/engine/cpus.py``: one thread for the tanh RNN at 64 rows,
  so that the HTTP side has the other core) — and, beside it, with every core to the engine (what a machine
  with cores to spare for HTTP could serve). The served/in-process ratios compare with the first;
- the default server at each ``--clients`` count (1 and 64 unless told), N tokens, greedy; streaming, and
  sampled without a seed (temperature 0.8, top-p 0.95), at 64 clients;
- a 0-token request (warm only) with an uncached prefix of 1, 10, 50 and 200 characters, 1 client;
- ``RNNLM_WORKERS=2`` at 64 clients; the gated GRU (``--gated``) at 1 and 64 clients;
- ``notebook loop``: a server running the notebook's predict loop per request (benchmarks/notebook_server.py).

    python benchmarks/load.py [--seconds 10] [--tokens 200] [--only default,workers,gated,notebook,zero]
                              [--device cuda] [--clients 1 64 512] [--http-workers 8]
    python benchmarks/load.py --soak 300   # 5 minutes at 64 clients: errors, RSS growth, same greedy outputs

Needs ``wrk`` on the PATH (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from tests.conftest import start_server, stop_server  # noqa: E402

LUA = r"""
local prefixes = {}
for line in io.lines(os.getenv("RNNLM_PREFIXES")) do prefixes[#prefixes + 1] = line end
local tail = os.getenv("RNNLM_BODY_TAIL")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
function init(args)
  counter = tonumber(os.getenv("RNNLM_SEED") or "1") + math.floor(os.clock() * 1000000)
  math.randomseed(counter)
end
function request()
  local p = prefixes[math.random(#prefixes)]
  return wrk.format(nil, "/predict", nil, '{"prefix": ' .. p .. tail .. '}')
end
"""


def validation_text(corpus: Path) -> str:
    text = corpus.read_text(encoding="utf-8")
    return text[int(len(text) * 0.9) :]


def write_prefixes(path: Path, text: str, length: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    starts = rng.sample(range(len(text) - length), min(count, len(text) - length))
    path.write_text("\n".join(json.dumps(text[s : s + length]) for s in starts) + "\n", encoding="utf-8")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * _UNITS[unit]


def run_wrk(base: str, clients: int, seconds: float, prefixes: Path, tail: str, lua: Path) -> dict:
    env = {**os.environ, "RNNLM_PREFIXES": str(prefixes), "RNNLM_BODY_TAIL": tail}
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(clients),
            "-d",
            f"{seconds:g}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(lua),
            base,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    requests_s = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    nan = float("nan")
    return {
        "req/s": requests_s,
        "p50": _ms(latency["50"]) if "50" in latency else nan,
        "p99": _ms(latency["99"]) if "99" in latency else nan,
        "errors": errors,
        "raw": out,
    }


def engine_in_process(
    weights: str,
    prefixes: list[str],
    tokens: int,
    repeats: int,
    rows: int = 1,
    device: str = "cpu",
    every_core: bool = False,
) -> float:
    """Median ms for ``rows`` requests submitted at once (uncached prefixes, ``tokens`` greedy each) through the
    engine alone, until the last one ends: its OpenBLAS threads sized per turn as the serving engine sizes them
    (one at 64 rows of the tanh RNN, leaving a core to the HTTP side), or with ``every_core`` all of them."""
    from app import protocol as p
    from app.engine.core import EngineCore, _Connection, _Request
    from app.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            weights=weights,
            prefix_cache_entries=0,
            device=device,
            max_batch_size=max(rows, 64),
            max_queue=max(rows, 256),
        )
        core = EngineCore(settings, f"{tmp}/engine.sock")
        times = []
        bench = _Connection(None)
        for i in range(repeats):
            start = time.perf_counter()
            for j in range(rows):
                body = p.GenerateRequest(prefixes[(i * rows + j) % len(prefixes)], tokens, [{"temperature": 0.0}])
                core._submit(_Request(bench, i * rows + j, None), core._generation_job, body)
            while core.scheduler.busy:
                if not every_core:
                    core.blas.fit(core.scheduler.batch_rows + core.scheduler.queued)
                core.scheduler.run_once()
            times.append(time.perf_counter() - start)
            core._outbox.clear()
        core.close()
    return statistics.median(times[repeats // 10 :]) * 1000


def line(name: str, clients: int, tokens: int, r: dict) -> str:
    return (
        f"{name:<22} {clients:>3} clients: {r['req/s'] * tokens:>9,.0f} tok/s  {r['req/s']:>8,.1f} req/s  "
        f"p50 {r['p50']:>7.2f} ms  p99 {r['p99']:>7.2f} ms  errors {r['errors']}"
    )


def rss_kib(pid: int) -> int:
    total = 0
    for p in [pid, *children(pid)]:
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *children(kid)]
    return out


def greedy_outputs(base: str, prompts: list[str], tokens: int) -> list[str]:
    return [
        httpx.post(f"{base}/predict", json={"prefix": q, "num_tokens": tokens}, timeout=60).json()["completion"]
        for q in prompts
    ]


def soak(args, weights: str, prefixes: Path, lua: Path, tmp: Path) -> None:
    base, proc = start_server(weights, tmp / "soak.log")
    try:
        pids = {"http": proc.pid, "engine": httpx.get(f"{base}/info").json()["serving"]["engine_pid"]}
        prompts = [json.loads(x) for x in prefixes.read_text().splitlines()[:8]]
        before = greedy_outputs(base, prompts, args.tokens)
        tail = f', "num_tokens": {args.tokens}'
        run_wrk(base, 64, 60, prefixes, tail, lua)  # the first minute: warm-up, not judged
        rss0 = {k: rss_own(v) for k, v in pids.items()}
        r = run_wrk(base, 64, args.soak - 60, prefixes, tail, lua)
        rss1 = {k: rss_own(v) for k, v in pids.items()}
        after = greedy_outputs(base, prompts, args.tokens)
        print(line(f"soak {args.soak:.0f} s", 64, args.tokens, r))
        for k in pids:
            print(
                f"  {k} RSS after the first minute {rss0[k] / 1024:.1f} MiB, at the end {rss1[k] / 1024:.1f} MiB "
                f"({(rss1[k] / rss0[k] - 1) * 100:+.1f} %)"
            )
        print(f"  greedy outputs at the end equal those at the start: {before == after}")
    finally:
        stop_server(proc)


def rss_own(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rnn.safetensors")
    parser.add_argument("--gated", default="weights/gated.safetensors")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--prefix-chars", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="per line (after a 2 s warm-up)")
    parser.add_argument(
        "--only", default="default,zero,workers,gated,notebook", help="comma-separated parts to run (default: all)"
    )
    parser.add_argument("--soak", type=float, default=0, help="instead: a soak of this many seconds at 64 clients")
    parser.add_argument("--device", default="cpu", help="RNNLM_DEVICE for the servers and the in-process engine")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 64], help="client counts for the default server")
    parser.add_argument("--http-workers", type=int, default=1, help="RNNLM_WORKERS for the default server")
    args = parser.parse_args()
    print_machine(2, args.device)
    if shutil.which("wrk") is None:
        sys.exit("load.py: error: wrk is not installed (apt-get install wrk)")
    only = set(args.only.split(","))
    text = validation_text(Path(args.corpus))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lua = tmp / "predict.lua"
        lua.write_text(LUA)
        prefixes = tmp / "prefixes.txt"
        write_prefixes(prefixes, text, args.prefix_chars, 20000, 0)
        if args.soak:
            return soak(args, args.weights, prefixes, lua, tmp)
        tail = f', "num_tokens": {args.tokens}'
        results: dict[tuple[str, int], dict] = {}

        def measure(
            name: str,
            base: str,
            clients: int,
            body_tail: str = tail,
            files: Path = prefixes,
            tokens: int = args.tokens,
            seconds: float = args.seconds,
        ) -> dict:
            run_wrk(base, clients, 2, files, body_tail, lua)  # warm-up
            r = results[name, clients] = run_wrk(base, clients, seconds, files, body_tail, lua)
            print(line(name, clients, tokens, r), flush=True)
            return r

        most = max(64, *args.clients)
        env = {"RNNLM_DEVICE": args.device, "RNNLM_MAX_BATCH_SIZE": str(most), "RNNLM_MAX_QUEUE": str(max(256, most))}
        in_process: dict[int, float] = {}  # rows -> tok/s of the engine alone
        if "default" in only:
            sample = [json.loads(x) for x in prefixes.read_text().splitlines()[:4000]]
            engine_ms = engine_in_process(args.weights, sample, args.tokens, 200, device=args.device)
            print(
                f"{'engine in process':<22}   1 request : {engine_ms:.2f} ms median "
                f"({args.prefix_chars}-char uncached prefix, {args.tokens} tokens)",
                flush=True,
            )
            for rows in args.clients:
                if rows > 1:
                    ms = engine_in_process(args.weights, sample, args.tokens, 7, rows, args.device)
                    in_process[rows] = rows * args.tokens / ms * 1000
                    ms_all = engine_in_process(args.weights, sample, args.tokens, 7, rows, args.device, True)
                    print(
                        f"{'engine in process':<22} {rows:>3} requests at once: {in_process[rows]:>9,.0f} tok/s "
                        f"(BLAS threads as served; every core to the engine: {rows * args.tokens / ms_all * 1000:,.0f})"
                    )
        base, proc = start_server(args.weights, tmp / "default.log", RNNLM_WORKERS=str(args.http_workers), **env)
        try:
            if "default" in only:
                for clients in args.clients:
                    r = measure("default", base, clients)
                    if clients == 1:
                        print(f"  1 client p50 / engine in process = {r['p50'] / engine_ms:.2f}x")
                    elif clients in in_process:
                        served = r["req/s"] * args.tokens
                        print(f"  {clients} clients served / engine in process = {served / in_process[clients]:.2f}")
                if 64 in args.clients:
                    measure("default, streaming", base, 64, tail + ', "stream": true')
                    measure("default, sampled", base, 64, tail + ', "temperature": 0.8, "top_p": 0.95')
            if "zero" in only:
                for n in (1, 10, 50, 200):
                    files = tmp / f"prefixes{n}.txt"
                    write_prefixes(files, text, n, 100000, n)
                    measure(f"0 tokens, {n}-char prefix", base, 1, ', "num_tokens": 0', files, 0)
        finally:
            stop_server(proc)
        if "workers" in only:
            base, proc = start_server(args.weights, tmp / "workers.log", **{**env, "RNNLM_WORKERS": "2"})
            try:
                measure("RNNLM_WORKERS=2", base, 64)
            finally:
                stop_server(proc)
        if "gated" in only:
            base, proc = start_server(args.gated, tmp / "gated.log", **env)
            try:
                measure("gated GRU 2x512", base, 1)
                measure("gated GRU 2x512", base, 64)
            finally:
                stop_server(proc)
        if "notebook" in only:
            base, proc = start_server(args.weights, tmp / "notebook.log", "benchmarks.notebook_server")
            try:  # 64 requests at a time take ~20 s each there: a window long enough to see them finish
                nb = measure("notebook loop", base, 64, seconds=max(args.seconds, 60))
            finally:
                proc.kill()
                stop_server(proc)
            if "default" in only:
                ratio = results["default", 64]["req/s"] / nb["req/s"]
                print(f"  64 clients: default / notebook loop = {ratio:.1f}x tok/s")


if __name__ == "__main__":
    main()
