"""Long-text scoring, characters/s: in process (flush-denormal on and off, against torch.nn.RNN over the whole
sequence) and through /perplexity on the real server, for 100k and 1M characters.

    python benchmarks/score.py [--weights weights/rnn.safetensors] [--corpus ../shared/data/tinyshakespeare.txt]
                               [--repeats 3] [--threads 2] [--no-http]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from model import load_weights, score  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402
from tests.model.torch_reference import TorchReference  # noqa: E402


def median_rate(fn, chars: int, repeats: int) -> tuple[float, object]:
    rates, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        rates.append(chars / (time.perf_counter() - start))
    return statistics.median(rates), result


def torch_nn_nll(reference: TorchReference, ids: torch.Tensor) -> float:
    """torch.nn.RNN over the whole sequence in one call (one-hot input), then cross-entropy."""
    with torch.no_grad():
        logits, _ = reference(ids[None, :-1])
        return F.cross_entropy(logits[0], ids[1:]).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/rnn.safetensors")
    parser.add_argument("--corpus", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = parser.parse_args()
    print_machine(args.threads)
    torch.set_num_threads(args.threads)
    w = load_weights(args.weights)
    corpus = Path(args.corpus).read_text(encoding="utf-8")
    texts = {"100k": corpus[int(len(corpus) * 0.9) :][:100_000], "1M": (corpus * 2)[:1_000_000]}
    print(
        f"{w.config.cell} H={w.config.hidden_size} L={w.config.num_layers}, {args.threads} threads, "
        f"median of {args.repeats}"
    )

    ids = w.vocab.encode(texts["100k"])
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        rate, result = median_rate(lambda: score(w.model, ids), len(ids), args.repeats)
        print(f"  in process, 100k chars, flush_denormal={flush!s:<5}  {rate:>9,.0f} chars/s  (nll {result.nll:.4f})")
    if w.config.cell == "rnn":
        reference = TorchReference(w.model).eval()
        rate, nll = median_rate(lambda: torch_nn_nll(reference, ids), len(ids), args.repeats)
        print(f"  torch.nn.RNN, whole sequence, 100k chars      {rate:>9,.0f} chars/s  (nll {nll:.4f})")
    torch.set_flush_denormal(True)

    if args.no_http:
        return
    with tempfile.TemporaryDirectory() as tmp:
        base, proc = start_server(
            args.weights, Path(tmp) / "server.log", RNNLM_MAX_TEXT_CHARS="2000000", RNNLM_MAX_BODY_BYTES="8000000"
        )
        try:
            with httpx.Client(base_url=base, timeout=600) as http:
                for name, text in texts.items():

                    def post(text=text):
                        r = http.post("/perplexity", json={"text": text})
                        r.raise_for_status()
                        return r.json()

                    rate, body = median_rate(post, len(text), args.repeats)
                    print(
                        f"  POST /perplexity, {name:>4} chars               {rate:>9,.0f} chars/s  "
                        f"(nll {body['nll']:.4f})"
                    )
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
