"""Request and response bodies. Unknown fields are refused (422); numbers must be finite.

The limits operators configure (``RNNLM_MAX_*``) are added to these as Field constraints when the app is built
(app/limits.py), and listed at /info.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)

__all__ = [
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "ErrorBody",
    "ModelCard",
    "ModelList",
    "PerplexityRequest",
    "PerplexityResponse",
    "PredictRequest",
    "PredictResponse",
    "StreamOptions",
    "TokenizeRequest",
    "DetokenizeRequest",
    "Usage",
]


def _whole_float_to_int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def Refused(description: str, schema: dict | None = None):  # noqa: N802 - used as a type
    """A standard field this server does not support: any value is read, and the route answers a 400
    (``unsupported_parameter``) for one it cannot honour; the schema states only the values it accepts."""
    return Annotated[object, WithJsonSchema({**(schema or {"type": "null"}), "description": description})]


Bias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


def Int(**bounds):  # noqa: N802 - used as a type
    """An integer with bounds. JSON Schema counts 3.0 as an integer; strict mode would refuse it (and refuses
    "3", as it should)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_whole_float_to_int)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# A state token, as a schema can say it: a string in this format ("" is no state). Only the server that signed it
# (or one sharing its RNNLM_STATE_SECRET) can tell a genuine one, so any other string of the alphabet is a 400.
StateToken = Annotated[
    Annotated[str, Field(json_schema_extra={"format": "rnnlm-state-token", "pattern": "^[A-Za-z0-9_-]*$"})] | None,
    BeforeValidator(lambda value: None if value == "" else value),  # every route sees None for no state
]


class SamplingFields(Request):
    top_k: Int(ge=0) = Field(0, description="sample only from the k most likely characters (0: no limit)")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="nucleus sampling: the smallest set of characters whose probability reaches top_p",
    )
    seed: Int(ge=0, le=2**53) | None = Field(None, description="makes sampling (temperature > 0) repeatable")
    # vLLM's extras, under vLLM's names
    repetition_penalty: float = Field(
        1.0,
        ge=0.01,
        le=100,
        allow_inf_nan=False,
        description="CTRL's penalty over "
        "every character of the prompt and the output: a positive logit is divided "
        "by it, a negative one multiplied (1: none)",
    )
    min_p: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="sampling drops characters less likely than min_p times the likeliest (0: none)",
    )
    min_tokens: Int(ge=0) = Field(0, description="stop sequences count only after this many characters")

    def sampler(self, index: int = 0, **more) -> dict:
        """model.sampling.Sampler's fields for this request's ``index``-th sample (its seed + index)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": None if self.seed is None else self.seed + index,
            "repetition_penalty": self.repetition_penalty,
            "min_p": self.min_p,
            **more,
        }


class PredictRequest(SamplingFields):
    prefix: str = Field(
        ...,
        description="text that warms the latent state; generation continues it (empty: "
        "from the zero state, the notebook's H_0)",
        examples=["ROMEO:\nBut soft"],
    )
    num_tokens: Int(ge=0) | None = Field(
        None,
        description="characters to generate (0: warm only); at most the "
        "server's max_num_tokens (see /info); default 100, or that limit if lower",
        examples=[100],
    )
    temperature: float = Field(
        0.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="0: greedy (always the most likely character); higher: more random",
    )
    stop: list[str] = Field(default_factory=list, description="stop before the first occurrence of any of these")
    stream: bool = Field(False, description="send text/event-stream: one event per character, then the result")
    state: StateToken = Field(
        None,
        description="a state token (from return_state): start from that state, "
        'exactly as if the text it has read came before this request\'s text ("": none)',
    )
    return_state: bool = Field(
        False, description="also answer with the token of the state after everything this request read"
    )

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"prefix": "ROMEO:\nBut soft", "num_tokens": 100}]}
    )


class PredictResponse(BaseModel):
    prefix: str
    completion: str = Field(description="the generated text (without the prefix)")
    num_tokens: int = Field(description="characters generated")
    finish_reason: Literal["length", "stop"]
    unknown_chars: int = Field(description="characters of the prefix outside the model's vocabulary")
    cached_chars: int = Field(0, description="characters of the prefix whose state came from the prefix cache")
    stop_reason: str | None = Field(
        None, description="the stop sequence that ended the completion (not part of it); null when none did"
    )
    state: str | None = Field(
        None, description="with return_state: the token of the state after prefix + completion + stop_reason"
    )
    state_chars: int | None = Field(
        None, description="with return_state: characters that state has read, all requests together"
    )


class PerplexityRequest(Request):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"properties": {"text": {"minLength": 2}}},
                {"properties": {"context": {"type": "string", "minLength": 1}}, "required": ["context"]},
                {"properties": {"state": {"type": "string", "minLength": 1}}, "required": ["state"]},  # "": none
            ],
            "description": "text needs 2 characters, or 1 after a non-empty context or a state",
        },
    )

    text: str = Field(..., min_length=1, description="text to score", examples=["To be, or not to be"])
    context: str | None = Field(None, description="text read before `text` only to warm the state; not scored")
    token_logprobs: bool = Field(False, description="also return each scored character and its log-probability")
    state: StateToken = Field(
        None,
        description="a state token (from return_state): start from that state, "
        "exactly as if the text it has read came before the context and the text; the "
        'text\'s first character is then scored too ("": none)',
    )
    return_state: bool = Field(
        False, description="also answer with the token of the state after everything this request read"
    )


class PerplexityResponse(BaseModel):
    perplexity: float = Field(description="exp(nll)")
    nll: float = Field(description="mean negative log-likelihood, nats per scored character")
    bits_per_char: float
    num_scored: int = Field(description="characters scored: len(text) - 1, or len(text) after a context or a state")
    unknown_chars: int = Field(description="characters of text and context outside the vocabulary")
    cached_chars: int = Field(0, description="characters of the context whose state came from the prefix cache")
    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None
    state: str | None = Field(None, description="with return_state: the token of the state after context + text")
    state_chars: int | None = Field(
        None, description="with return_state: characters that state has read, all requests together"
    )


class StateFields(Request):
    """rnnlm's own extras of the OpenAI routes (sent with the openai client as ``extra_body``)."""

    rnnlm_state: StateToken = Field(
        None,
        description="rnnlm's extra: a state token (from rnnlm_return_state); "
        "the prompt is read from that state, exactly as if the text it has read came "
        'before the prompt ("": none)',
    )
    rnnlm_return_state: bool = Field(
        False,
        description="rnnlm's extra: each choice also carries rnnlm_state, the "
        "token of the state after the prompt, the completion and its stop_reason",
    )


class StreamOptions(Request):
    include_usage: bool = Field(False, description="send a last chunk with empty choices and the usage")


class CompletionRequest(SamplingFields, StateFields):
    """Every field of OpenAI's completions API; ``suffix`` is answered with a 400 (not supported)."""

    model: str | None = Field(None, description="the served model's id (see /v1/models); optional")
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | Annotated[list[Int(ge=0)], Field(min_length=1)]
        | Annotated[list[Annotated[list[Int(ge=0)], Field(min_length=1)]], Field(min_length=1)]
    ) = Field(
        ...,
        description="text to continue; or a list of texts, a list of token ids, or a list of token-id lists "
        "(one token = one character, ids as /tokenize gives them)",
        examples=["ROMEO:"],
    )
    suffix: Refused("not supported: any value but null is a 400") = None
    max_tokens: Int(ge=0) | None = Field(16, description="characters to generate; at most max_num_tokens")
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="0: greedy")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Int(ge=0, le=20) | None = Field(
        None,
        description="return log-probabilities of the chosen characters and this many most likely alternatives "
        "(characters × (logprobs + 1) over the request's choices, the echoed prompt included, at most "
        "max_logprob_entries)",
    )
    echo: bool = Field(False, description="return the prompt before the completion (with its log-probabilities)")
    n: Int(ge=1, le=16) = Field(1, description="completions per prompt")
    best_of: Int(ge=1, le=16) | None = Field(
        None, description="generate this many per prompt (≥ n) and return the n with the highest mean log-probability"
    )
    logit_bias: dict[str, Bias] | None = Field(
        None, description="token id → bias in [-100, 100] added to its logit before choosing; -100 bans the token"
    )
    user: str | None = Field(None, description="accepted and ignored (logged nowhere)")
    frequency_penalty: float = Field(
        0.0,
        ge=-2,
        le=2,
        allow_inf_nan=False,
        description="subtracted from a token's logit once per time it was generated",
    )
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, allow_inf_nan=False, description="subtracted from a token's logit once it has been generated"
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorBody(BaseModel):
    """Every error response has this body."""

    error: ErrorDetail


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["length", "stop"] | None
    stop_reason: str | None = Field(None, description="vLLM's: the stop sequence that ended the text, if one did")
    rnnlm_state: str | None = Field(
        None, description="with rnnlm_return_state: the token of the state after the prompt, the text and stop_reason"
    )
    rnnlm_state_chars: int | None = Field(
        None, description="with rnnlm_return_state: characters that state has read, all requests together"
    )

    @model_serializer(mode="wrap")
    def _without_absent_state(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The state's fields only where a state was asked for."""
        out = handler(self)
        if self.rnnlm_state is None:
            out.pop("rnnlm_state", None)
            out.pop("rnnlm_state_chars", None)
        return out


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt characters whose state came from the prefix cache")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rnnlm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(Request):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}, "required": ["prompt"]},
                {"properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}, "required": ["messages"]},
            ],
            "description": "either prompt or messages",
        },
    )

    model: str | None = None
    prompt: str | None = Field(None, description="text to split into token ids (one per character)")
    messages: list[ChatMessage] | None = Field(
        None, description="or chat messages, rendered by the chat template as /v1/chat/completions renders them"
    )
    add_special_tokens: bool = Field(True, description="accepted; this model has no special tokens to add")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int = Field(description="the most characters one prompt may have (the server's max_text_chars)")


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: list[Int(ge=0)] = Field(..., description="token ids, as /tokenize gives them")


class DetokenizeResponse(BaseModel):
    prompt: str


class ContentPart(Request):
    type: Literal["text"] = Field(description="only text parts: this is a text model")
    text: str


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="the speaker: replaces the role in the rendered text")
    tool_call_id: str | None = None


class ChatCompletionRequest(SamplingFields, StateFields):
    """OpenAI's chat completions; the messages are rendered by the server's chat template (see /info)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Int(ge=0) | None = Field(None, description="characters to generate (default: 100, or the limit)")
    max_completion_tokens: Int(ge=0) | None = Field(None, description="the same as max_tokens (its newer name)")
    temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="0: greedy")
    n: Int(ge=1, le=16) = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: Int(ge=0, le=20) | None = None
    logit_bias: dict[str, Bias] | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    user: str | None = None
    store: bool | None = Field(None, description="accepted and ignored: nothing is stored")
    metadata: dict[str, str] | None = Field(None, description="accepted and ignored")
    parallel_tool_calls: bool | None = Field(None, description="accepted and ignored (no tools)")
    tools: Refused(
        "not supported: a non-empty list is a 400", {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}
    ) = None
    tool_choice: Refused("only 'none': anything else is a 400", {"anyOf": [{"const": "none"}, {"type": "null"}]}) = None
    response_format: Refused(
        "only {'type': 'text'}: anything else is a 400",
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"type": {"const": "text"}},
                    "required": ["type"],
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        },
    ) = None


TokenizeRequest.model_rebuild()
