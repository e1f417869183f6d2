"""Giving memory back after a large reply. A response of tens of megabytes (OpenAI's ``echo`` with ``logprobs`` over
a long prompt) is built from many small Python objects; once it is sent they are freed, but glibc's malloc keeps
the pages for reuse and the process's RSS stays up. ``malloc_trim(0)`` returns what is free. Both processes use
it: the engine after sending a large frame, the HTTP side after a large response (:class:`GiveBackMemory`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LARGE_REPLY_BYTES", "GiveBackMemory", "give_back_freed_memory"]

LARGE_REPLY_BYTES = 4 << 20  # after a reply larger than this, free memory goes back to the system


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, found once (``find_library`` runs ``ldconfig``: ~2 ms); None without it."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    return trim


def give_back_freed_memory() -> bool:
    """``malloc_trim(0)``: whether memory was returned (False on a C library without it)."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))


class GiveBackMemory:
    """After a response whose body exceeded :data:`LARGE_REPLY_BYTES`, give the freed memory back."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)
        if sent > LARGE_REPLY_BYTES:
            give_back_freed_memory()
