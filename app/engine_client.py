"""The HTTP process's side of the engine: sends a request to the engine process and hands the routes what
comes back. Nothing here touches a tensor (nor imports torch).

One Unix-domain socket connection per HTTP process, read by an asyncio protocol that routes every reply to
its request by id. When the engine dies the connection closes: every request in flight ends at once with a
503, :attr:`EngineClient.ready` is False, and the client reconnects until a restarted engine has answered
``hello`` again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.types import Receive

from app import protocol as p
from app.errors import ApiError
from app.protocol import TokenInfo
from app.settings import Settings
from app.tokens import CharTokens

__all__ = ["EngineClient", "Generation", "TokenInfo"]

logger = logging.getLogger("rnnlm")

_END = object()
ENGINE_LOST = "the engine stopped while serving this request; retry"


@dataclass
class Generation:
    """What a client gets back: the released text so far and, at the end, the totals."""

    prefix: str
    unknown_chars: int = 0
    cached_chars: int = 0  # characters of the prefix whose state came from the prefix cache
    completion: str = ""
    finish_reason: str = "length"
    stop_reason: str | None = None  # the stop sequence that ended it (read by the state, not in the completion)
    state: str | None = None  # on request: the token of the state after prefix + completion + stop_reason
    state_chars: int = 0
    tokens: list[TokenInfo] = field(default_factory=list)
    pieces: asyncio.Queue | None = None  # streaming only: released text, then the end marker (or an error)
    cancel: Callable[[], None] = lambda: None  # stop generating (the client has gone)

    @property
    def num_tokens(self) -> int:
        return len(self.completion)

    async def stream(self) -> AsyncIterator[str]:
        """Streaming: each piece of released text as it arrives; raises if the generation failed."""
        while (piece := await self.pieces.get()) is not _END:
            if isinstance(piece, BaseException):
                raise piece
            text, infos = piece
            self.completion += text
            self.tokens.extend(infos)
            yield text

    def replay(self) -> None:
        """Turn a finished (not streamed) generation into a stream of its whole text, in one piece."""
        text, tokens = self.completion, self.tokens
        self.completion, self.tokens = "", []
        self.pieces = asyncio.Queue()
        if text:
            self.pieces.put_nowait((text, tokens))
        self.pieces.put_nowait(_END)

    def finish(self, result: p.GenerationResult) -> None:
        self.cached_chars, self.unknown_chars = result.cached_chars, result.unknown_chars
        self.finish_reason, self.stop_reason = result.finish_reason, result.stop_reason
        self.state, self.state_chars = result.state, result.state_chars
        if self.pieces is None:
            self.completion, self.tokens = result.completion, result.tokens


@dataclass(eq=False)
class _Pending:
    """A request sent to the engine: its result, and for streams the first sign of life."""

    rid: int
    result: asyncio.Future
    generations: list[Generation] = field(default_factory=list)
    first: asyncio.Future | None = None  # streaming: set at the first piece, result or error
    state_param: str = "state"  # what the route calls the state token, for errors about it


class _EngineProtocol(asyncio.Protocol):
    def __init__(self, client: EngineClient):
        self.client = client
        self.reader = p.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            try:
                self.client._dispatch(*message)
            except Exception:  # a bug here must not stop every later reply from arriving
                logger.exception("could not handle the engine's %r", message[0])

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class EngineClient:
    RECONNECT_EVERY_S = 0.05

    def __init__(self, address: str, settings: Settings):
        self.address = address  # the engine's Unix-domain socket
        self.settings = settings
        self._ids = itertools.count(1)
        self._groups = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._ready = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self.engine: dict = {}  # the engine's description (READY): config, vocab, pid, …
        self.tokens = CharTokens(["<unk>"])  # the engine's characters as token ids, once it has answered
        self._task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, timeout: float = 120.0) -> None:
        """Connect (and keep reconnecting), and wait until the engine has answered (raises TimeoutError)."""
        self._task = asyncio.create_task(self._connect())
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
        self._lose_engine("the server is shutting down")

    async def _connect(self) -> None:
        """Connect, say hello, and on a lost connection fail everything in flight and connect again."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                transport, protocol = await loop.create_unix_connection(lambda: _EngineProtocol(self), self.address)
            except OSError:  # not there yet, or restarting
                await asyncio.sleep(self.RECONNECT_EVERY_S)
                continue
            self._transport = transport
            self._send(p.HELLO, 0, None)
            await protocol.lost
            self._transport = None
            if self.ready:
                logger.warning("lost the engine; %d requests in flight end with 503", len(self._pending))
            self._ready.clear()
            self._lose_engine(ENGINE_LOST)

    def _lose_engine(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for request in pending.values():
            self._fail(request, ApiError(503, message, headers={"Retry-After": "1"}))

    def _dispatch(self, kind: str, rid: int, payload) -> None:
        if kind == p.READY:
            self.engine = payload
            self.tokens = CharTokens(payload["vocab"])
            self._ready.set()
            return
        request = self._pending.get(rid)
        if request is None:  # cancelled, or from before the engine restarted
            return
        if kind == p.PIECES:
            self._pieces(request, payload)
            return
        del self._pending[rid]
        if kind == p.ERROR:
            status, message, param = payload
            headers = {"Retry-After": "1"} if status in (429, 503) else None
            param = request.state_param if param == "state" else param
            self._fail(request, ApiError(status, message, param, headers=headers))
        else:  # DONE or STATS
            self._succeed(request, payload)

    def _pieces(self, request: _Pending, pieces: list) -> None:
        for index, text, infos in pieces:
            request.generations[index].pieces.put_nowait((text, infos))
        _settle(request.first, None)

    def _succeed(self, request: _Pending, payload) -> None:
        for g, result in zip(request.generations, payload if request.generations else ()):
            g.finish(result)
            if g.pieces is not None:
                g.pieces.put_nowait(_END)
        _settle(request.first, None)
        _settle(request.result, payload)

    def _fail(self, request: _Pending, error: ApiError) -> None:
        for g in request.generations:
            if g.pieces is not None:
                g.pieces.put_nowait(error)
                g.pieces.put_nowait(_END)
        _settle(request.first, error)
        _settle(request.result, error)

    def _send(self, kind: str, rid: int, payload) -> None:
        if self._transport is None:
            raise ApiError(503, "the engine is not ready; retry shortly", headers={"Retry-After": "1"})
        self._transport.write(p.frame([(kind, rid, payload)]))

    def _request(
        self, kind: str, payload, generations: list[Generation] = (), stream: bool = False, state_param: str = "state"
    ) -> _Pending:
        if not self.ready:
            raise ApiError(503, "the engine is not ready; retry shortly", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        request = _Pending(
            rid, loop.create_future(), list(generations), loop.create_future() if stream else None, state_param
        )
        self._pending[rid] = request
        for g in generations:
            g.cancel = lambda: self._cancel(rid)
        try:
            self._send(kind, rid, payload)
        except ApiError:
            del self._pending[rid]
            raise
        return request

    def _cancel(self, rid: int) -> None:
        if self._pending.pop(rid, None) is not None and self._transport is not None:
            self._send(p.CANCEL, rid, None)

    async def _wait(self, request: _Pending, future: asyncio.Future, receive: Receive | None = None):
        """Await ``future``. If the client goes away first — the handler is cancelled, or ``receive`` (the
        request's ASGI channel, whose body has been read) reports the disconnect — cancel the request in the
        engine."""
        watcher = asyncio.ensure_future(_disconnect(receive)) if receive is not None else None
        try:
            if watcher is not None:
                await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not future.done():
                    raise ApiError(499, "the client closed the connection")
            return await asyncio.shield(future)
        except (asyncio.CancelledError, ApiError):
            self._cancel(request.rid)  # a no-op once the engine has answered
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    # -- limits ---------------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        """A request may name the served model (its weight file's stem) or none."""
        if model not in (None, self.settings.model_id):
            raise ApiError(404, f"model {model!r} not found; this server serves {self.settings.model_id!r}", "model")

    def check_chars(self, value: str, param: str) -> None:
        """A text the server wrote from a request (a chat's rendered messages) is within ``max_text_chars``; the
        texts a request holds are bounded by its schema (app/limits.py)."""
        if len(value) > self.settings.max_text_chars:
            raise ApiError(
                422, f"{param} has {len(value):,} characters; the limit is {self.settings.max_text_chars:,}", param
            )

    # -- the work -------------------------------------------------------------------------------------------
    def new_group(self) -> int:
        """A group for the prompts of one HTTP request (see :meth:`generate`)."""
        return next(self._groups)

    async def generate(
        self,
        prefix: str,
        num_tokens: int,
        samplers: list[dict],
        stops: list[str],
        top_logprobs: int | None = None,
        *,
        stream: bool = False,
        param_prefix: str = "prefix",
        receive: Receive | None = None,
        allow_empty: bool = False,
        min_tokens: int = 0,
        server_stops: list[str] = (),
        state: str | None = None,
        return_state: bool = False,
        param_state: str = "state",
        group: int | None = None,
    ) -> list[Generation]:
        """Warm the state on ``prefix`` once and continue it once per sampler (Sampler fields as a dict), up
        to ``num_tokens`` characters each. Returns the finished generations; with ``stream`` as soon as the
        engine has sent their first text (read :meth:`Generation.stream`), so a refusal still has its status.
        With ``allow_empty`` an empty prefix starts from the zero state (or ``state``); ``server_stops`` (the
        chat template's turn end) are added to the client's ``stops`` after their limits are checked.
        ``state`` (a state token) is where reading starts; with ``return_state`` each generation carries the
        token of its final state. Prompts of one HTTP request pass one ``group`` (:meth:`new_group`): the engine
        shares its batch fairly between groups, not between prompts."""
        if not prefix and not allow_empty and state is None:
            raise ApiError(422, f"{param_prefix} must contain at least one character", param_prefix)
        generations = [Generation(prefix, pieces=asyncio.Queue() if stream else None) for _ in samplers]
        body = p.GenerateRequest(
            prefix,
            num_tokens,
            samplers,
            [*stops, *server_stops],
            top_logprobs,
            stream,
            min_tokens,
            state,
            return_state,
            group,
        )
        request = self._request(p.GENERATE, body, generations, stream, param_state)
        await self._wait(request, request.first if stream else request.result, receive)
        return generations

    async def perplexity(
        self,
        text: str,
        context: str | None,
        return_logprobs: bool,
        top_k: int = 0,
        receive: Receive | None = None,
        state: str | None = None,
        return_state: bool = False,
        param_state: str = "state",
    ) -> p.ScoreResult:
        """The score of ``text`` (after ``state``'s text and ``context``), with how many characters of both
        are outside the vocabulary and how many context characters came from the prefix cache."""
        if len(text) + (1 if context or state is not None else 0) < 2:
            raise ApiError(
                422, "text is too short to score: give at least 2 characters, or 1 after a context or a state", "text"
            )
        body = p.ScoreRequest(text, context or None, return_logprobs, top_k, state, return_state)
        request = self._request(p.SCORE, body, state_param=param_state)
        return await self._wait(request, request.result, receive)

    async def stats(self) -> dict:
        """The engine's figures now (batch, queue, prefix cache); empty while it is not ready."""
        if not self.ready:
            return {}
        request = self._request(p.STATS, None)
        try:
            return await asyncio.wait_for(self._wait(request, request.result), 5)
        except (ApiError, asyncio.TimeoutError):
            return {}


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _settle(future: asyncio.Future | None, outcome) -> None:
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # marked as retrieved: whoever awaits it still gets it; nobody else need
    else:
        future.set_result(outcome)
