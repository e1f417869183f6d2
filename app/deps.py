"""Request dependencies: the engine's client (503 while the engine is not ready) and the app's metrics.
Both are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, a thread hop per request
for nothing."""

from __future__ import annotations

from fastapi import Request

from app.engine_client import EngineClient
from app.errors import ApiError
from app.metrics import Metrics

__all__ = ["get_engine", "get_metrics"]


async def get_engine(request: Request) -> EngineClient:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "the model is not loaded yet", headers={"Retry-After": "1"})
    if not engine.ready:
        raise ApiError(503, "the engine is restarting; retry shortly", headers={"Retry-After": "1"})
    return engine


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics
