"""Training on corpora of 10 MB, 100 MB and 1 GB: what the memory-mapped id file costs and saves.

A synthetic corpus (tiny Shakespeare repeated to the size; written under /tmp and deleted) for each size:
- encode: the first run's one-time encoding (model/id_file.py), the id file's size, and the time to find it
  again on a later run (the stat checks and the memory map);
- a 50-step run (``--hidden 128 --max-steps 50 --eval-every 25``, ``--val-fraction 0.002`` so that the final
  whole-split evaluation stays small at 1 GB) as its own process: peak RSS and training tokens/s;
- one periodic evaluation (``--eval-chars``' 200k characters of validation) timed in process.
With ``--baseline DIR`` (a checkout of the code before this change: ``git worktree add DIR REV``), the same
50-step run with that code beside it, where it fits in memory (10 MB and 100 MB).

    python benchmarks/corpus_scale.py [--sizes 10,100,1000] [--baseline /tmp/rnnlm-base]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import print_machine  # noqa: E402  (benchmarks/, the script folder, is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = """
import resource, runpy, sys
sys.argv = ["rnnlm-train", *sys.argv[1:]]
try:
    runpy.run_module("model.train", run_name="__main__")
except SystemExit as e:
    code = e.code
finally:
    print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_corpus(path: Path, source: str, megabytes: int) -> None:
    block = source.encode("utf-8")
    with open(path, "wb") as f:
        left = megabytes * 10**6
        while left > 0:
            f.write(block[:left])
            left -= len(block)


def train_run(code: Path, corpus: Path, out: Path, cache: Path) -> dict:
    args = [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--hidden",
        "128",
        "--max-steps",
        "50",
        "--eval-every",
        "25",
        "--val-fraction",
        "0.002",
        "--sample-chars",
        "0",
        "--threads",
        "2",
    ]
    env = {**os.environ, "RNNLM_CACHE_DIR": str(cache), "PYTHONPATH": str(code)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, *args], cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    rss = int(proc.stderr.rsplit("MAXRSS_KIB", 1)[1].split()[0])
    records = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    return {"rss_mib": rss / 1024, "tok_s": records[-1]["tokens"] / records[-1]["wall_time_s"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes, MB")
    parser.add_argument("--baseline", help="a checkout of the code before the id file, run beside it")
    parser.add_argument("--source", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    args = parser.parse_args()
    print_machine(2)

    import torch

    from model import RNNLM, LMConfig
    from model.id_file import encode_corpus
    from model.inference import score

    torch.set_num_threads(2)
    source = Path(args.source).read_text(encoding="utf-8")
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        for mb in (int(x) for x in args.sizes.split(",")):
            corpus, cache = tmp / f"corpus{mb}.txt", tmp / f"cache{mb}"
            make_corpus(corpus, source, mb)
            start = time.perf_counter()
            encoded = encode_corpus([corpus], cache, progress=False)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            again = encode_corpus([corpus], cache, progress=False)
            reuse_s = time.perf_counter() - start
            assert again.reused
            ids = torch.from_numpy(again.ids)
            val = ids[int(len(ids) * 0.9) :]
            model = RNNLM(LMConfig(vocab_size=len(again.vocab), hidden_size=128)).eval()
            start = time.perf_counter()
            score(model, val[:200_000])
            eval_s = time.perf_counter() - start
            new = train_run(ROOT, corpus, tmp / f"new{mb}.safetensors", cache)
            row = {
                "MB": mb,
                "encode_s": encode_s,
                "id_file_MB": encoded.path.stat().st_size / 1e6,
                "reuse_s": reuse_s,
                "eval_200k_s": eval_s,
                "new": new,
            }
            if args.baseline and mb <= 100:
                row["old"] = train_run(Path(args.baseline), corpus, tmp / f"old{mb}.safetensors", cache)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(cache)
            corpus.unlink()
    print(
        f"\n{'corpus':>8} {'encode s':>9} {'id file':>9} {'found again':>12} {'eval 200k':>10} "
        f"{'peak RSS new':>13} {'old':>9} {'tok/s new':>10} {'old':>9}"
    )
    for r in rows:
        old, new = r.get("old"), r["new"]
        old_rss = f"{old['rss_mib']:.0f}MiB" if old else "—"
        old_tok = f"{old['tok_s']:,.0f}" if old else "—"
        print(
            f"{r['MB']:>6}MB {r['encode_s']:9.1f} {r['id_file_MB']:7.0f}MB {r['reuse_s'] * 1000:10.1f}ms "
            f"{r['eval_200k_s']:9.2f}s {new['rss_mib']:10.0f}MiB {old_rss:>9} {new['tok_s']:10,.0f} {old_tok:>9}"
        )


if __name__ == "__main__":
    main()
