"""Character vocabulary: id 0 is ``<unk>``, then the sorted distinct characters of a corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["UNK", "Vocab"]

UNK = "<unk>"


class Vocab:
    """Maps characters to ids and back. Unseen characters encode to ``<unk>`` (id 0)."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[0] != UNK:
            raise ValueError(f"vocab must start with {UNK!r}")
        chars = tokens[1:]
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("every vocab entry after <unk> must be exactly one character")
        if len(set(chars)) != len(chars):
            raise ValueError("vocab entries must be distinct")
        self.tokens: list[str] = tokens
        self.index: dict[str, int] = {c: i for i, c in enumerate(tokens) if i > 0}
        # Code point -> id lookup table, so encoding a long text is one gather, not a Python loop. In numpy:
        # a server encodes on its event loop, where each torch call would release and re-take the GIL.
        size = max((ord(c) for c in chars), default=0) + 1
        self._lut = np.zeros(size, dtype=np.int64)
        for c, i in self.index.items():
            self._lut[ord(c)] = i

    @classmethod
    def from_corpus(cls, texts: str | Iterable[str]) -> Vocab:
        if isinstance(texts, str):
            texts = [texts]
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls([UNK, *sorted(chars)])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` as a 1-D long tensor; unseen characters become 0 (``<unk>``)."""
        if not text:
            return torch.zeros(0, dtype=torch.long)
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._lut[np.minimum(code_points, len(self._lut) - 1)]
        ids[code_points >= len(self._lut)] = 0
        return torch.from_numpy(ids)

    def count_unknown(self, text: str | torch.Tensor) -> int:
        """How many characters of ``text`` (or of ids it was encoded to) are not in the vocabulary."""
        ids = self.encode(text) if isinstance(text, str) else text
        return int(np.count_nonzero(ids.numpy() == 0))  # numpy: no GIL round trip on a server's event loop

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.tokens[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps(self.tokens, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Vocab:
        tokens = json.loads(data)
        if not isinstance(tokens, list):
            raise ValueError("vocab JSON must be a list of tokens")
        return cls(tokens)
