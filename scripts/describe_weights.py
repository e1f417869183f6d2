"""Print a model-card section (markdown) for each weight file: architecture, size, provenance, metrics and a
greedy sample, all read from the file itself.

    .venv/bin/python scripts/describe_weights.py weights/*.safetensors
"""

from __future__ import annotations

import sys

from model import generate, load_weights, warm

SAMPLE_PREFIX = "ROMEO:\n"


def describe(path: str) -> str:
    w = load_weights(path)
    cfg, t = w.config, w.training
    state, logits = warm(w.model, w.vocab.encode(SAMPLE_PREFIX))
    sample = w.vocab.decode(generate(w.model, state, logits, 300)[0])
    corpus = ", ".join(f"`{c['name']}` (sha256 `{c['sha256']}`)" for c in t.get("corpus", []))
    split = t.get("split", {})
    teacher = t.get("teacher")
    taught = (
        []
        if not teacher
        else [
            f"- teacher (knowledge distillation, α = {t.get('hyperparameters', {}).get('distill')}): "
            f"`{teacher['name']}` "
            f"(sha256 `{teacher['sha256']}`; {teacher['config']['cell']}, {teacher['config']['num_layers']} × "
            f"{teacher['config']['hidden_size']}, validation {teacher.get('val_nll')} nats/char)"
        ]
    )
    return "\n".join(
        [
            f"## `{path}`",
            "",
            f"- architecture: {cfg.cell}, {cfg.num_layers} layer(s), hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
            f"dropout {cfg.dropout}, weight drop {cfg.weight_drop} (training only)",
            f"- parameters: {w.model.num_parameters():,}",
            f"- corpus: {corpus}; trained on the first {split.get('train_chars', '?'):,} characters, validated on the "
            f"last {split.get('val_chars', '?'):,} ({split.get('val_fraction')})",
            f"- training: {t.get('steps')} steps ({t.get('epochs')} epochs), {t.get('tokens_seen', 0):,} tokens, "
            f"wall time {t.get('wall_time_s', 0) / 60:.1f} min, {t.get('date')}",
            *taught,
            f"- command: `{t.get('command')}`",
            f"- validation: **{t.get('val_nll')} nats/char**, perplexity {t.get('val_ppl')}, "
            f"{t.get('val_bpc')} bits/char",
            "",
            f"Greedy sample after {SAMPLE_PREFIX!r}:",
            "",
            "```",
            SAMPLE_PREFIX + sample,
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(describe(path))
