"""Stop sequences as an automaton over token ids, so the batch finds every row's stop with one gather a step.

:class:`~app.engine.stops.StopScanner` stops a sequence at the first character where any stop sequence has
appeared in the text scanned so far, and cuts the completion where the earliest of those begins. Fed a character
at a time, the stops that appear first all end at that character, so the earliest begins where the *longest* of
them does: what an Aho-Corasick automaton over the stops says in one table lookup. Its states are the prefixes of
the stops (a trie) and ``delta[state, token]`` is the longest stop prefix that the text read so far ends with;
``match[state]`` is the length of the longest stop that ends there (0: none); ``depth[state]`` the length of
the stop prefix itself — the characters a stream holds back, since they may yet begin a stop.

:class:`StopTables` holds the automata of every stop set in use, back to back in one table (a row's state is
an index into it), built once per stop set. Only sets of at most :data:`MOST_STOP_CHARS` characters in all are
built (the table has a row per character of the stops); rows with longer sets keep their scanner.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from model import Vocab

__all__ = ["MOST_STOP_CHARS", "StopTables"]

MOST_STOP_CHARS = 256  # characters of all of a row's stops together: a longer set is scanned per row


class StopTables:
    """The automata of the stop sets in use, back to back: ``delta`` (states, V) and ``match`` (states,)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.delta = np.zeros((0, len(vocab)), dtype=np.int32)
        self.match = np.zeros(0, dtype=np.int32)
        self.depth = np.zeros(0, dtype=np.int32)
        self._start: dict[tuple[str, ...], int] = {}  # a stop set's first state (its empty prefix)

    def start(self, stops: list[str]) -> int | None:
        """The first state of the automaton of ``stops`` (built on first use); None for a set too long to build."""
        key = tuple(sorted(set(stops)))
        if key not in self._start:
            if sum(map(len, key)) > MOST_STOP_CHARS:
                return None
            delta, match, depth = _automaton(key, self.vocab)
            self._start[key] = len(self.match)
            self.delta = np.concatenate([self.delta, delta + len(self.match)])
            self.match = np.concatenate([self.match, match])
            self.depth = np.concatenate([self.depth, depth])
        return self._start[key]

    def advance(self, states: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row's next state after reading its token, and the length of the stop it has just completed."""
        after = self.delta[states, tokens]
        return after, self.match[after]

    def read(self, state: int, tokens: list[int]) -> int:
        """One row's state after reading ``tokens`` from ``state`` (a row coming back to the batch)."""
        for token in tokens:
            state = int(self.delta[state, token])
        return state


def _automaton(stops: tuple[str, ...], vocab: Vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aho-Corasick over token ids: a stop with a character outside the vocabulary can never be generated, so it
    is left out."""
    ids = [[vocab.index[c] for c in s] for s in stops if s and all(c in vocab.index for c in s)]
    children: list[dict[int, int]] = [{}]
    match, depth = [0], [0]
    for stop in ids:  # the trie
        node = 0
        for t in stop:
            if t not in children[node]:
                children[node][t] = len(children)
                children.append({})
                match.append(0)
                depth.append(depth[node] + 1)
            node = children[node][t]
        match[node] = max(match[node], len(stop))
    delta = np.zeros((len(children), len(vocab)), dtype=np.int32)
    fail = [0] * len(children)
    for t, child in children[0].items():
        delta[0, t] = child
    queue = deque(children[0].values())
    while queue:  # breadth first: a node's failure link and row come from shorter prefixes
        node = queue.popleft()
        match[node] = max(match[node], match[fail[node]])
        delta[node] = delta[fail[node]]
        for t, child in children[node].items():
            fail[child] = delta[fail[node], t] if node else 0
            delta[node, t] = child
            queue.append(child)
    return delta, np.asarray(match, dtype=np.int32), np.asarray(depth, dtype=np.int32)
