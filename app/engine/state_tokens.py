"""State tokens: a text's latent state, handed to the client and taken back, signed so no one can forge one.

An RNN's whole memory of a text is its state — 512 float32 (2 KiB) for the shipped tanh RNN, 1,024 (4 KiB)
for the 2-layer GRU. A client that keeps the state of its text and sends it back with the next piece pays only
for the new characters, on any replica that shares the secret, with nothing kept on the server.

A token is URL-safe base64 (no padding) of ``header ‖ state ‖ tag``:

- header, 41 bytes: format version (1 byte, :data:`VERSION`), the weight file's sha256 (32 bytes) and how
  many characters the state has read (unsigned 64-bit, little-endian);
- state: the model's state tensors as little-endian float32, ``h`` (then ``c`` for the LSTM), each
  layers × hidden, bottom layer first;
- tag, 32 bytes: HMAC-SHA256, keyed with ``RNNLM_STATE_SECRET``, of the header and the state.

What a refused token gets (the project's error body, ``param`` naming the field): 400 for a token that is not
base64, is truncated or too long, has an unknown version, or whose tag does not match (altered, or signed with
another secret); 409 for a genuine token of another model; 422 for a genuine token whose state holds NaN or
an infinity, or that claims to have read :data:`MAX_CHARS` characters or more (no server reads that many, and a
count that large would leave no room to count what the request reads next). Nothing here imports torch: the
engine turns the state bytes into tensors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

__all__ = ["HEADER", "MAX_CHARS", "TAG_BYTES", "VERSION", "StateCodec", "StateTokenError"]

VERSION = 1
HEADER = struct.Struct("<B32sQ")  # version, the weight file's sha256, characters read
TAG_BYTES = 32
MAX_CHARS = 2**62  # a token's character count is below this; the header's field holds up to 2^64 - 1
_FLOAT = 4
_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")  # URL-safe base64, without padding


class StateTokenError(Exception):
    """A token that cannot be used: the HTTP status and the reason, for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OpenedState:
    chars: int  # characters the state has read since the zero state
    data: bytes  # the state's float32 values, as laid out above
    tag: bytes  # the token's HMAC: names this exact state (the prefix cache keys on it)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class StateCodec:
    """Seals and opens the state tokens of one model (``weights_sha256``, hex) under one secret."""

    def __init__(self, secret: bytes, weights_sha256: str, state_floats: int):
        self._secret = secret
        self._digest = bytes.fromhex(weights_sha256)
        self.state_bytes = state_floats * _FLOAT
        self.token_bytes = HEADER.size + self.state_bytes + TAG_BYTES  # before base64
        self.token_chars = len(_b64(bytes(self.token_bytes)))
        # a longer token is refused before it is decoded; up to this, one of another model is recognised as such
        self.max_chars = max(16 * self.token_chars, 64 * 1024)

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def seal(self, chars: int, data: bytes) -> str:
        """The token for a state (``data``: its float32 bytes) that has read ``chars`` characters."""
        if len(data) != self.state_bytes:
            raise ValueError(f"a state of this model has {self.state_bytes} bytes, not {len(data)}")
        if not 0 <= chars < 2**64:
            raise ValueError(f"a state token counts 0 to 2^64 - 1 characters, not {chars}")
        body = HEADER.pack(VERSION, self._digest, chars) + data
        return _b64(body + self._tag(body))

    def open(self, token: str) -> OpenedState:
        """The state a token holds; :class:`StateTokenError` when it is not a genuine token of this model."""
        if len(token) > self.max_chars:
            raise StateTokenError(
                400,
                f"state token is too long: {len(token):,} characters, where one of this model has {self.token_chars:,}",
            )
        if not _ALPHABET.fullmatch(token):
            raise StateTokenError(400, "state token is not URL-safe base64")
        if len(token) % 4 == 1:  # no base64 text has this length
            raise StateTokenError(400, "state token is truncated")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if len(raw) < HEADER.size + TAG_BYTES:
            raise StateTokenError(400, "state token is truncated")
        version, digest, chars = HEADER.unpack_from(raw)
        if version != VERSION:
            raise StateTokenError(400, f"state token has format version {version}; this server reads {VERSION}")
        if digest == self._digest and len(raw) != self.token_bytes:
            problem = "truncated" if len(raw) < self.token_bytes else "too long"
            raise StateTokenError(
                400, f"state token is {problem}: {len(raw):,} bytes, where one of this model has {self.token_bytes:,}"
            )
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise StateTokenError(
                400, "state token's signature does not match: it was altered, or signed with another RNNLM_STATE_SECRET"
            )
        if digest != self._digest:
            raise StateTokenError(
                409,
                f"state token was made by another model (weights sha256 {digest.hex()[:16]}…), "
                f"not this server's ({self._digest.hex()[:16]}…)",
            )
        if chars >= MAX_CHARS:
            raise StateTokenError(
                422, f"state token claims to have read {chars:,} characters: at most {MAX_CHARS - 1:,}"
            )
        return OpenedState(chars, body[HEADER.size :], tag)
