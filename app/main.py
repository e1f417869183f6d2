"""Builds the FastAPI application. The model is loaded in the lifespan, never at import time."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from app.engine import Engine
from app.scheduler import prepare_model_thread
from app.errors import install_error_handlers
from app.metrics import PUBLISH_EVERY_S, Metrics
from app.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from app.routes import openai, ops, page, perplexity, predict
from app.schemas import ErrorBody
from app.settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger("rnnlm")

DESCRIPTION = """A character-level recurrent language model (tanh RNN / GRU / LSTM) served over HTTP.

* `POST /predict` warms the latent state on a prefix and continues it (greedy by default).
* `POST /perplexity` scores a text: perplexity = exp(mean negative log-likelihood).
* `POST /v1/completions` and `GET /v1/models` speak OpenAI's completions API.

Errors always have the body `{"error": {"message", "type", "param", "code"}}`.
"""

ERROR_RESPONSES = {code: {"model": ErrorBody, "description": text} for code, text in [
    (400, "malformed request (e.g. not JSON)"), (401, "missing or wrong API key (when one is configured)"),
    (404, "unknown route or model"), (405, "method not allowed"), (413, "request body too large"),
    (422, "invalid request or over a limit"), (429, "too many requests queued"), (500, "internal error"),
    (503, "model not loaded yet")]}


async def _publish_metrics(metrics: Metrics) -> None:
    """Several workers: publish this worker's engine figures for the other workers' scrapes, once a second."""
    while True:
        await asyncio.sleep(PUBLISH_EVERY_S)
        metrics.publish()


def create_app(settings: Settings | None = None, *, load_model: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_model:
            # The event loop's own small tensor ops (encoding a prompt) must not start OpenMP workers: their
            # spin-waiting would take a core from the thread that runs the model.
            prepare_model_thread(settings.model_threads, settings.flush_denormal)
            app.state.engine = await run_in_threadpool(Engine.load, settings)
            app.state.metrics.watch(app.state.engine)
            app.state.metrics.model_loaded.set(1)
            logger.info("serving %s (%s)", settings.weights, app.state.engine.model.config)
        publisher = asyncio.create_task(_publish_metrics(app.state.metrics)) if app.state.metrics.shared else None
        yield
        if publisher is not None:
            publisher.cancel()
        app.state.metrics.close()
        engine, app.state.engine = app.state.engine, None
        if engine is not None:
            engine.close()

    app = FastAPI(title="rnnlm", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.settings = settings
    app.state.engine = None
    app.state.metrics = Metrics()
    install_error_handlers(app)
    for module in (predict, perplexity, openai, ops, page):
        app.include_router(module.router)
    _document_limits(app, settings)

    # Added innermost first: the last one added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value() if settings.api_key else None)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Write this server's configured limits into its OpenAPI schema (maximum / maxLength / maxItems)."""
    limits = {
        "PredictRequest": {"num_tokens": settings.max_num_tokens, "prefix": settings.max_text_chars},
        "PerplexityRequest": {"text": settings.max_text_chars, "context": settings.max_text_chars},
        "CompletionRequest": {"max_tokens": settings.max_num_tokens, "prompt": settings.max_text_chars},
    }
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.get("components", {}).get("schemas", {})
        for model, fields in limits.items():
            props = components.get(model, {}).get("properties", {})
            for name, limit in fields.items():
                for spec in props.get(name, {}).get("anyOf", [props.get(name, {})]):
                    if spec.get("type") == "integer":
                        spec["maximum"] = limit
                    elif spec.get("type") == "string":
                        spec["maxLength"] = limit
            stop = props.get("stop")
            if stop is not None:
                for spec in stop.get("anyOf", [stop]):
                    if spec.get("type") == "array":
                        spec["maxItems"] = settings.max_stop_sequences
                        spec.setdefault("items", {})["maxLength"] = settings.max_text_chars
                    elif spec.get("type") == "string":
                        spec["maxLength"] = settings.max_text_chars
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
