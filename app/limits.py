"""The request bodies as this server takes them: the limits its operator configured (``RNNLM_MAX_*``) written
into each field as pydantic's own constraints when the app is built, so that validation and the OpenAPI schema
state the same bounds from one place. The unlimited bodies are in app/schemas.py."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

from app.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Int,
    PerplexityRequest,
    PredictRequest,
    Text,
    TokenizeRequest,
)
from app.settings import Settings

__all__ = ["RequestBodies", "request_bodies", "with_body"]


@dataclass(frozen=True)
class RequestBodies:
    """One server's request bodies, each a subclass of app/schemas.py's of the same name."""

    predict: type[PredictRequest]
    perplexity: type[PerplexityRequest]
    completion: type[CompletionRequest]
    chat: type[ChatCompletionRequest]
    tokenize: type[TokenizeRequest]


def request_bodies(settings: Settings) -> RequestBodies:
    """The bodies with ``settings``' limits: characters generated (``max_num_tokens``), characters of each text
    (``max_text_chars``; token ids count as characters), stop sequences (``max_stop_sequences``). The sequences
    one request asks for (prompts × best_of, ``max_request_rows``) are counted by the route: a list's length
    bound in a union would be reported by the wrong branch (a long list of ids as too many prompts)."""
    tokens = Int(ge=0, le=settings.max_num_tokens)
    chars = Annotated[str, Field(max_length=settings.max_text_chars)]
    ids = Annotated[list[Int(ge=0)], Field(min_length=1, max_length=settings.max_text_chars)]
    stops = Annotated[list[chars], Field(max_length=settings.max_stop_sequences)]
    prompt = Annotated[Text, Field(max_length=settings.max_text_chars)]
    prompts = Annotated[list[prompt], Field(min_length=1)]
    id_lists = Annotated[list[ids], Field(min_length=1)]
    return RequestBodies(
        predict=_limited(PredictRequest, prefix=chars, num_tokens=tokens | None, stop=stops),
        perplexity=_limited(PerplexityRequest, text=chars, context=chars | None),
        completion=_limited(
            CompletionRequest,
            prompt=prompt | prompts | ids | id_lists,
            max_tokens=tokens | None,
            stop=chars | stops | None,
        ),
        chat=_limited(
            ChatCompletionRequest,
            max_tokens=tokens | None,
            max_completion_tokens=tokens | None,
            stop=chars | stops | None,
        ),
        tokenize=_limited(TokenizeRequest, prompt=chars | None),
    )


def _limited(model: type[BaseModel], **annotations: Any) -> type[BaseModel]:
    """``model`` with the named fields' types replaced by ``annotations``; each keeps its default, description,
    examples and the constraints the field itself declares (``Field(min_length=1)``)."""
    fields = {}
    for name, annotation in annotations.items():
        info = model.model_fields[name]
        typed = Annotated[(annotation, *info.metadata)] if info.metadata else annotation
        default = {"default_factory": info.default_factory} if info.default_factory else {"default": info.default}
        fields[name] = (typed, Field(**default, description=info.description, examples=info.examples))
    return create_model(model.__name__, __base__=model, __module__=model.__module__, __doc__=model.__doc__, **fields)


def with_body(endpoint, body: type[BaseModel]):
    """``endpoint`` (an ``async def`` whose parameter ``body`` is a request body) taking ``body`` instead: FastAPI
    reads the body's type from the signature, so this is how a route module's handler gets one server's limits."""

    @functools.wraps(endpoint)
    async def route(*args, **kwargs):
        return await endpoint(*args, **kwargs)

    signature = inspect.signature(endpoint, eval_str=True)
    parameters = [p.replace(annotation=body) if p.name == "body" else p for p in signature.parameters.values()]
    route.__signature__ = signature.replace(parameters=parameters)
    return route
