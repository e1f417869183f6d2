"""Graceful shutdown of an HTTP process: on SIGTERM (or a first Ctrl-C) stop taking work, let the requests in
flight finish within ``drain_seconds``, then let uvicorn exit.

While draining, ``/ready`` answers 503 (a load balancer stops sending) and every new request except
``/health`` gets 503 with ``Retry-After``; the requests already running, streams included, go on. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from app.middleware import send_error

__all__ = ["Drain", "DrainMiddleware"]

logger = logging.getLogger("rnnlm")

ALWAYS_ANSWERED = {"/health", "/ready"}  # /ready answers 503 itself while draining


class Drain:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.draining = False
        self.in_flight = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wrap the SIGTERM/SIGINT handlers uvicorn has installed (in the main thread only); False where there
        are none to wrap (a test client's thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        installed = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if callable(previous):
                signal.signal(sig, self._handler(loop, previous))
                installed = True
        return installed

    def _handler(self, loop: asyncio.AbstractEventLoop, exit_now):
        def on_signal(sig, frame) -> None:
            if self.draining:  # a second signal: no more waiting
                exit_now(sig, frame)
                return
            self.draining = True
            logger.info("draining: %d requests in flight get %.0f s to finish", self.in_flight, self.seconds)
            loop.call_soon_threadsafe(lambda: loop.create_task(self._then(lambda: exit_now(sig, frame))))

        return on_signal

    async def _then(self, exit_now) -> None:
        deadline = time.monotonic() + self.seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        exit_now()


class DrainMiddleware:
    """Counts the requests in flight; while draining, refuses new ones with 503."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            return await self.app(scope, receive, send)
        if self.drain.draining:
            return await send_error(
                send, 503, "the server is shutting down; retry on another replica", [(b"retry-after", b"1")]
            )
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
