"""Greedy decoding, tokens/s, against the notebook's textbook loop (one model forward call per token) in the
same run: one stream with `generate` (same tokens asserted), and n streams stepped together with
`BatchDecoder` (continuous batching's inner loop) for each --batch size.

    python benchmarks/decode.py [--weights weights/rnn.safetensors] [--tokens 2000] [--repeats 5] [--threads 2]
                                [--batch 8 64] [--flush-denormal]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from model import generate, load_weights, warm
from model.batch import BatchDecoder


def notebook_loop(model, state, logits, n):
    """The textbook predict loop: argmax, wrap the token in a tensor, call the model, repeat."""
    out = []
    for _ in range(n):
        out.append(int(logits[1:].argmax()) + 1)
        with torch.no_grad():
            step, state = model(torch.tensor([[out[-1]]]), state)
        logits = step[0, 0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rnn.safetensors")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="*", default=[8, 64], help="streams stepped together")
    parser.add_argument("--flush-denormal", action="store_true")
    args = parser.parse_args()
    print_machine(args.threads)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(args.flush_denormal)
    w = load_weights(args.weights)
    state, logits = warm(w.model, w.vocab.encode("ROMEO:\n"))
    rates = {"project": [], "notebook": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours, _ = generate(w.model, state, logits, args.tokens)
        rates["project"].append(args.tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        theirs = notebook_loop(w.model, state, logits, args.tokens)
        rates["notebook"].append(args.tokens / (time.perf_counter() - start))
        assert ours == theirs, "the fast path must give the same tokens"
    a, b = statistics.median(rates["project"]), statistics.median(rates["notebook"])
    print(
        f"{w.config.cell} H={w.config.hidden_size} L={w.config.num_layers} threads={args.threads}: "
        f"project {a:,.0f} tok/s  notebook loop {b:,.0f} tok/s  {a / b:.2f}x  (same tokens)"
    )
    for n in args.batch:
        rate = statistics.median(batched_rate(w, n, args.tokens // 4) for _ in range(args.repeats))
        print(f"  {n:>3} streams together: {rate:,.0f} tok/s  {rate / b:.1f}x the notebook loop")


def batched_rate(w, n: int, steps: int) -> float:
    """n sequences warmed on different prefixes, then greedy-stepped together for ``steps`` tokens each."""
    batch = BatchDecoder(w.model)
    logits = []
    for i in range(n):
        state, last = warm(w.model, w.vocab.encode(f"ROMEO {i}:\n"))
        batch.add(state)
        logits.append(last)
    logits = torch.stack(logits)
    start = time.perf_counter()
    for _ in range(steps):
        logits = batch.step(logits[:, 1:].argmax(dim=1) + 1)
    return n * steps / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
