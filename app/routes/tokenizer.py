"""The tokenizer endpoints in vLLM's shape: POST /tokenize, POST /detokenize, GET /tokenizer_info.

One token is one character of the model's vocabulary (id 0, ``<unk>``, for every other character; as text it is
U+FFFD, see app/tokens.py). A character model has no end-of-text token (``eos_token`` is null). As the
beginning-of-text token it names the newline, where texts of the shipped corpus begin: lm-evaluation-harness
prepends it to empty contexts, so its rolling log-likelihood of a text is exactly ``/perplexity`` of that text
after ``context: "\n"`` (every character scored). Without a newline in the vocabulary, ``bos_token`` is null.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.deps import get_engine
from app.engine_client import EngineClient
from app.errors import ApiError
from app.limits import RequestBodies, with_body
from app.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from app.tokens import UNKNOWN_TEXT

BOS = "\n"


def build_router(bodies: RequestBodies) -> APIRouter:
    router = APIRouter(tags=["tokenizer"])
    router.add_api_route(
        "/tokenize", with_body(tokenize, bodies.tokenize), methods=["POST"], response_model=TokenizeResponse
    )
    router.add_api_route("/detokenize", detokenize, methods=["POST"], response_model=DetokenizeResponse)
    router.add_api_route("/tokenizer_info", tokenizer_info, methods=["GET"])
    return router


async def tokenize(
    body: TokenizeRequest, request: Request, engine: EngineClient = Depends(get_engine)
) -> TokenizeResponse:
    """The token ids of ``prompt`` (one per character), or of ``messages`` as the chat template writes them."""
    engine.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(422, "give either prompt or messages", "prompt")
    if body.messages is not None:
        from app.routes.openai import render_messages

        text = render_messages(body.messages, request.app.state.chat_template)
        engine.check_chars(text, "messages")
    else:
        text = body.prompt  # within max_text_chars: the schema says so
    tokens = engine.tokens.encode(text)
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=engine.settings.max_text_chars)


async def detokenize(body: DetokenizeRequest, engine: EngineClient = Depends(get_engine)) -> DetokenizeResponse:
    """The text of token ids (id 0 as U+FFFD)."""
    engine.check_model(body.model)
    try:
        return DetokenizeResponse(prompt=engine.tokens.decode(body.tokens))
    except ValueError as e:
        raise ApiError(422, f"tokens: {e}", "tokens") from None


async def tokenizer_info(engine: EngineClient = Depends(get_engine)) -> dict:
    """What a client needs to tokenize as the server does."""
    vocab = engine.tokens.vocab
    return {
        "model": engine.settings.model_id,
        "tokenizer_class": "character",
        "vocab_size": len(vocab),
        "vocab": vocab,
        "unk_token": vocab[0],
        "unk_token_id": 0,
        "unk_token_text": UNKNOWN_TEXT,
        "bos_token": BOS if BOS in vocab[1:] else None,
        "eos_token": None,
        "pad_token": None,
        "max_model_len": engine.settings.max_text_chars,
    }
