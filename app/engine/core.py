"""The engine process: the one place the model runs.

It owns the model, the continuous batch (:class:`~app.engine.scheduler.Scheduler`), the prefix cache, its OpenBLAS
threads and its floating-point settings (what each request message becomes is :mod:`app.engine.requests`), and
serves every HTTP process of the server on one Unix-domain socket (one connection per HTTP process; frames as
:mod:`app.protocol` writes them). Its loop reads all waiting requests, runs one scheduler turn, then sends each
HTTP process one frame with everything that turn produced — finished results, and streamed text coalesced by
time (``stream_flush_ms``; the first piece of every stream goes at once). A lone sequence generating with nothing
else to do looks at the sockets every ``SERVICE_EVERY_S`` so new requests join the batch. An HTTP process that
goes away has its requests cancelled.

Lifetime: started and watched by :class:`app.supervisor.EngineSupervisor` through a pipe, on which it reports
``("ready", pid)`` or ``("error", message)`` once, and whose closing (the supervisor has gone) ends it at once.
SIGINT is ignored (a terminal's Ctrl-C reaches the whole process group; the HTTP side drains and then stops the
engine); SIGTERM drains: running work finishes, new work gets 503, then it exits 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app import protocol as p
from app.engine.cpus import BlasThreads, engine_blas_threads, limit_blas_threads, usable_cpus
from app.engine.jobs import GenerationJob, QueueFull, TaskJob
from app.engine.prefix_cache import PrefixCache
from app.engine.requests import Requests
from app.engine.scheduler import OneAtATime, Scheduler, prepare_model_thread
from app.engine.state_tokens import VERSION as STATE_VERSION
from app.engine.state_tokens import StateCodec, StateTokenError
from app.memory import LARGE_REPLY_BYTES, give_back_freed_memory
from app.settings import Settings
from model import WeightsError, load_weights

__all__ = ["EngineCore", "StartupError", "main"]

logger = logging.getLogger("rnnlm.engine")

SERVICE_EVERY_S = 0.0005  # a lone generating sequence looks for new requests this often


class StartupError(Exception):
    """The engine cannot start (a bad weight file or device): one line for the operator."""


@dataclass(eq=False)
class _Stream:
    """One streamed decoding's released text not yet sent, and when it is due."""

    index: int
    text: list[str] = field(default_factory=list)
    infos: list[p.TokenInfo] = field(default_factory=list)
    due: float | None = None  # None: nothing waiting
    sent: bool = False


class _Connection:
    """One HTTP process: its socket, the bytes read but not yet parsed, the bytes not yet written."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = p.FrameReader()
        self.unsent = bytearray()
        self.closed = False
        self.waiting_to_write = False  # registered for EVENT_WRITE: the socket's buffer was full


@dataclass(eq=False)
class _Request:
    client: _Connection
    rid: int
    job: object
    streams: list[_Stream] = field(default_factory=list)


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, if this torch can put a tensor there; else a :class:`StartupError`."""
    try:
        device = torch.device(name)
        torch.zeros(1, device=device)
    except Exception as e:  # a malformed name (RuntimeError), a build without CUDA (AssertionError), …
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StartupError(f"RNNLM_DEVICE={name!r} cannot be used by this torch build: {reason}") from None
    return device


def step_flops(model) -> float:
    """Floating-point operations of one row of a decoding step: each layer's recurrent product (and, above the
    first, its input product — the first layer's is a row lookup), then the output head."""
    products = sum(layer.w_hh.numel() + (layer.w_xh.numel() if i else 0) for i, layer in enumerate(model.layers))
    return 2.0 * (products + model.w_y.numel())


class EngineCore:
    def __init__(self, settings: Settings, address: str):
        self.settings = settings
        prepare_model_thread(settings.model_threads, settings.flush_denormal)
        self.blas_threads = limit_blas_threads(engine_blas_threads(settings.blas_threads, usable_cpus()))
        device = check_device(settings.device)
        try:
            self.loaded = load_weights(settings.weights, device=device)
        except WeightsError as e:
            raise StartupError(str(e)) from None
        self.model = self.loaded.model
        self.vocab = self.loaded.vocab
        secret = settings.state_secret.get_secret_value().encode() if settings.state_secret else secrets.token_bytes(32)
        self.states = StateCodec(secret, self.loaded.sha256, sum(s.numel() for s in self.model.init_state(1)))
        self.blas = BlasThreads(self.blas_threads, step_flops(self.model))
        self.cache = (
            PrefixCache(settings.prefix_cache_entries, int(settings.prefix_cache_mb * 2**20))
            if settings.prefix_cache_entries > 0
            else None
        )
        if settings.batching:
            self.scheduler = Scheduler(
                self.model,
                self.cache,
                settings.max_batch_size,
                settings.max_queue,
                settings.prefill_chars,
                settings.chunk_chars,
                self._interrupt,
                settings.cuda_graphs,
            )
        else:
            self.scheduler = OneAtATime(
                self.model, self.cache, settings.max_queue, settings.chunk_chars, self._interrupt
            )
        self.requests = Requests(
            self.model, self.vocab, self.cache, self.states, settings.chunk_chars, settings.stream_flush_ms > 0
        )
        self.flush_s = settings.stream_flush_ms / 1000
        self._requests: dict[tuple[_Connection, int], _Request] = {}
        self._outbox: dict[_Connection, list[tuple]] = {}
        self._streaming: set[_Request] = set()  # requests with streamed text not yet sent
        self._submitted = 0
        self._next_service = 0.0
        self._urgent = False  # streamed text that must go now: a stream's first piece, or every piece at 0 ms
        self._draining_since: float | None = None
        self.requests_served = 0
        self.busy_seconds = 0.0  # time spent running the model (scheduler turns)
        if os.path.exists(address):  # a previous engine's socket file
            os.unlink(address)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)

    # -- the loop -------------------------------------------------------------------------------------------
    def serve(self, lifeline) -> None:
        """Run until the supervisor goes (``lifeline`` readable) or a SIGTERM drain ends."""
        self.selector.register(lifeline.fileno(), selectors.EVENT_READ, "lifeline")
        while True:
            if not self._poll(0 if self.scheduler.busy else 1.0):
                return
            if self.scheduler.busy:
                self.blas.fit(self.scheduler.batch_rows + self.scheduler.queued)
                start = time.perf_counter()
                self.scheduler.run_once()
                self.busy_seconds += time.perf_counter() - start
            self._send(time.perf_counter())
            if self._draining_since is not None and self._drained():
                return

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, _Connection):
                key.data.sock.close()
        self.selector.close()
        self.listener.close()

    def _poll(self, timeout: float) -> bool:
        """Accept connections, read what has arrived and write what is waiting; False once the supervisor
        has gone."""
        for key, mask in self.selector.select(timeout):
            if key.data == "lifeline":
                return False
            if key.data is None:
                self._accept()
                continue
            if mask & selectors.EVENT_READ:
                self._read(key.data)
            if mask & selectors.EVENT_WRITE:
                self._write(key.data)
        return True

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, _Connection(sock))

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._hang_up(conn)
            return
        for rid_message in conn.reader.feed(data):
            kind, rid, payload = rid_message
            try:
                self._handle(conn, kind, rid, payload)
            except Exception as error:  # a malformed message is that request's failure, never the engine's
                self._reply_error(conn, rid, error)

    def _hang_up(self, conn: _Connection) -> None:
        """The HTTP process has gone: cancel its requests."""
        conn.closed = True
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self._outbox.pop(conn, None)
        for (client, _), request in list(self._requests.items()):
            if client is conn:
                self.scheduler.cancel(request.job)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.unsent)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._hang_up(conn)
            return
        del conn.unsent[:sent]
        if bool(conn.unsent) != conn.waiting_to_write:
            conn.waiting_to_write = bool(conn.unsent)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.unsent else 0)
            self.selector.modify(conn.sock, events, conn)

    def drain(self, *_) -> None:
        """SIGTERM: finish what runs, refuse what comes."""
        if self._draining_since is None:
            self._draining_since = time.monotonic()

    def _drained(self) -> bool:
        if not self.scheduler.busy:
            return True
        if time.monotonic() - self._draining_since > self.settings.drain_seconds:
            self.scheduler.fail_all(_Refused(503, "the engine is shutting down"), pending=True)
            self._send(time.perf_counter())
            return True
        return False

    def _interrupt(self) -> bool:
        """Between a lone sequence's tokens: every SERVICE_EVERY_S (or at once for per-token streaming), read
        waiting messages and send due output. True when new work arrived."""
        now = time.perf_counter()
        if now < self._next_service and not self._urgent:
            return False
        self._next_service = now + SERVICE_EVERY_S
        before = self._submitted
        self._poll(0)
        self._send(now)
        return self._submitted != before

    # -- incoming -------------------------------------------------------------------------------------------
    def _handle(self, client: _Connection, kind: str, rid: int, payload) -> None:
        if kind == p.HELLO:
            self._post(client, (p.READY, rid, self.describe()))
        elif kind == p.STATS:
            self._post(client, (p.STATS, rid, self.figures()))
        elif kind == p.CANCEL:
            request = self._requests.get((client, rid))
            if request is not None:
                self.scheduler.cancel(request.job)
        elif self._draining_since is not None:
            raise _Refused(503, "the engine is shutting down")
        elif kind == p.GENERATE:
            self._submit(_Request(client, rid, None), self._generation_job, payload)
        elif kind == p.SCORE:
            self._submit(_Request(client, rid, None), self._score_job, payload)
        else:
            raise _Refused(400, f"unknown message {kind!r}")

    def _submit(self, request: _Request, build: Callable, payload) -> None:
        request.job = build(request, payload)
        try:
            self.scheduler.submit(request.job)
        except QueueFull:
            raise _Refused(
                429, f"the server is busy: {self.settings.max_queue} requests are already queued; retry shortly"
            ) from None
        self._requests[request.client, request.rid] = request
        self._submitted += 1

    def _generation_job(self, request: _Request, r: p.GenerateRequest) -> GenerationJob:
        on_pieces = None
        if r.stream:
            request.streams = [_Stream(i) for i in range(len(r.samplers))]
            on_pieces = [self._piece_sink(request, stream) for stream in request.streams]
        group = None if r.group is None else (request.client, r.group)  # one HTTP request's prompts
        return self.requests.generation(r, lambda result, error: self._done(request, result, error), on_pieces, group)

    def _score_job(self, request: _Request, r: p.ScoreRequest) -> TaskJob:
        return self.requests.scoring(r, lambda result, error: self._done(request, result, error))

    # -- outgoing -------------------------------------------------------------------------------------------
    def _piece_sink(self, request: _Request, stream: _Stream) -> Callable[[str, list[p.TokenInfo]], None]:
        def sink(text: str, infos: list[p.TokenInfo]) -> None:
            if stream.due is None:  # a stream's first piece goes at once: the time to the first token counts
                stream.due = time.perf_counter() + (self.flush_s if stream.sent else 0.0)
                self._urgent = self._urgent or not stream.sent or self.flush_s == 0
            stream.text.append(text)
            stream.infos.extend(infos)
            self._streaming.add(request)

        return sink

    def _done(self, request: _Request, result, error: BaseException | None) -> None:
        self._flush_stream(request, None)  # streamed text before the result
        self._requests.pop((request.client, request.rid), None)
        self.requests_served += 1
        if error is not None:
            self._reply_error(request.client, request.rid, error)
            return
        job = request.job
        try:  # a reply that cannot be made (a state that cannot be sealed) fails its request, nothing else
            if isinstance(job, GenerationJob):
                payload = self.requests.generation_reply(job)
            else:
                payload = self.requests.score_reply(result, job)
        except Exception as error:
            self._reply_error(request.client, request.rid, error)
            return
        self._post(request.client, (p.DONE, request.rid, payload))

    def _reply_error(self, client: _Connection, rid: int, error: BaseException) -> None:
        param = None
        if isinstance(error, _Refused):
            status, message = error.status, str(error)
        elif isinstance(error, StateTokenError):
            status, message, param = error.status, str(error), "state"
        elif isinstance(error, ValueError):  # the model package's own checks, e.g. nothing to score
            status, message = 422, str(error)
        else:
            logger.error("request failed in the engine: %r", error)
            status, message = 500, "internal error in the engine"
        self._post(client, (p.ERROR, rid, (status, message, param)))

    def _post(self, client: _Connection, message: tuple) -> None:
        if not client.closed:
            self._outbox.setdefault(client, []).append(message)

    def _flush_stream(self, request: _Request, now: float | None) -> None:
        """Queue the request's waiting streamed text (only what is due, unless ``now`` is None)."""
        pieces = []
        for s in request.streams:
            if s.due is not None and (now is None or s.due <= now):
                pieces.append((s.index, "".join(s.text), s.infos))
                s.text, s.infos, s.due, s.sent = [], [], None, True
        if pieces:
            self._post(request.client, (p.PIECES, request.rid, pieces))
        if all(s.due is None for s in request.streams):
            self._streaming.discard(request)

    def _send(self, now: float) -> None:
        """One frame per HTTP process with everything due for it."""
        self._urgent = False
        for request in list(self._streaming):
            self._flush_stream(request, now)
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, {}
        sent = 0
        for conn, messages in outbox.items():
            data = p.frame(messages)
            sent += len(data)
            conn.unsent += data
            self._write(conn)
        if sent > LARGE_REPLY_BYTES:  # its Python objects are gone by now: give their memory back
            give_back_freed_memory()

    # -- description ----------------------------------------------------------------------------------------
    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "config": cfg.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": self.vocab.tokens,
            "training": self.loaded.training,
            "device": str(self.model.device),
            "pid": os.getpid(),
            "blas_threads": self.blas_threads,
            "weights_sha256": self.loaded.sha256,
            "state_token": {
                "version": STATE_VERSION,
                "bytes": self.states.token_bytes,
                "chars": self.states.token_chars,
            },
        }

    def figures(self) -> dict:
        s, cache = self.scheduler, self.cache
        out = {
            "batch_rows": s.batch_rows,
            "queued": s.queued,
            "batch_steps": s.steps,
            "batch_rows_stepped": s.rows_stepped,
            "batch_rows_put_aside": s.rows_put_aside,
            "requests_in_engine": len(self._requests),
            "requests_served": self.requests_served,
            "busy_seconds": self.busy_seconds,
            "chars_read": self.requests.chars_read,
            "state_tokens_read": self.requests.state_tokens_read,
        }
        if cache is not None:
            out.update(
                cache_entries=len(cache),
                cache_bytes=cache.bytes,
                cache_hits=cache.hits,
                cache_misses=cache.misses,
                cache_hit_chars=cache.hit_chars,
            )
        return out


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def main(settings: Settings, address: str, lifeline) -> None:
    """The engine process's entry point (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     rnnlm engine: %(message)s", stream=sys.stderr)
    try:
        core = EngineCore(settings, address)
    except StartupError as e:
        lifeline.send(("error", str(e)))
        sys.exit(2)
    signal.signal(signal.SIGTERM, core.drain)
    lifeline.send(("ready", os.getpid()))
    core.serve(lifeline)
    core.close()
