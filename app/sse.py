"""Server-sent events: turning a running generation into a ``text/event-stream`` response."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.engine import Generation
from app.errors import error_body

__all__ = ["event", "stream_generation"]

_DONE = object()
logger = logging.getLogger("rnnlm")


def event(data: dict | str, name: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"


def stream_generation(generation: Generation, on_piece: Callable[[str], str],
                      on_end: Callable[[Generation], list[str]], first: list[str] = ()) -> StreamingResponse:
    """The events ``first``, then ``on_piece(piece)`` for each released piece of text, then the events
    ``on_end`` gives. The model steps run in a worker thread, one at a time, so the event loop stays free."""
    pieces = iter(generation)

    async def body() -> AsyncIterator[str]:
        for event_text in first:
            yield event_text
        try:
            while (piece := await run_in_threadpool(next, pieces, _DONE)) is not _DONE:
                yield on_piece(piece)
            for end in on_end(generation):
                yield end
        except Exception:  # the status line has gone: report the failure as an event, never a traceback
            logger.exception("streamed generation failed")
            yield event(error_body(500, "generation failed"), "error")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
