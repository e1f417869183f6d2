"""OpenAI-compatible completions: POST /v1/completions and GET /v1/models, so OpenAI clients work unchanged."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request

from app.deps import get_engine, get_metrics
from app.engine_client import EngineClient, Generation, TokenInfo
from app.errors import ApiError
from app.metrics import Metrics
from app.schemas import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, ModelCard,
                         ModelList, PromptTokensDetails, Usage)
from app.sse import event, stream_generation

router = APIRouter(prefix="/v1", tags=["openai"])
STARTED = int(time.time())


@router.get("/models", response_model=ModelList)
async def models(engine: EngineClient = Depends(get_engine)) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[ModelCard(id=engine.settings.model_id, created=STARTED)])


def _logprobs(infos: list[TokenInfo], start_offset: int) -> CompletionLogprobs:
    offsets = [start_offset + i for i in range(len(infos))]  # one character per token
    return CompletionLogprobs(tokens=[i.text for i in infos], token_logprobs=[i.logprob for i in infos],
                              top_logprobs=[i.top for i in infos], text_offset=offsets)


async def _prompt_infos(engine: EngineClient, prompt: str, k: int) -> list[TokenInfo]:
    """Per prompt character its log-probability; None for the first, which nothing predicts (as vLLM does)."""
    infos = [TokenInfo(prompt[0], None, None)]
    if len(prompt) > 1:
        s = await engine.perplexity(prompt, None, True, top_k=k)
        for i, char in enumerate(prompt[1:]):
            infos.append(TokenInfo(char, s.token_logprobs[i], s.top[i] if k else None))
    return infos


def _choice(engine: EngineClient, body: CompletionRequest, g: Generation, index: int,
            prompt_infos: list[TokenInfo] | None) -> CompletionChoice:
    text = (body.prompt if body.echo else "") + g.completion
    logprobs = None
    if body.logprobs is not None:
        infos = (prompt_infos or []) + g.tokens if body.echo else list(g.tokens)
        logprobs = _logprobs(infos, 0)
    return CompletionChoice(text=text, index=index, logprobs=logprobs, finish_reason=g.finish_reason)


@router.post("/completions", response_model=CompletionResponse, response_model_exclude_none=False, responses={
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or with stream: true OpenAI-style chunks"}})
async def completions(body: CompletionRequest, request: Request, engine: EngineClient = Depends(get_engine),
                      metrics: Metrics = Depends(get_metrics)):
    """OpenAI's legacy completions API over this character model (one token = one character)."""
    model_id = engine.settings.model_id
    if body.model not in (None, model_id):
        raise ApiError(404, f"model {body.model!r} not found; this server serves {model_id!r}", "model")
    if not body.prompt:
        raise ApiError(422, "prompt must contain at least one character", "prompt")
    if body.stream and body.n > 1:
        raise ApiError(422, "stream supports n = 1 only", "n")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    k = body.logprobs
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    samplers = [{"temperature": body.temperature, "top_k": body.top_k, "top_p": body.top_p,
                 "seed": None if body.seed is None else body.seed + i} for i in range(body.n)]
    prompt_infos = None
    if body.echo and k is not None:
        engine.check_chars(body.prompt, "prompt")
        prompt_infos = await _prompt_infos(engine, body.prompt, k)
    generations = await engine.generate(body.prompt, body.max_tokens, samplers, stops, k, stream=body.stream,
                                        param_prefix="prompt", param_tokens="max_tokens", receive=request.receive)

    if body.stream:
        (generation,) = generations
        sent = 0

        def chunk(text: str, finish: str | None, infos=None, offset=0) -> str:
            lp = _logprobs(infos, offset).model_dump() if infos is not None else None
            return event({"id": request_id, "object": "text_completion", "created": created, "model": model_id,
                          "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]})

        def on_piece(piece: str) -> str:
            nonlocal sent
            infos = generation.tokens[sent : sent + len(piece)] if k is not None else None
            out = chunk(piece, None, infos, len(body.prompt) * body.echo + sent)
            sent += len(piece)
            return out

        def on_end(g: Generation) -> list[str]:
            metrics.tokens_generated.inc(g.num_tokens)
            return [chunk("", g.finish_reason), event("[DONE]")]

        first = [chunk(body.prompt, None, prompt_infos, 0)] if body.echo else []
        return stream_generation(generation, on_piece, on_end, first)

    choices = [_choice(engine, body, g, i, prompt_infos) for i, g in enumerate(generations)]
    total = sum(g.num_tokens for g in generations)
    metrics.tokens_generated.inc(total)
    details = PromptTokensDetails(cached_tokens=generations[0].cached_chars)
    return CompletionResponse(id=request_id, created=created, model=model_id, choices=choices,
                              usage=Usage(prompt_tokens=len(body.prompt), completion_tokens=total,
                                          total_tokens=len(body.prompt) + total, prompt_tokens_details=details))
