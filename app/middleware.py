"""Pure ASGI middleware: request metrics, the optional API key, and the request-body size limit.

Order (outermost first): CORS → metrics → API key → body limit → the app. CORS is outermost so preflight
requests never need the key and error responses still carry CORS headers.
"""

from __future__ import annotations

import hmac
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_json
from app.metrics import Metrics

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "MetricsMiddleware"]

PUBLIC_PATHS = {"/health", "/ready", "/"}  # "/" is the static page, which then asks for the key


async def send_error(send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = error_json(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """When a key is configured, every request but OPTIONS, the probes and the page needs ``Bearer <key>`` (the
    scheme in any case, as RFC 7235 says, then one or more spaces)."""

    def __init__(self, app: ASGIApp, api_key: str | None, public_paths: set[str] = PUBLIC_PATHS):
        self.app = app
        self.expected = api_key.encode() if api_key else None
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is None
            or scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or scope["path"] in self.public_paths
        ):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.lstrip(b" "), self.expected):
            message = "missing API key" if not given else "invalid API key"
            return await send_error(
                send, 401, f"{message}: send 'Authorization: Bearer <key>'", [(b"www-authenticate", b"Bearer")]
            )
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over the limit: from Content-Length before reading, or while reading a chunked body
    (then the 413 is sent at once, the app sees a disconnected client, and its own response is dropped)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body exceeds {self.max_bytes:,} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                return await send_error(send, 400, "invalid Content-Length header")
            if too_large:
                return await send_error(send, 413, message)
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    await send_error(send, 413, message)
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg: Message) -> None:
            if not refused:
                await send(msg)

        await self.app(scope, limited_receive, guarded_send)


class MetricsMiddleware:
    """Counts every response by route template (not raw path) and status, and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    @staticmethod
    def route_of(scope: Scope) -> str:
        """The matched route's template, which the router leaves in the scope; a bounded set of labels."""
        return getattr(scope.get("route"), "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = self.route_of(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
