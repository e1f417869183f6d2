"""The model's characters as token ids, on the HTTP side (plain Python: the vocabulary comes from the engine).

One token is one character: id i is ``vocab[i]``. Id 0 is ``<unk>``, which stands for every character outside
the vocabulary; as text it is U+FFFD (the replacement character), which the model reads back as id 0 — so
``encode(decode(ids)) == ids`` for any ids, and ``decode(encode(text))`` is ``text`` with unknown characters
replaced.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["UNKNOWN_TEXT", "CharTokens"]

UNKNOWN_TEXT = "\ufffd"


class CharTokens:
    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.index = {c: i for i, c in enumerate(vocab) if i > 0}
        self.texts = [UNKNOWN_TEXT, *vocab[1:]]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        index = self.index
        return [index.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; raises ValueError naming the first id outside the vocabulary."""
        texts, out = self.texts, []
        for i in ids:
            if not 0 <= i < len(texts):
                raise ValueError(f"token id {i} is outside the vocabulary (0–{len(texts) - 1})")
            out.append(texts[i])
        return "".join(out)
