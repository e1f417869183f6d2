"""POST /perplexity: score a text under the model."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request

from app.deps import get_engine, get_metrics
from app.engine_client import EngineClient
from app.limits import RequestBodies, with_body
from app.metrics import Metrics
from app.schemas import PerplexityRequest, PerplexityResponse


def build_router(bodies: RequestBodies) -> APIRouter:
    router = APIRouter(tags=["scoring"])
    router.add_api_route(
        "/perplexity",
        with_body(perplexity, bodies.perplexity),
        methods=["POST"],
        response_model=PerplexityResponse,
        response_model_exclude_none=True,
    )
    return router


async def perplexity(
    body: PerplexityRequest,
    request: Request,
    engine: EngineClient = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
) -> PerplexityResponse:
    """Perplexity = exp(mean negative log-likelihood) of `text`, optionally after a `context` that only warms
    the state. Without a context or a state the first character is not scored (nothing predicts it)."""
    result = await engine.perplexity(
        body.text,
        body.context,
        body.token_logprobs,
        receive=request.receive,
        state=body.state,
        return_state=body.return_state,
    )
    metrics.chars_scored.inc(result.num_scored)
    scored = body.text if body.context or body.state is not None else body.text[1:]
    return PerplexityResponse(
        perplexity=math.exp(result.nll),
        nll=result.nll,
        bits_per_char=result.nll / math.log(2),
        num_scored=result.num_scored,
        unknown_chars=result.unknown_chars,
        cached_chars=result.cached_chars,
        tokens=list(scored) if body.token_logprobs else None,
        token_logprobs=result.token_logprobs if body.token_logprobs else None,
        state=result.state,
        state_chars=result.state_chars if result.state else None,
    )
