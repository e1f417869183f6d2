"""Single-stream greedy decoding, tokens/s: the project's `generate` against the notebook's textbook loop
(one model forward call per token), in the same run.

    python benchmarks/decode.py [--weights weights/rnn.safetensors] [--tokens 2000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model import generate, load_weights, warm


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
    print(f"{w.config.cell} H={w.config.hidden_size} L={w.config.num_layers} threads={args.threads}: "
          f"project {a:,.0f} tok/s  notebook loop {b:,.0f} tok/s  {a / b:.2f}x  (same tokens)")


if __name__ == "__main__":
    main()
