"""Stop sequences over a stream of characters, safe for streaming: text that could be the start of a stop
sequence is held back until it is known not to be one, so a client never receives part of a stop sequence."""

from __future__ import annotations

__all__ = ["StopScanner"]


class StopScanner:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return the part that is safe to release. Sets ``stopped`` on a match."""
        if not self.stops:
            return text
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            released, self.pending = self.pending[: min(hits)], ""
            return released
        keep = 0  # the longest tail of pending that is a prefix of some stop sequence
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:length]):
                    keep = length
                    break
        released = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return released

    def flush(self) -> str:
        """At the end of generation: whatever is still held back was not a stop sequence."""
        released, self.pending = self.pending, ""
        return released
