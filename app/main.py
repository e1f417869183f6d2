"""Builds the FastAPI application: the HTTP side of the server. It never touches the model: the lifespan
connects to the engine process (:mod:`app.engine.core`) — the one ``rnnlm-serve`` started, at
``RNNLM_ENGINE_ADDRESS``, or else one of its own, started and supervised here."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from app.chat import ChatTemplate
from app.drain import Drain, DrainMiddleware
from app.engine_client import EngineClient
from app.errors import install_error_handlers
from app.limits import request_bodies
from app.memory import GiveBackMemory
from app.metrics import Metrics
from app.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from app.routes import openai, ops, page, perplexity, predict, tokenizer
from app.schemas import ErrorBody
from app.settings import Settings
from app.supervisor import EngineSupervisor

__all__ = ["create_app"]

logger = logging.getLogger("rnnlm")

DESCRIPTION = """A character-level recurrent language model (tanh RNN / GRU / LSTM) served over HTTP.

* `POST /predict` warms the latent state on a prefix and continues it (greedy by default).
* `POST /perplexity` scores a text: perplexity = exp(mean negative log-likelihood).
* `POST /v1/completions` and `GET /v1/models` speak OpenAI's completions API.

Errors always have the body `{"error": {"message", "type", "param", "code"}}`.
"""

ERROR_RESPONSES = {
    code: {"model": ErrorBody, "description": text}
    for code, text in [
        (400, "malformed request (e.g. not JSON)"),
        (401, "missing or wrong API key (when one is configured)"),
        (404, "unknown route or model"),
        (405, "method not allowed"),
        (413, "request body too large"),
        (422, "invalid request or over a limit"),
        (429, "too many requests queued"),
        (500, "internal error"),
        (503, "engine not ready, restarting, or the server is draining"),
    ]
}


def create_app(settings: Settings | None = None, *, load_model: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        supervisor = client = None
        if load_model:
            address = settings.engine_address
            if address is None:  # no rnnlm-serve around us: an engine of our own
                supervisor = EngineSupervisor(settings)
                await run_in_threadpool(supervisor.start)
                address = supervisor.address
            client = EngineClient(address, settings)
            await client.start()
            app.state.engine = client
            app.state.drain.install(asyncio.get_running_loop())
            logger.info("serving %s through the engine process (pid %s)", settings.weights, client.engine["pid"])
        try:
            yield
        finally:
            app.state.engine = None
            app.state.metrics.close()
            if client is not None:
                await client.close()
            if supervisor is not None:
                await run_in_threadpool(supervisor.stop)

    app = FastAPI(title="rnnlm", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.settings = settings
    app.state.engine = None
    app.state.metrics = Metrics()
    app.state.drain = Drain(settings.drain_seconds)
    app.state.chat_template = ChatTemplate(settings.chat_template)
    install_error_handlers(app)
    bodies = request_bodies(settings)  # this server's limits, as Field constraints
    for module in (predict, perplexity, openai, tokenizer):
        app.include_router(module.build_router(bodies))
    app.include_router(ops.router)
    app.include_router(page.router)
    _document_token_ids_when_known(app)

    # Added innermost first: the last one added is the outermost.
    app.add_middleware(GiveBackMemory)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value() if settings.api_key else None)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    return app


def _document_token_ids_when_known(app: FastAPI) -> None:
    """The vocabulary is the engine's: once it is ready, the schema bounds token ids by its size."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        engine = getattr(app.state, "engine", None)
        schema = build()  # FastAPI caches it; a schema built before the engine was ready is rebuilt here
        if engine is None or not engine.ready:
            app.openapi_schema = None
            return schema
        _document_token_ids(schema.get("components", {}).get("schemas", {}), len(engine.tokens))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _document_token_ids(components: dict, vocab_size: int) -> None:
    """Token ids are below the vocabulary's size: in prompts, /detokenize and logit_bias's keys."""

    def bound(spec: dict) -> None:
        if spec.get("type") == "integer":
            spec["maximum"] = vocab_size - 1
        for key in ("items", "anyOf"):
            inner = spec.get(key)
            for part in inner if isinstance(inner, list) else [inner] if inner else []:
                bound(part)

    for model, name in [("CompletionRequest", "prompt"), ("DetokenizeRequest", "tokens")]:
        bound(components.get(model, {}).get("properties", {}).get(name, {}))
    for model in ("CompletionRequest", "ChatCompletionRequest"):
        bias = components.get(model, {}).get("properties", {}).get("logit_bias", {})
        for spec in bias.get("anyOf", [bias]):
            if spec.get("type") == "object":
                spec["propertyNames"] = {"enum": [str(i) for i in range(vocab_size)]}
