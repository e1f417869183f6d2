"""uvicorn's HTTP protocol (httptools), with the bounds uvicorn does not have: how long a client may take to send
its headers and its body, and how large its headers may be; and the project's error body where uvicorn answers
a request it cannot parse in plain text.

- **Header deadline** (``RNNLM_HEADER_TIMEOUT_S``, 10 s): from a connection's first byte (or its opening) to the
  end of the request's headers. A client that sends nothing, or trickles its headers a byte at a time, gets 408
  and is closed. (uvicorn's keep-alive timeout closes an idle connection between requests; it is disarmed by any
  byte, so it does not bound a trickle.)
- **Body deadline** (``RNNLM_BODY_TIMEOUT_S``, 30 s): from the end of the headers to the end of the body: a body
  that stops halfway (``Content-Length`` larger than what comes, a chunked body that never ends) gets 408.
- **Header size** (``RNNLM_MAX_HEADER_BYTES``, 64 KiB): headers past it get 431 before more is buffered.
- **Malformed framing** (``Content-Length: -1``, both ``Content-Length`` and ``Transfer-Encoding``, …): 400 with
  the error body, not uvicorn's ``Invalid HTTP request received.``
- **Open connections** (``RNNLM_MAX_CONNECTIONS`` per HTTP process; 0: the descriptor limit less 64): past the
  bound, each new connection closes the oldest one still waiting for its first request (a slow or idle client)
  with 503, so descriptors never run out and a probe always gets in; and while the bound is exceeded, requests
  other than ``/health`` and ``/ready`` get 503 and a closed connection.

Every such answer closes the connection. ``rnnlm-serve`` runs uvicorn with this protocol (``http=``); it is the
HTTP side's only change to uvicorn.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.errors import error_json
from app.settings import Settings

__all__ = ["BoundedHttpProtocol"]

logger = logging.getLogger("rnnlm")

_PROBE_PATHS = {b"/health", b"/ready"}  # answered whatever the load
DESCRIPTORS_KEPT = 64  # for the engine's socket, log files, the metrics folder: not for connections


@functools.cache
def _bounds() -> tuple[float, float, int, int]:
    """This process's bounds, from the environment (every worker reads its own)."""
    settings = Settings()
    connections = settings.max_connections or max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - DESCRIPTORS_KEPT)
    return settings.header_timeout_s, settings.body_timeout_s, settings.max_header_bytes, connections


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timeout, self._body_timeout, self._max_header_bytes, self._max_connections = _bounds()
        self._reading_headers = True  # the next bytes belong to a request's head
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._opened = 0.0

    # -- the deadlines ------------------------------------------------------------------------------------------
    def _arm(self, seconds: float, message: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._late, message)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self, message: str) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:  # the app answers: it sees the disconnect
            self.transport.close()
        else:
            self._refuse(408, message)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._arm(self._header_timeout, f"the request's headers did not arrive within {self._header_timeout:g} s")
        if len(self.connections) > self._max_connections:
            self._close_oldest_waiting()

    def _close_oldest_waiting(self) -> None:
        """Over the bound: the connection open longest with no request running (slow or idle) makes room."""
        waiting = [c for c in self.connections if isinstance(c, BoundedHttpProtocol) and c is not self and c._idle]
        if waiting:
            oldest = min(waiting, key=lambda c: c._opened)
            oldest._refuse(503, f"the server holds {self._max_connections:,} connections: this one waited longest")

    @property
    def _idle(self) -> bool:
        """No request running: its headers not complete yet (or not begun), the last response, if any, sent."""
        return self._reading_headers and (self.cycle is None or self.cycle.response_complete)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            if self._deadline is None:  # the first byte of the next request on a kept-alive connection
                self._arm(
                    self._header_timeout, f"the request's headers did not arrive within {self._header_timeout:g} s"
                )
            end = data.find(b"\r\n\r\n")
            seen = self._header_bytes + (len(data) if end < 0 else end)
            if seen > self._max_header_bytes:
                return self._refuse(431, f"the request's headers exceed {self._max_header_bytes:,} bytes")
            self._header_bytes = seen
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._arm(self._body_timeout, f"the request's body did not arrive within {self._body_timeout:g} s")
        if len(self.connections) > self._max_connections and self.url.split(b"?")[0] not in _PROBE_PATHS:
            self._refuse(503, f"the server holds {self._max_connections:,} connections; retry shortly")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():  # (refused: the rest of the request is read and dropped)
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        self._reading_headers, self._header_bytes = True, 0
        self._disarm()  # the next request's deadline starts at its first byte; uvicorn's keep-alive until then
        super().on_response_complete()

    # -- answers uvicorn would give in plain text, or not at all --------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed HTTP request: its request line, headers or framing cannot be parsed")

    def _refuse(self, status: int, message: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        logger.info("refused a connection with %d: %s", status, message)
        body = error_json(status, message)
        head = [
            STATUS_LINE[status],
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
