"""Operations: liveness, readiness, the model card, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import get_engine, get_metrics
from app.engine import Engine
from app.errors import error_response
from app.metrics import Metrics

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict:
    """Alive: 200 whenever the process serves HTTP."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "model not loaded yet"}})
async def ready(request: Request):
    """Ready: 200 once the model is loaded, 503 before."""
    if getattr(request.app.state, "engine", None) is None:
        return error_response(503, "the model is not loaded yet", headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


@router.get("/info")
async def info(engine: Engine = Depends(get_engine)) -> dict:
    """The model card: cell, sizes, parameter count, vocabulary, training provenance, and the server's limits."""
    return engine.info()


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: Metrics = Depends(get_metrics)) -> Response:
    """Prometheus text format."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
