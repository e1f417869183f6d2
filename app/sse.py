"""Server-sent events: turning a running generation into a ``text/event-stream`` response."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from app.engine_client import Generation
from app.errors import ApiError, error_body

__all__ = ["event", "stream_choices", "stream_generation"]

logger = logging.getLogger("rnnlm")


def event(data: dict | str, name: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {name}\n" if name else "") + f"data: {payload}\n\n"


def stream_generation(
    generation: Generation,
    on_piece: Callable[[str], str],
    on_end: Callable[[Generation], list[str]],
    first: list[str] = (),
) -> StreamingResponse:
    """One generation's events: ``first``, then ``on_piece(piece)`` for each released piece of text, then the
    events ``on_end`` gives. If the client goes away first, the generation is cancelled."""
    return stream_choices([generation], lambda _, piece: on_piece(piece), lambda: on_end(generation), first)


def stream_choices(
    generations: list[Generation],
    on_piece: Callable[[int, str], str],
    on_end: Callable[[], list[str]],
    first: list[str] = (),
) -> StreamingResponse:
    """Several generations in one stream (OpenAI's choices): ``first``, then ``on_piece(index, piece)`` for each
    piece as it arrives from any of them, then ``on_end()``'s events once all have ended. If the client goes
    away first, every generation is cancelled."""

    async def pump(index: int, generation: Generation, queue: asyncio.Queue) -> None:
        try:
            async for piece in generation.stream():
                queue.put_nowait((index, piece, None))
            queue.put_nowait((index, None, None))
        except Exception as e:  # handed to the response, which reports it as an event
            queue.put_nowait((index, None, e))

    async def body() -> AsyncIterator[str]:
        finished = False
        queue: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.ensure_future(pump(i, g, queue)) for i, g in enumerate(generations)]
        try:
            for event_text in first:
                yield event_text
            running = len(generations)
            while running:
                index, piece, error = await queue.get()
                if error is not None:
                    raise error
                if piece is None:
                    running -= 1
                else:
                    yield on_piece(index, piece)
            for end in on_end():
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
            for task in pumps:
                task.cancel()
            for g in generations:
                g.cancel()  # a no-op once it has finished

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
