"""Tokens/s of one training step (forward, backward, clipping, SGD): this project vs torch.nn, same run.

    python benchmarks/train_throughput.py [--cells rnn gru lstm] [--batch-sizes 64 256] [--steps 20]

V=65, H=512, T=64, CPU; medians of --steps timed steps after warm-up; one line per cell and batch size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from model import LMConfig, RNNLM, grad_clipping

TORCH_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class TorchNNLM(nn.Module):
    """The baseline: torch.nn.Embedding + torch.nn.RNN/GRU/LSTM + torch.nn.Linear."""

    def __init__(self, cell: str, vocab: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = TORCH_CELLS[cell](hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out), None


def step_time(model: nn.Module, tokens, targets, lr=0.1, theta=1.0) -> float:
    start = time.perf_counter()
    logits, _ = model(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grad_clipping(model.parameters(), theta)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    return time.perf_counter() - start


def measure(model, batch, steps, seq_len, vocab, warmup=3) -> float:
    tokens = torch.randint(0, vocab, (batch, seq_len))
    targets = torch.randint(0, vocab, (batch, seq_len))
    for _ in range(warmup):
        step_time(model, tokens, targets)
    return batch * seq_len / statistics.median(step_time(model, tokens, targets) for _ in range(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"], choices=list(TORCH_CELLS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab = 65
    print(f"V={vocab} H={args.hidden} T={args.seq_len} threads={torch.get_num_threads()} torch {torch.__version__}")
    for cell in args.cells:
        for batch in args.batch_sizes:
            torch.manual_seed(0)
            ours = RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=args.hidden))
            theirs = TorchNNLM(cell, vocab, args.hidden)
            a = measure(ours, batch, args.steps, args.seq_len, vocab)
            b = measure(theirs, batch, args.steps, args.seq_len, vocab)
            print(f"{cell:<4} B={batch:<4} project {a:>9,.0f} tok/s  torch.nn {b:>9,.0f} tok/s  {a / b:.2f}x", flush=True)


if __name__ == "__main__":
    main()
