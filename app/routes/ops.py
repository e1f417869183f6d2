"""Operations: liveness, readiness, the model card, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import get_engine, get_metrics
from app.engine_client import EngineClient
from app.errors import error_response
from app.metrics import Metrics

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict:
    """Alive: 200 whenever the process serves HTTP."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "engine not ready (starting or restarting), or draining"}})
async def ready(request: Request):
    """Ready: 200 while the engine answers and the server is not draining, else 503."""
    engine = getattr(request.app.state, "engine", None)
    if request.app.state.drain.draining:
        return error_response(503, "the server is shutting down", headers={"Retry-After": "1"})
    if engine is None or not engine.ready:
        return error_response(503, "the engine is not ready", headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


@router.get("/info")
async def info(request: Request, engine: EngineClient = Depends(get_engine)) -> dict:
    """The model card: cell, sizes, parameter count, vocabulary, training provenance, and the server's limits."""
    s = request.app.state.settings
    e = engine.engine
    return {
        "model": s.model_id,
        "weights": str(s.weights),
        "weights_sha256": e["weights_sha256"],
        "config": e["config"],
        "parameters": e["parameters"],
        "vocab": e["vocab"],
        "vocab_size": len(e["vocab"]),
        "training": e["training"],
        "device": e["device"],
        "limits": {
            "max_num_tokens": s.max_num_tokens,
            "max_text_chars": s.max_text_chars,
            "max_body_bytes": s.max_body_bytes,
            "max_stop_sequences": s.max_stop_sequences,
        },
        "serving": {
            "batching": s.batching,
            "max_batch_size": s.max_batch_size,
            "max_queue": s.max_queue,
            "prefix_cache_entries": s.prefix_cache_entries,
            "workers": s.workers,
            "blas_threads": e["blas_threads"],
            "engine_pid": e["pid"],
            "stream_flush_ms": s.stream_flush_ms,
        },
        "chat_template": request.app.state.chat_template.describe(),
        "state_token": {
            **e["state_token"],
            "secret": "RNNLM_STATE_SECRET" if s.state_secret is not None else "random: this server only",
        },
    }


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, metrics: Metrics = Depends(get_metrics)) -> Response:
    """Prometheus text format: this server's HTTP figures (summed over its workers) and its engine's."""
    engine = getattr(request.app.state, "engine", None)
    figures = await engine.stats() if engine is not None else {}
    return Response(metrics.exposition(figures, engine is not None and engine.ready), media_type=CONTENT_TYPE_LATEST)
