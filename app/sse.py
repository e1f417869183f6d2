"""Server-sent events: turning a running generation into a ``text/event-stream`` response."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from app.engine_client import Generation
from app.errors import ApiError, error_body

__all__ = ["event", "stream_generation"]

logger = logging.getLogger("rnnlm")


def event(data: dict | str, name: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"


def stream_generation(generation: Generation, on_piece: Callable[[str], str],
                      on_end: Callable[[Generation], list[str]], first: list[str] = ()) -> StreamingResponse:
    """The events ``first``, then ``on_piece(piece)`` for each released piece of text, then the events
    ``on_end`` gives. If the client goes away first, the generation is cancelled."""

    async def body() -> AsyncIterator[str]:
        finished = False
        try:
            for event_text in first:
                yield event_text
            async for piece in generation.stream():
                yield on_piece(piece)
            for end in on_end(generation):
                yield end
            finished = True
        except ApiError as e:  # the status line has gone: report the failure as an event (the engine died, say)
            logger.warning("streamed generation ended early: %s", e.message)
            yield event(error_body(e.status, e.message, e.param), "error")
        except Exception:  # never a traceback
            logger.exception("streamed generation failed")
            yield event(error_body(500, "generation failed"), "error")
        finally:
            if not finished:
                logger.info("client went away mid-stream: generation cancelled")
            generation.cancel()  # a no-op once it has finished

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
