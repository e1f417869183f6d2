"""A conversation replayed three ways: what portable state tokens save.

A 50-turn conversation: each turn the client adds a ~200-character piece of text (the next stretch of the
validation text, the last 10 % of tiny Shakespeare) and the server replies with 20 greedy characters. The
same conversation is replayed, in this one run, against real servers (``python -m app`` on 127.0.0.1):

- ``(a) resend, no cache``: every turn sends the whole history; the prefix cache is off, so the engine reads it all;
- ``(b) resend, prefix cache``: the same requests to one server with its prefix cache (the default);
- ``(b2) resend, cache, 2 servers``: the same, alternating between two servers (as a load balancer would),
  so each server's cache holds only the turns it served;
- ``(c) state tokens, 2 servers``: every turn sends only its new text and the previous reply's state token,
  alternating between two servers that share ``RNNLM_STATE_SECRET``; no server keeps anything (``(c1)``: the
  same against one server, to tell what the tokens cost from what two servers on one machine cost).

For each: characters the engines read (``rnnlm_engine_characters_read_total``; prompts not found in the cache),
bytes the client sent, and the wall time of the 50 turns (sequential requests: one conversation's latency, so
an httpx client is fair here). Every replay's replies are checked equal to (a)'s. Also prints the state
token's size for both shipped models.

    python benchmarks/state.py [--turns 50] [--piece 200] [--reply 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from tests.conftest import start_server, stop_server  # noqa: E402

SECRET = "benchmark secret"


def chars_read(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return float(re.search(r"^rnnlm_engine_characters_read_total (\S+)$", text, re.M).group(1))


def replay(http: httpx.Client, bases: list[str], pieces: list[str], reply: int, with_state: bool) -> dict:
    """One conversation: returns the replies, wall seconds and bytes sent."""
    history, state, replies, sent = "", None, [], 0
    start = time.perf_counter()
    for turn, piece in enumerate(pieces):
        base = bases[turn % len(bases)]
        if with_state:
            body = {"prefix": piece, "num_tokens": reply, "return_state": True}
            if state is not None:
                body["state"] = state
        else:
            body = {"prefix": history + piece, "num_tokens": reply}
        payload = json.dumps(body)
        sent += len(payload.encode())
        r = http.post(f"{base}/predict", content=payload, headers={"Content-Type": "application/json"})
        r.raise_for_status()
        out = r.json()
        replies.append(out["completion"])
        history += piece + out["completion"]
        state = out.get("state")
    return {"replies": replies, "seconds": time.perf_counter() - start, "bytes": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(ROOT / "weights/rnn.safetensors"))
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--piece", type=int, default=200)
    parser.add_argument("--reply", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine(2)

    text = Path(args.corpus).read_text(encoding="utf-8")
    validation = text[int(len(text) * 0.9) :]
    # each repeat a conversation of its own (its own stretch of text): a state the model reaches again is a
    # token seen before, which the prefix cache finds (the shipped tanh RNN forgets so well that two replays
    # differing only in their first characters reached bitwise the same state within a turn)
    conversations = [
        [
            validation[(r * args.turns + i) * args.piece : (r * args.turns + i + 1) * args.piece]
            for i in range(args.turns)
        ]
        for r in range(args.repeats)
    ]
    pieces = conversations[0]

    with tempfile.TemporaryDirectory() as tmp:
        env = {"RNNLM_STATE_SECRET": SECRET, "RNNLM_MAX_TEXT_CHARS": "1000000", "RNNLM_MAX_BODY_BYTES": "10000000"}
        for name in ("rnn", "gated"):
            b, proc = start_server(str(ROOT / f"weights/{name}.safetensors"), f"{tmp}/{name}.log", **env)
            info = httpx.get(f"{b}/info").json()
            stop_server(proc)
            c = info["config"]
            print(
                f"state token, {name} ({c['cell']} {c['num_layers']} × {c['hidden_size']}): "
                f"{info['state_token']['bytes']:,} bytes, {info['state_token']['chars']:,} characters of base64"
            )
        # each way has servers of its own, so no way finds another's text in its cache
        ways = [
            ("(a) resend, no cache", 1, False, {"RNNLM_PREFIX_CACHE_ENTRIES": "0"}),
            ("(b) resend, prefix cache", 1, False, {}),
            ("(b2) resend, cache, 2 servers", 2, False, {}),
            ("(c1) state tokens, 1 server", 1, True, {}),
            ("(c) state tokens, 2 servers", 2, True, {}),
        ]
        servers = {
            name: [start_server(args.weights, f"{tmp}/{i}{name[1:3]}.log", **env, **more) for i in range(n)]
            for name, n, _, more in ways
        }
        figures = {name: {"seconds": [], "read": [], "bytes": 0, "same": 0} for name, *_ in ways}
        with httpx.Client(timeout=300) as http:
            for repeat in range(args.repeats):
                turns = conversations[repeat]
                oracle = None
                for name, _, with_state, _ in ways:
                    bases = [b for b, _ in servers[name]]
                    before = sum(chars_read(b) for b in bases)
                    out = replay(http, bases, turns, args.reply, with_state)
                    figures[name]["seconds"].append(out["seconds"])
                    figures[name]["read"].append(sum(chars_read(b) for b in bases) - before)
                    figures[name]["bytes"] = out["bytes"]
                    oracle = oracle or out["replies"]
                    # replies equal to (a)'s (the paths round differently; a float tie may pick another character)
                    figures[name]["same"] += sum(x == y for x, y in zip(out["replies"], oracle))
        for procs in servers.values():
            for _, proc in procs:
                stop_server(proc)

    total = sum(len(p) for p in pieces) + args.turns * args.reply
    print(
        f"\n{args.turns} turns of {args.piece} characters + {args.reply}-character replies "
        f"({total:,} characters of conversation); medians of {args.repeats}"
    )
    print(f"{'':34} {'chars read':>12} {'sent KiB':>9} {'wall s':>8} {'× (a) time':>10} {'same replies':>13}")
    base_time = statistics.median(figures["(a) resend, no cache"]["seconds"])
    for name, *_ in ways:
        f = figures[name]
        seconds = statistics.median(f["seconds"])
        print(
            f"{name:34} {statistics.median(f['read']):12,.0f} {f['bytes'] / 1024:9.1f} {seconds:8.3f} "
            f"{base_time / seconds:10.2f} {f['same']:>6}/{args.turns * args.repeats}"
        )


if __name__ == "__main__":
    main()
