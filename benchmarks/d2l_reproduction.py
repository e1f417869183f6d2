"""Reproduce d2l's scratch RNN on The Time Machine with this project's model and trainer pieces.

d2l (chapter "RNN from scratch"): lowercase, letters and space only (vocab 28 with <unk>); windows of 32
characters at every offset, the first 10,000 for training and the next 5,000 for validation; hidden 32, SGD lr 1,
gradient clipping θ = 1, batch 1024, 100 epochs, every window from a zero state. d2l reports a validation
perplexity of about 7.3. Prints the validation perplexity every 10 epochs.

    python benchmarks/d2l_reproduction.py [--corpus ../shared/data/timemachine.txt] [--epochs 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from model import RNNLM, LMConfig, Vocab, grad_clipping

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timemachine.txt"


def d2l_windows(text: str, num_steps: int = 32, num_train: int = 10_000, num_val: int = 5_000):
    text = re.sub("[^A-Za-z]+", " ", text).lower()
    vocab = Vocab.from_corpus(text)
    ids = vocab.encode(text)
    windows = ids.unfold(0, num_steps + 1, 1)[: num_train + num_val]  # (N, T + 1), one per offset
    return vocab, windows[:num_train], windows[num_train:]


def mean_nll(model: RNNLM, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits, _ = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()


def run(
    corpus: Path = DEFAULT_CORPUS,
    epochs: int = 100,
    hidden: int = 32,
    lr: float = 1.0,
    theta: float = 1.0,
    batch_size: int = 1024,
    seed: int = 0,
    log=print,
) -> float:
    """Train as d2l does; return the final validation perplexity."""
    torch.manual_seed(seed)
    vocab, train, val = d2l_windows(corpus.read_text(encoding="utf-8"))
    model = RNNLM(LMConfig(cell="rnn", vocab_size=len(vocab), hidden_size=hidden))
    with torch.no_grad():  # d2l's initialisation: weights ~ N(0, 0.01²), biases 0
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.01 if name.split(".")[-1].startswith("w") else torch.zeros_like(p))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train[torch.randperm(len(train))].split(batch_size):
            logits, _ = model(batch[:, :-1])  # every window from a zero state
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            grad_clipping(model.parameters(), theta)
            optimizer.step()
        if epoch % 10 == 0 or epoch == epochs:
            model.eval()
            log(
                f"epoch {epoch:>3}  train ppl {math.exp(mean_nll(model, train)):.2f}  "
                f"val ppl {math.exp(mean_nll(model, val)):.2f}"
            )
    return math.exp(mean_nll(model, val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quiet", action="store_true", help="print only each seed's final figure")
    args = parser.parse_args()
    print_machine(2)
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        ppl = run(args.corpus, args.epochs, seed=seed, log=(lambda *_: None) if args.quiet else print)
        results.append(ppl)
        print(f"seed {seed}: final validation perplexity {ppl:.2f} in {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"median over {len(results)} seeds: {statistics.median(results):.2f} "
        f"(min {min(results):.2f}, max {max(results):.2f}); d2l reports about 7.3"
    )


if __name__ == "__main__":
    main()
