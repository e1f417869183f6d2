"""OpenAI-compatible API: POST /v1/completions, POST /v1/chat/completions and GET /v1/models, so OpenAI
clients work unchanged. Where OpenAI's definition leaves room, this does what vLLM's OpenAI server does."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Depends, Request

from app.chat import ChatTemplate
from app.deps import get_engine, get_metrics
from app.engine_client import EngineClient, Generation, TokenInfo
from app.errors import ApiError
from app.limits import RequestBodies, with_body
from app.metrics import Metrics
from app.schemas import (
    ChatCompletionRequest,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from app.sse import event, stream_choices

STARTED = int(time.time())
STREAMED = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or with stream: true OpenAI-style chunks"}
}


def build_router(bodies: RequestBodies) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    router.add_api_route("/models", models, methods=["GET"], response_model=ModelList)
    router.add_api_route(
        "/completions",
        with_body(completions, bodies.completion),
        methods=["POST"],
        response_model=CompletionResponse,
        response_model_exclude_none=False,
        responses=STREAMED,
    )
    router.add_api_route(
        "/chat/completions", with_body(chat_completions, bodies.chat), methods=["POST"], responses=STREAMED
    )
    return router


async def models(engine: EngineClient = Depends(get_engine)) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[ModelCard(id=engine.settings.model_id, created=STARTED)])


def _logprobs(infos: list[TokenInfo], start_offset: int) -> CompletionLogprobs:
    offsets = [start_offset + i for i in range(len(infos))]  # one character per token
    return CompletionLogprobs(
        tokens=[i.text for i in infos],
        token_logprobs=[i.logprob for i in infos],
        top_logprobs=[i.top for i in infos],
        text_offset=offsets,
    )


async def _prompt_infos(engine: EngineClient, prompt: str, k: int, state: str | None) -> list[TokenInfo]:
    """Per prompt character its log-probability; None for the first, which nothing predicts (as vLLM does),
    unless the prompt is read after a state token."""
    infos = [] if state is not None else [TokenInfo(prompt[0], None, None)]
    if len(prompt) > len(infos):
        s = await engine.perplexity(prompt, None, True, top_k=k, state=state, param_state="rnnlm_state")
        for i, char in enumerate(prompt[len(infos) :]):
            infos.append(TokenInfo(char, s.token_logprobs[i], s.top[i] if k else None))
    return infos


def _state_fields(g: Generation) -> dict:
    """A choice's rnnlm_state and rnnlm_state_chars, where the client asked for them."""
    return {"rnnlm_state": g.state, "rnnlm_state_chars": g.state_chars} if g.state is not None else {}


def _choice(
    prompt: str, echo: bool, k: int | None, g: Generation, index: int, prompt_infos: list[TokenInfo] | None
) -> CompletionChoice:
    text = (prompt if echo else "") + g.completion
    logprobs = None
    if k is not None:
        infos = (prompt_infos or []) + g.tokens if echo else list(g.tokens)
        logprobs = _logprobs(infos, 0)
    return CompletionChoice(
        text=text,
        index=index,
        logprobs=logprobs,
        finish_reason=g.finish_reason,
        stop_reason=g.stop_reason,
        **_state_fields(g),
    )


def _prompts(body: CompletionRequest, engine: EngineClient) -> list[str]:
    """The prompts as texts: a string, a list of strings, a list of token ids, or a list of token-id lists."""
    prompt = body.prompt  # never empty: the schema asks for at least one character, or one id, in each
    if isinstance(prompt, str):
        return [prompt]
    try:
        if isinstance(prompt[0], int):
            return [engine.tokens.decode(prompt)]
        if isinstance(prompt[0], list):
            return [engine.tokens.decode(ids) for ids in prompt]
    except ValueError as e:
        raise ApiError(422, f"prompt: {e}", "prompt") from None
    return list(prompt)


def _samplers(body: CompletionRequest | ChatCompletionRequest, engine: EngineClient, count: int) -> list[dict]:
    """The request's samplers (OpenAI's logit_bias and penalties on top of the common fields), one per choice."""
    bias = []
    for key, value in (body.logit_bias or {}).items():  # values are in [-100, 100] (the schema)
        if not key.isdigit() or int(key) >= len(engine.tokens):
            raise ApiError(
                422, f"logit_bias: {key!r} is not a token id of this model (0–{len(engine.tokens) - 1})", "logit_bias"
            )
        bias.append((int(key), float(value)))
    return [
        body.sampler(
            i, logit_bias=tuple(bias), frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty
        )
        for i in range(count)
    ]


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _best(generations: list[Generation], n: int) -> list[Generation]:
    """OpenAI's best_of: the n generations with the highest mean log-probability per token, in their order."""

    def mean(g: Generation) -> float:
        return sum(t.logprob for t in g.tokens) / len(g.tokens) if g.tokens else 0.0

    ranked = sorted(range(len(generations)), key=lambda i: -mean(generations[i]))[:n]
    return [generations[i] for i in sorted(ranked)]


async def completions(
    body: CompletionRequest,
    request: Request,
    engine: EngineClient = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
):
    """OpenAI's legacy completions API over this character model (one token = one character). Choices come
    grouped by prompt, then by ``n``, each with its ``index``."""
    model_id = engine.settings.model_id
    engine.check_model(body.model)
    if body.suffix is not None:
        raise ApiError(400, "suffix is not supported by this model", "suffix", kind="unsupported_parameter")
    prompts = _prompts(body, engine)
    best_of = max(body.best_of or body.n, body.n)  # best_of below n: the n themselves
    rows, limit = len(prompts) * best_of, engine.settings.max_request_rows
    if rows > limit:
        raise ApiError(
            422,
            f"{len(prompts)} prompts × {best_of} completions each is {rows} sequences: at most {limit} per request",
            "best_of" if body.best_of else "n" if body.n > 1 else "prompt",
        )
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    stops = _stops(body.stop)
    k = body.logprobs
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    samplers = _samplers(body, engine, best_of)
    ranking = best_of > body.n  # needs every token's log-probability
    if k is not None:
        entries = sum((len(p) if body.echo else 0) + max_tokens for p in prompts) * body.n * (k + 1)
        if entries > engine.settings.max_logprob_entries:
            raise ApiError(
                422,
                f"logprobs: {entries:,} log-probabilities (characters × (logprobs + 1) over the choices) is over "
                f"this server's {engine.settings.max_logprob_entries:,}: ask for fewer alternatives or characters",
                "logprobs",
            )
    top = k if k is not None else (0 if ranking else None)
    group = engine.new_group() if len(prompts) > 1 else None  # the batch is shared fairly between requests

    async def one(prompt: str):
        infos = await _prompt_infos(engine, prompt, k, body.rnnlm_state) if body.echo and k is not None else None
        generations = await engine.generate(
            prompt,
            max_tokens,
            samplers,
            stops,
            top,
            stream=body.stream and not ranking,
            param_prefix="prompt",
            receive=request.receive,
            min_tokens=body.min_tokens,
            state=body.rnnlm_state,
            return_state=body.rnnlm_return_state,
            param_state="rnnlm_state",
            group=group,
        )
        return infos, (_best(generations, body.n) if ranking else generations)

    results = await asyncio.gather(*(one(prompt) for prompt in prompts))
    cached = sum(gs[0].cached_chars for _, gs in results if gs)  # each prompt's choices share its reading

    if body.stream:
        # every choice in one stream, by index (best_of ranks finished generations: each then comes whole)
        streamed = [(prompt, infos, g) for prompt, (infos, gs) in zip(prompts, results) for g in gs]
        if ranking:
            for _, _, g in streamed:
                g.replay()

        def chunk(index: int, text: str, finish: str | None, infos=None, offset=0, end: dict | None = None) -> str:
            lp = _logprobs(infos, offset).model_dump() if infos is not None else None
            choice = {"text": text, "index": index, "logprobs": lp, "finish_reason": finish, **(end or {})}
            return event(
                {
                    "id": request_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model_id,
                    "choices": [choice],
                }
            )

        sent = [0] * len(streamed)  # characters sent per choice (a generation may have received more by now)

        def on_piece(index: int, piece: str) -> str:
            prompt, _, g = streamed[index]
            infos = g.tokens[sent[index] : sent[index] + len(piece)] if k is not None else None
            out = chunk(index, piece, None, infos, len(prompt) * body.echo + sent[index])
            sent[index] += len(piece)
            return out

        def on_end() -> list[str]:
            gs = [g for _, _, g in streamed]
            metrics.tokens_generated.inc(sum(g.num_tokens for g in gs))
            end = [
                chunk(i, "", g.finish_reason, end={"stop_reason": g.stop_reason, **_state_fields(g)})
                for i, g in enumerate(gs)
            ]
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = _usage(prompts, gs, cached).model_dump()
                end.append(
                    event(
                        {
                            "id": request_id,
                            "object": "text_completion",
                            "created": created,
                            "model": model_id,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                )
            return [*end, event("[DONE]")]

        first = [chunk(i, prompt, None, infos, 0) for i, (prompt, infos, _) in enumerate(streamed)] if body.echo else []
        return stream_choices([g for _, _, g in streamed], on_piece, on_end, first)

    choices, generated = [], []
    for prompt, (prompt_infos, generations) in zip(prompts, results):
        for g in generations:
            if ranking and k is None:
                g.tokens = []
            choices.append(_choice(prompt, body.echo, k, g, len(choices), prompt_infos))
            generated.append(g)
    usage = _usage(prompts, generated, cached)
    metrics.tokens_generated.inc(usage.completion_tokens)
    return CompletionResponse(id=request_id, created=created, model=model_id, choices=choices, usage=usage)


def _usage(prompts: list[str], generations: list[Generation], cached: int) -> Usage:
    """Totals over every prompt and choice; ``cached``: prompt characters whose state came from the cache."""
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(g.num_tokens for g in generations)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


# -- chat -------------------------------------------------------------------------------------------------------
def render_messages(messages_in: list, template: ChatTemplate) -> str:
    """Chat messages as the text the model continues (the assistant's turn opened)."""
    messages = []
    for m in messages_in:
        if isinstance(m.content, list):
            content = "".join(part.text for part in m.content)
        else:
            content = m.content or ""
        messages.append((m.role, m.name, content))
    return template.render(messages)


def _chat_logprobs(infos: list[TokenInfo]) -> dict:
    def entry(text: str, value: float) -> dict:
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.text, t.logprob), "top_logprobs": [entry(c, v) for c, v in (t.top or {}).items()]} for t in infos
        ]
    }


async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    engine: EngineClient = Depends(get_engine),
    metrics: Metrics = Depends(get_metrics),
):
    """OpenAI's chat completions: the messages are written out by the chat template (/info shows it), the
    assistant's turn is opened, and the reply ends where the template ends a turn."""
    model_id = engine.settings.model_id
    engine.check_model(body.model)
    if body.tools not in (None, []):
        raise ApiError(400, "tools are not supported by this model", "tools", kind="unsupported_parameter")
    if body.tool_choice not in (None, "none"):
        raise ApiError(400, "tool_choice is not supported by this model", "tool_choice", kind="unsupported_parameter")
    if body.response_format is not None and body.response_format != {"type": "text"}:
        raise ApiError(
            400, "only response_format {'type': 'text'} is supported", "response_format", kind="unsupported_parameter"
        )
    template = request.app.state.chat_template
    prompt = render_messages(body.messages, template)
    engine.check_chars(prompt, "messages")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:
        max_tokens = min(100, engine.settings.max_num_tokens)
    stops = _stops(body.stop)
    k = (body.top_logprobs or 0) if body.logprobs else None
    generations = await engine.generate(
        prompt,
        max_tokens,
        _samplers(body, engine, body.n),
        stops,
        k,
        stream=body.stream,
        param_prefix="messages",
        receive=request.receive,
        min_tokens=body.min_tokens,
        server_stops=[template.turn_end] if template.turn_end else [],
        state=body.rnnlm_state,
        return_state=body.rnnlm_return_state,
        param_state="rnnlm_state",
        allow_empty=body.rnnlm_state is not None,
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_id}

    if body.stream:
        sent = [0] * len(generations)  # characters sent per choice (a generation may have received more by now)

        def chunk(index: int, delta: dict, finish: str | None = None, infos=None, end: dict | None = None) -> str:
            choice = {
                "index": index,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": _chat_logprobs(infos) if infos is not None else None,
                **(end or {}),
            }
            return event({**head, "choices": [choice]})

        def on_piece(index: int, piece: str) -> str:
            g = generations[index]
            infos = g.tokens[sent[index] : sent[index] + len(piece)] if k is not None else None
            sent[index] += len(piece)
            return chunk(index, {"content": piece}, None, infos)

        def on_end() -> list[str]:
            metrics.tokens_generated.inc(sum(g.num_tokens for g in generations))
            end = [
                chunk(i, {}, g.finish_reason, end={"stop_reason": g.stop_reason, **_state_fields(g)})
                for i, g in enumerate(generations)
            ]
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = _usage([prompt], generations, generations[0].cached_chars).model_dump()
                end.append(event({**head, "choices": [], "usage": usage}))
            return [*end, event("[DONE]")]

        opening = [chunk(i, {"role": "assistant", "content": ""}) for i in range(len(generations))]
        return stream_choices(generations, on_piece, on_end, opening)

    usage = _usage([prompt], generations, generations[0].cached_chars)
    metrics.tokens_generated.inc(usage.completion_tokens)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": g.completion},
            "logprobs": _chat_logprobs(g.tokens) if k is not None else None,
            "finish_reason": g.finish_reason,
            "stop_reason": g.stop_reason,
            **_state_fields(g),
        }
        for i, g in enumerate(generations)
    ]
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": choices,
        "usage": usage.model_dump(),
    }
