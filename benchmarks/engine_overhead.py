"""The engine's bookkeeping per row per step: a scheduler turn against the bare batch step, same rows, same run.

A model with H = 8 makes the step's arithmetic almost free, so what a turn costs beyond ``BatchDecoder.step``
is the scheduler's own work: choosing, counting down, finding the rows that ended. Each line steps ``rows``
generating rows (all joined, none ending during the timed steps) and prints, per batch step, the time of the
scheduler's turns (``Scheduler.run_once``; on CUDA a turn of plain rows is a burst of several steps in one
graph), the median bare step (``BatchDecoder.step``, one at a time), and their difference per row — negative
where bursts beat single steps. Kinds of rows:

- ``greedy``: plain greedy rows (the batch's arrays, no Python per row);
- ``stops``: greedy rows with a stop sequence that never matches (a :class:`Decoding` per row);
- ``sampled``: temperature 0.8, top-p 0.95, no seed (drawn for all such rows at once; before that, per row);
- ``seeded``: the same with a seed per row (a :class:`Decoding` and generator per row);
- ``penalised``: greedy with a frequency and a presence penalty and a logit bias (adjusted for all such rows at
  once in the batch's arrays; before that, per row);
- ``logprobs``: greedy, each token's log-probability and its 5 likeliest alternatives (OpenAI's ``logprobs: 5``).

    python benchmarks/engine_overhead.py [--rows 64 512 1024] [--steps 200] [--repeats 5] [--device cpu]
                                         [--weights weights/rnn.safetensors]   # a real model instead of H = 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

from model import RNNLM, LMConfig, Vocab, load_weights
from model.batch import BatchDecoder
from model.sampling import Sampler

try:  # a tree from before app/engine/ (PYTHONPATH=old checkout), for a same-run A/B
    from app.generation import Decoding
    from app.scheduler import GenerationJob, Scheduler
except ImportError:
    from app.engine.generation import Decoding
    from app.engine.jobs import GenerationJob
    from app.engine.scheduler import Scheduler

KINDS = {
    "greedy": (Sampler(), []),
    "stops": (Sampler(), ["\n\n\n\n\n\n"]),
    "sampled": (Sampler(temperature=0.8, top_p=0.95), []),
    "seeded": (Sampler(temperature=0.8, top_p=0.95, seed=0), []),
    "penalised": (Sampler(frequency_penalty=0.5, presence_penalty=0.3, logit_bias=((3, 2.0), (5, -100.0))), []),
    "logprobs": (Sampler(), [], 5),
}


def tiny_model(device: str) -> tuple[RNNLM, Vocab]:
    text = "".join(chr(c) for c in range(32, 96)) + "\n"
    vocab = Vocab.from_corpus(text)
    torch.manual_seed(0)
    model = RNNLM(LMConfig(cell="rnn", vocab_size=len(vocab), hidden_size=8)).to(device).eval()
    return model, vocab


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def scheduler_turns(model, vocab, rows: int, kind: str, steps: int, device: str) -> tuple[float, int]:
    """Seconds per batch step of scheduler turns with ``rows`` rows of ``kind``, all joined and running (a turn
    may run several steps: a burst on CUDA); and the steps replayed from graphs."""
    sampler, stops, *logprobs = KINDS[kind]
    scheduler = Scheduler(model, None, rows, rows, 256, 512)
    ids = vocab.encode("The ")
    for i in range(rows):
        s = Sampler(**{**sampler.__dict__, "seed": i}) if sampler.seed is not None else sampler
        d = Decoding("The ", vocab, 10**6, s, stops, *(logprobs or [None]))  # no row ends while timed
        job = GenerationJob(on_done=lambda result, error: None, text="The ", ids=ids, decodings=[d])
        scheduler.submit(job)
    for _ in range(20):  # admission, the prompts read as forced rows, the forks: then every row generates
        scheduler.run_once()
    assert scheduler.batch_rows == rows, scheduler.batch_rows
    per_step = []
    for _ in range(5):
        before = scheduler.steps
        sync(device)
        start = time.perf_counter()
        while scheduler.steps - before < steps:
            scheduler.run_once()
        sync(device)
        per_step.append((time.perf_counter() - start) / (scheduler.steps - before))
    return statistics.median(per_step), getattr(scheduler, "graph_steps", 0)


def bare_steps(model, rows: int, steps: int, device: str, graphs: bool) -> float:
    if hasattr(BatchDecoder, "add_many"):
        decoder = BatchDecoder(model, capacity=rows, graph_rows=rows if graphs else 0)
        decoder.add_many([model.init_state(1)] * rows, [None] * rows)
        tokens, sent = np.ones(rows, dtype=np.int64), np.zeros(0, dtype=np.int64) if graphs else None
    else:  # the tree before the batch's arrays
        decoder = BatchDecoder(model)
        for _ in range(rows):
            decoder.add(model.init_state(1))
        tokens, sent = torch.ones(rows, dtype=torch.long), None
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        decoder.step(tokens, sent) if sent is not None else decoder.step(tokens)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[64, 512, 1024])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", help="a weight file's model instead of the H = 8 one")
    args = parser.parse_args()
    print_machine(args.threads, args.device)
    torch.set_num_threads(args.threads)
    if args.weights:
        loaded = load_weights(args.weights, device=args.device)
        model, vocab = loaded.model, loaded.vocab
    else:
        model, vocab = tiny_model(args.device)
    graphs = args.device.startswith("cuda")
    cfg = model.config
    print(
        f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_size} V={len(vocab)} device={args.device} "
        f"steps={args.steps} repeats={args.repeats} (medians)"
    )
    print(f"{'rows':>6} {'kind':>8} {'turn µs/step':>13} {'bare step µs':>13} {'bookkeeping µs/row/step':>24}")
    for rows in args.rows:
        for kind in args.kinds:
            turns, bares = [], []
            for _ in range(args.repeats):  # the two alternate, so a phase of the machine hits both
                turn, _ = scheduler_turns(model, vocab, rows, kind, args.steps, args.device)
                turns.append(turn)
                bares.append(bare_steps(model, rows, args.steps, args.device, graphs))
            turn, bare = statistics.median(turns), statistics.median(bares)
            per_row = (turn - bare) / rows * 1e6
            print(f"{rows:>6} {kind:>8} {turn * 1e6:>13.1f} {bare * 1e6:>13.1f} {per_row:>24.3f}", flush=True)


if __name__ == "__main__":
    main()
