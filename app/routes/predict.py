"""POST /predict: warm the state on the prefix and continue it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.deps import get_engine, get_metrics
from app.engine_client import EngineClient, Generation
from app.limits import RequestBodies, with_body
from app.metrics import Metrics
from app.schemas import PredictRequest, PredictResponse
from app.sse import event, stream_generation

DEFAULT_NUM_TOKENS = 100


def _response(g: Generation) -> PredictResponse:
    return PredictResponse(
        prefix=g.prefix,
        completion=g.completion,
        num_tokens=g.num_tokens,
        finish_reason=g.finish_reason,
        unknown_chars=g.unknown_chars,
        cached_chars=g.cached_chars,
        stop_reason=g.stop_reason,
        state=g.state,
        state_chars=g.state_chars if g.state else None,
    )


def build_router(bodies: RequestBodies) -> APIRouter:
    router = APIRouter(tags=["generation"])
    router.add_api_route(
        "/predict",
        with_body(predict, bodies.predict),
        methods=["POST"],
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "JSON, or with stream: true events `token` ({text}) and a final `result`",
            }
        },
    )
    return router


async def predict(
    body: PredictRequest,
    request: Request,
    engine: EngineClient = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
):
    """Warm the latent state on `prefix` (after `state`, when given), then generate `num_tokens` characters
    (greedy when temperature is 0)."""
    num_tokens = (
        body.num_tokens if body.num_tokens is not None else min(DEFAULT_NUM_TOKENS, engine.settings.max_num_tokens)
    )
    (generation,) = await engine.generate(
        body.prefix,
        num_tokens,
        [body.sampler()],
        body.stop,
        stream=body.stream,
        receive=request.receive,
        allow_empty=True,
        min_tokens=body.min_tokens,
        state=body.state,
        return_state=body.return_state,
    )
    if body.stream:

        def on_end(g: Generation) -> list[str]:
            metrics.tokens_generated.inc(g.num_tokens)
            return [event(_response(g).model_dump(exclude_none=True), "result")]

        return stream_generation(generation, lambda piece: event({"text": piece}, "token"), on_end)
    metrics.tokens_generated.inc(generation.num_tokens)
    return _response(generation)
