"""What the HTTP processes and the engine process say to each other: the messages, and their wire format.

They talk over one Unix-domain stream socket per HTTP process. Every frame is a 4-byte length and a pickled
list of messages, each a tuple ``(kind, request_id, payload)``, so the engine sends each HTTP process one frame
per step however many requests it advanced. Only plain Python values travel (strings, numbers, lists, these
dataclasses): no tensors, and nothing here imports torch.

Requests (HTTP → engine): ``HELLO`` (answered by ``READY`` with the model's description), ``GENERATE``,
``SCORE``, ``CANCEL`` (the client has gone) and ``STATS`` (the engine's figures, for /metrics).
Replies (engine → HTTP): ``PIECES`` (released text of streaming requests, coalesced by time), ``DONE`` (the
result), ``ERROR`` (status, message, and the request field at fault or None) and ``READY``/``STATS``.

Pickle is safe here: the socket lives in a directory only this user can enter, and both ends are processes
of this one server.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field

__all__ = [
    "CANCEL",
    "DONE",
    "ERROR",
    "GENERATE",
    "HELLO",
    "PIECES",
    "READY",
    "SCORE",
    "STATS",
    "GenerateRequest",
    "FrameReader",
    "GenerationResult",
    "ScoreRequest",
    "ScoreResult",
    "TokenInfo",
    "frame",
]

HELLO, GENERATE, SCORE, CANCEL, STATS = "hello", "generate", "score", "cancel", "stats"
READY, PIECES, DONE, ERROR = "ready", "pieces", "done", "error"


@dataclass
class TokenInfo:
    """One generated or scored character with its log-probability and, on request, the likeliest others."""

    text: str
    logprob: float | None  # None where nothing predicts the token (a prompt's first character)
    top: dict[str, float] | None = None


@dataclass
class GenerateRequest:
    """Warm the state on ``prefix`` once and continue it once per sampler (OpenAI's ``n``)."""

    prefix: str
    num_tokens: int
    samplers: list[dict]  # model.sampling.Sampler's fields: temperature, top_k, top_p, seed
    stops: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; k ≥ 0: the chosen token's and the k likeliest
    stream: bool = False
    min_tokens: int = 0  # stop sequences count only after this many characters
    state: str | None = None  # a state token: start from it, as if its text came before the prefix
    return_state: bool = False  # answer with the token of the state after prefix + generated text
    group: int | None = None  # one HTTP request's prompts share a group: the batch is shared fairly between groups


@dataclass
class GenerationResult:
    completion: str
    finish_reason: str  # "length" or "stop"
    tokens: list[TokenInfo]  # with top_logprobs only
    cached_chars: int  # prefix characters whose state came from the prefix cache
    unknown_chars: int  # prefix characters outside the vocabulary
    stop_reason: str | None = None  # the stop sequence that ended it (read by the state, not in the completion)
    state: str | None = None  # with return_state: the token of the state after prefix + completion + stop_reason
    state_chars: int = 0  # characters that state has read since the zero state


@dataclass
class ScoreRequest:
    text: str
    context: str | None = None
    return_logprobs: bool = False
    top_k: int = 0
    state: str | None = None  # a state token: read context and text after its text
    return_state: bool = False


@dataclass
class ScoreResult:
    nll: float
    num_scored: int
    token_logprobs: list[float] | None
    top: list[dict[str, float]] | None  # with top_k: per scored character, the k likeliest and their logprobs
    unknown_chars: int
    cached_chars: int
    state: str | None = None  # with return_state: the token of the state after context + text
    state_chars: int = 0


_LENGTH = struct.Struct("<I")


def frame(messages: list[tuple]) -> bytes:
    """One frame: the pickled messages behind their length."""
    body = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Collects bytes as they arrive and hands back the messages of every complete frame."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple]:
        buffer = self._buffer
        buffer += data
        messages: list[tuple] = []
        start = 0
        while len(buffer) - start >= 4:
            (n,) = _LENGTH.unpack_from(buffer, start)
            if len(buffer) - start - 4 < n:
                break
            messages += pickle.loads(buffer[start + 4 : start + 4 + n])
            start += 4 + n
        if start:
            del buffer[:start]
        return messages
