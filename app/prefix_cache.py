"""Prefix-state cache: the latent state after reading a text, kept so a later text that starts with it skips
those characters.

An RNN's whole memory of a prefix is its state, O(layers × hidden) numbers, so caching it is cheap (2 KiB for
the shipped 1 × 512 model) — unlike a transformer's KV cache, which grows with the prefix. Entries are keyed
by the exact text and evicted least-recently-used, bounded by count and by bytes (state, logits and key).
Lookups find the longest cached prefix. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor

from model import State

__all__ = ["CacheHit", "PrefixCache"]


@dataclass(frozen=True)
class CacheHit:
    length: int  # characters of the text covered by the cached entry
    state: State  # the state after those characters; never modified by its users
    logits: Tensor  # (V,): the scores for the character after them


def _entry_bytes(text: str, state: State, logits: Tensor) -> int:
    tensors = sum(t.numel() * t.element_size() for t in (*state, logits))
    return tensors + len(text.encode("utf-8", "surrogatepass")) + 200  # + bookkeeping, roughly


class PrefixCache:
    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[State, Tensor, int]] = OrderedDict()
        self._lengths: dict[int, int] = {}  # text length -> how many entries have it
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.hit_chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, text: str, max_length: int | None = None) -> CacheHit | None:
        """The entry for the longest cached prefix of ``text`` (at most ``max_length`` characters)."""
        limit = len(text) if max_length is None else min(max_length, len(text))
        with self._lock:
            for length in sorted((n for n in self._lengths if 0 < n <= limit), reverse=True):
                entry = self._entries.get(text[:length])
                if entry is not None:
                    self._entries.move_to_end(text[:length])
                    self.hits += 1
                    self.hit_chars += length
                    return CacheHit(length, entry[0], entry[1])
            self.misses += 1
            return None

    def put(self, text: str, state: State, logits: Tensor) -> None:
        """Remember the state after ``text`` and the logits it gives (tensors are kept, not copied)."""
        if not text or self.max_entries <= 0:
            return
        size = _entry_bytes(text, state, logits)
        if size > self.max_bytes:
            return
        with self._lock:
            if text in self._entries:
                self._entries.move_to_end(text)
                return
            self._entries[text] = (state, logits, size)
            self._lengths[len(text)] = self._lengths.get(len(text), 0) + 1
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                old, (_, _, old_size) = self._entries.popitem(last=False)
                self.bytes -= old_size
                self._lengths[len(old)] -= 1
                if not self._lengths[len(old)]:
                    del self._lengths[len(old)]
