"""Prefix-state cache: the latent state after reading a text, kept so a later text that starts with it skips
those characters.

An RNN's whole memory of a prefix is its state, O(layers × hidden) numbers, so caching it is cheap (2 KiB for
the shipped 1 × 512 model) — unlike a transformer's KV cache, which grows with the prefix. Entries are keyed
by the exact text and evicted least-recently-used, bounded by count and by bytes (state, logits and key).
Lookups find the longest cached prefix without slicing the text once per cached length: long keys are filed
under their first ``HEAD`` characters and compared in place (``str.startswith``). Thread-safe.

Every text is read from a *root*: ``""`` for the zero state, or a state token's name (see
:mod:`app.engine.state_tokens`) for a text read after the state the client sent, so continuations of a state token
seen before are found as plainly as continuations of a text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor

from model import State

__all__ = ["CacheHit", "PrefixCache"]

HEAD = 32  # keys at least this long are filed under their first HEAD characters
_SEP = "\x00"  # between a key's root and its text; roots never hold it


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
        self._short_lengths: dict[int, int] = {}  # length -> how many keys shorter than HEAD have it
        self._by_head: dict[str, set[str]] = {}  # key[:HEAD] -> the keys at least HEAD long that start so
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.hit_chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, text: str, max_length: int | None = None, root: str = "") -> CacheHit | None:
        """The entry for the longest cached prefix of ``text`` read from ``root`` (at most ``max_length``
        characters of it)."""
        limit = len(text) if max_length is None else min(max_length, len(text))
        skip = len(root) + 1
        text, limit = root + _SEP + text, limit + skip
        with self._lock:
            key = None
            if limit >= HEAD:
                candidates = self._by_head.get(text[:HEAD], ())
                fits = [k for k in candidates if len(k) <= limit and text.startswith(k)]
                key = max(fits, key=len, default=None)
            if key is None:
                for length in sorted((n for n in self._short_lengths if n <= limit), reverse=True):
                    if text[:length] in self._entries:
                        key = text[:length]
                        break
            if key is None:
                self.misses += 1
                return None
            state, logits, _ = self._entries[key]
            self._entries.move_to_end(key)
            self.hits += 1
            self.hit_chars += len(key) - skip
            return CacheHit(len(key) - skip, state, logits)

    def put(self, text: str, state: State, logits: Tensor, root: str = "") -> None:
        """Remember the state after ``text`` (read from ``root``) and the logits it gives (tensors are kept,
        not copied)."""
        if not text or self.max_entries <= 0:
            return
        text = root + _SEP + text
        size = _entry_bytes(text, state, logits)
        if size > self.max_bytes:
            return
        with self._lock:
            if text in self._entries:
                self._entries.move_to_end(text)
                return
            self._entries[text] = (state, logits, size)
            self._file(text, +1)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                old, (_, _, old_size) = self._entries.popitem(last=False)
                self.bytes -= old_size
                self._file(old, -1)

    def _file(self, key: str, change: int) -> None:
        if len(key) >= HEAD:
            bucket = self._by_head.setdefault(key[:HEAD], set())
            (bucket.add if change > 0 else bucket.discard)(key)
            if not bucket:
                del self._by_head[key[:HEAD]]
        else:
            count = self._short_lengths.get(len(key), 0) + change
            if count:
                self._short_lengths[len(key)] = count
            else:
                del self._short_lengths[len(key)]
