"""The final evaluation read in parallel (model/evaluation.py) against the one-stream figure: for each weight
file, the validation split scored as one stream from a zero state, then as segments after each burn-in — the
difference in nats/char and the time of each, so that model/evaluation.py's BURN_IN per cell is a measurement.

    python benchmarks/final_evaluation.py [--weights weights/rnn.safetensors weights/gated.safetensors ...]
        [--corpus ../shared/data/tinyshakespeare.txt] [--burn-ins 0,16,32,64,128,256,512] [--threads 2]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from model import load_weights, score  # noqa: E402
from model.evaluation import BURN_IN, split_nll  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", default=["weights/rnn.safetensors", "weights/gated.safetensors"])
    parser.add_argument("--corpus", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--burn-ins", default="0,16,32,64,128,256,512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine(args.threads, args.device)
    text = Path(args.corpus).read_text(encoding="utf-8")
    val_text = text[int(len(text) * (1 - args.val_fraction)) :]
    for path in args.weights:
        loaded = load_weights(path, device=args.device)
        model, cell = loaded.model, loaded.config.cell
        ids = torch.as_tensor(loaded.vocab.encode(val_text))
        start = time.perf_counter()
        with torch.inference_mode():
            stream = score(model, ids).nll
        stream_s = time.perf_counter() - start
        c = loaded.config
        print(
            f"\n{path}: {cell} {c.num_layers}×{c.hidden_size}, {len(ids):,} validation chars; one stream "
            f"{stream:.5f} nats/char in {stream_s:.2f} s (the burn-in in use for {cell}: {BURN_IN[cell]})"
        )
        header = ("burn-in", 8), ("segments", 9), ("chars", 6), ("nats/char", 10), ("minus stream", 13), ("s", 6)
        print(" ".join(f"{name:>{width}}" for name, width in header), f"{'speed-up':>9}")
        for burn_in in (int(b) for b in args.burn_ins.split(",")):
            start = time.perf_counter()
            figure = split_nll(model, ids, burn_in=burn_in)
            took = time.perf_counter() - start
            if figure.one_stream:
                print(f"{burn_in:>8} the check found {figure.check_difference:+.5f} nats/char: read as one stream")
                continue
            s = figure.segments
            print(
                f"{burn_in:>8} {s.rows:>9} {s.length:>6} {figure.nll:>10.5f} {figure.nll - stream:>+13.5f} "
                f"{took:>6.2f} {stream_s / took:>8.1f}×"
            )


if __name__ == "__main__":
    main()
