"""A fair share of the batch: how long a small request waits while one big request holds the batch.

The real server (``python -m app``, the shipped tanh RNN, ``RNNLM_MAX_BATCH_SIZE`` rows) on 127.0.0.1. One
``/v1/completions`` request of ``--prompts`` prompts × ``--hog-tokens`` greedy tokens fills the batch; once it
does, ``--probes`` small ``/predict`` requests (``--tokens`` tokens after a 50-character uncached prefix) are
sent one after another, and their latencies are printed beside the same probes on the idle server, measured
in the same run. Only one probe is in flight at a time, so a Python client is cheap enough here.

    python benchmarks/fair_share.py [--prompts 128] [--hog-tokens 2000] [--probes 10] [--tokens 50]
    python benchmarks/fair_share.py --tree ../old-checkout    # the server of another tree, for a same-run A/B
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from tests.conftest import start_server, stop_server  # noqa: E402


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def probes(http: httpx.Client, texts: list[str], tokens: int) -> list[float]:
    times = []
    for text in texts:
        start = time.perf_counter()
        r = http.post("/predict", json={"prefix": text, "num_tokens": tokens})
        times.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--hog-tokens", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="RNNLM_MAX_BATCH_SIZE")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server runs")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/tinyshakespeare.txt")
    args = parser.parse_args()
    print_machine(1)
    text = args.corpus.read_text(encoding="utf-8")
    text = text[int(len(text) * 0.9) :]  # the validation split
    rng = random.Random(0)
    starts = rng.sample(range(len(text) - 50), args.prompts + 2 * args.probes)
    texts = [text[s : s + 50] for s in starts]
    hog_prompts, idle_texts, busy_texts = (
        texts[: args.prompts],
        texts[args.prompts : args.prompts + args.probes],
        texts[args.prompts + args.probes :],
    )
    weights = str(args.tree / "weights/rnn.safetensors")
    log = Path("/tmp/rnnlm-fair-share.log")
    here = os.getcwd()
    os.chdir(args.tree)  # `python -m app` imports the tree it starts in
    try:
        base, proc = start_server(
            weights,
            log,
            RNNLM_MAX_BATCH_SIZE=str(args.batch),
            RNNLM_MAX_NUM_TOKENS=str(max(2000, args.hog_tokens)),
            RNNLM_MAX_REQUEST_ROWS=str(args.prompts),
            RNNLM_MAX_QUEUE=str(max(256, args.prompts)),
        )
    finally:
        os.chdir(here)
    print(
        f"tree {args.tree}: batch {args.batch} rows; the big request: {args.prompts} prompts × {args.hog_tokens} "
        f"tokens; probes: /predict {args.tokens} tokens after 50 uncached characters, one at a time"
    )
    try:
        with httpx.Client(base_url=base, timeout=600) as http:
            probes(http, idle_texts[:2], args.tokens)  # warm-up
            idle = probes(http, idle_texts, args.tokens)
            hog: dict = {}

            def run_hog() -> None:
                start = time.perf_counter()
                body = {"prompt": hog_prompts, "max_tokens": args.hog_tokens, "temperature": 0}
                r = httpx.post(f"{base}/v1/completions", json=body, timeout=3600)
                hog.update(status=r.status_code, seconds=time.perf_counter() - start)

            thread = threading.Thread(target=run_hog)
            thread.start()
            while metric(http.get("/metrics").text, "rnnlm_batch_rows") < min(args.batch, args.prompts):
                time.sleep(0.01)
            busy = probes(http, busy_texts, args.tokens)
            still_running = thread.is_alive()
            aside = metric(http.get("/metrics").text, "rnnlm_batch_rows_put_aside_total")
            thread.join()
    finally:
        stop_server(proc)
    p50_idle, p50_busy = statistics.median(idle) * 1e3, statistics.median(busy) * 1e3
    print(f"probe p50 idle        {p50_idle:9.1f} ms   max {max(idle) * 1e3:9.1f} ms")
    print(
        f"probe p50 beside hog  {p50_busy:9.1f} ms   max {max(busy) * 1e3:9.1f} ms   "
        f"({p50_busy / p50_idle:.1f}× idle; the big request {'still running' if still_running else 'had ended'})"
    )
    print(f"first probe beside hog {busy[0] * 1e3:8.1f} ms")
    print(f"big request: HTTP {hog['status']} in {hog['seconds']:.1f} s; rows put aside {aside:.0f}")


if __name__ == "__main__":
    main()
