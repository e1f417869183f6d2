"""Tokens/s of one training step (forward, backward, clipping, SGD): this project vs torch.nn, same run.

    python benchmarks/train_throughput.py [--cells rnn gru lstm] [--batch-sizes 64 256] [--steps 30] [--repeats 5]
                                          [--device cpu|cuda] [--bf16]

V=65, H=512, T=64; medians of --steps timed steps, the models taking turns in blocks of 3 steps (see
measure_turns); one line per cell and batch size. On CUDA each step is timed between two synchronisations, and
TF32 stays off (the trainer's float32 is true float32). With --bf16, the project's step under bf16 autocast (the
trainer's --precision bf16) takes its turns too, and the line ends with its speed against float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)
from torch import nn

from model import RNNLM, LMConfig, grad_clipping
from model.heap import keep_freed_memory

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


def step_time(model: nn.Module, tokens, targets, bf16: bool = False, lr=0.1, theta=1.0) -> float:
    device = tokens.device.type
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grad_clipping(model.parameters(), theta)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_turns(contenders, batch, steps, seq_len, vocab, device, block=3) -> list[float]:
    """Tokens/s of each ``(model, bf16)``: medians of ``steps`` timed steps each, on the same data, in turns.

    On a shared machine the speed drifts by tens of percent within a minute; timing one model after the
    other turns that into a spurious ratio, so they take turns, ``block`` steps at a time. The first step
    after each switch is not timed: it runs 10–40 % slow while the memory allocator and caches settle
    (timing it too showed a GRU at 1.1× that alternating blocks measure at 1.5×).
    """
    tokens = torch.randint(0, vocab, (batch, seq_len), device=device)
    targets = torch.randint(0, vocab, (batch, seq_len), device=device)
    times: list[list[float]] = [[] for _ in contenders]
    while len(times[-1]) < steps:
        for (model, bf16), timed in zip(contenders, times):
            step_time(model, tokens, targets, bf16)  # settle after the switch
            timed.extend(step_time(model, tokens, targets, bf16) for _ in range(block))
    return [batch * seq_len / statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"], choices=list(TORCH_CELLS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="also the project's step under bf16 autocast")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every line this many times, in turn, and end with each line's median ratio",
    )
    parser.add_argument(
        "--heap",
        choices=["trainer", "default"],
        default="trainer",
        help="trainer: glibc malloc keeps freed memory, as rnnlm-train sets it for its process (model/heap.py; "
        "torch.nn gains from it too); default: malloc as it comes",
    )
    args = parser.parse_args()
    print_machine(args.threads, args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if args.heap == "trainer" and not keep_freed_memory():
        parser.error("--heap trainer: this C library has no mallopt")
    torch.set_num_threads(args.threads)
    vocab = 65
    print(
        f"V={vocab} H={args.hidden} T={args.seq_len} threads={torch.get_num_threads()} heap={args.heap} "
        f"device={args.device} torch {torch.__version__}"
    )
    ratios: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for cell in args.cells:
            for batch in args.batch_sizes:
                torch.manual_seed(0)
                ours = RNNLM(LMConfig(cell=cell, vocab_size=vocab, hidden_size=args.hidden)).to(args.device)
                theirs = TorchNNLM(cell, vocab, args.hidden).to(args.device)
                contenders = [(ours, False), (theirs, False), *([(ours, True)] if args.bf16 else [])]
                a, b, *bf16 = measure_turns(contenders, batch, args.steps, args.seq_len, vocab, args.device)
                ratios.setdefault((cell, batch), []).append(a / b)
                line = f"{cell:<4} B={batch:<4} project {a:>11,.0f} tok/s  torch.nn {b:>11,.0f} tok/s  {a / b:.2f}x"
                if bf16:
                    line += f"  | project bf16 {bf16[0]:>11,.0f} tok/s  {bf16[0] / a:.2f}x fp32"
                print(line, flush=True)
    if args.repeats > 1:
        print(f"median ratio over {args.repeats} runs (lowest–highest):")
        for (cell, batch), values in ratios.items():
            print(f"{cell:<4} B={batch:<4} {statistics.median(values):.2f}x  ({min(values):.2f}–{max(values):.2f})")


if __name__ == "__main__":
    main()
