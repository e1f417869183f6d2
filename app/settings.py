"""Every setting of the service, read from the environment with the prefix ``RNNLM_`` (one class)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

DEFAULT_WEIGHTS = Path("weights/rnn.safetensors")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RNNLM_", extra="ignore")

    weights: Path = Field(DEFAULT_WEIGHTS, description="weight file to serve")
    device: str = Field("cpu", description="torch device for the model: cpu, cuda, cuda:1, …")
    api_key: SecretStr | None = Field(None, description="when set, every route but /health and /ready needs it")
    state_secret: SecretStr | None = Field(
        None,
        description="signs state tokens (HMAC-SHA256): every replica "
        "that shares it accepts the others' tokens; unset: a random key per "
        "server, so tokens work only on the server that made them",
    )
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS (default: none)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="HTTP worker processes; all of them share one engine process")
    engine_address: str | None = Field(
        None,
        description="the engine's Unix-domain socket, set by rnnlm-serve for its "
        "workers; unset: the app starts an engine process of its own",
    )
    max_num_tokens: int = Field(2000, ge=0, description="most tokens one request may generate")
    max_text_chars: int = Field(100_000, ge=1, description="most characters in a prefix, text, context or prompt")
    max_body_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413 before parsing")
    max_header_bytes: int = Field(65_536, ge=1024, description="larger request headers get 431 (rnnlm-serve)")
    max_connections: int = Field(
        0,
        ge=0,
        description="open connections per HTTP process before the oldest idle one is closed and requests other "
        "than /health and /ready get 503 (rnnlm-serve; 0: the open-file limit less 64)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this many seconds, else 408 (rnnlm-serve)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request's body must arrive within this many seconds after its headers, else 408"
    )
    max_stop_sequences: int = Field(8, ge=0)
    batching: bool = Field(True, description="run concurrent requests together, step by step, in one batch")
    max_batch_size: int = Field(64, ge=1, description="most sequences generated together in one step")
    cuda_graphs: bool = Field(
        True,
        description="on a CUDA device, replay the decoding step from CUDA graphs (one per batch size up to "
        "max_batch_size)",
    )
    max_queue: int = Field(256, ge=1, description="requests waiting for the batch; beyond this: 429")
    max_logprob_entries: int = Field(
        500_000,
        ge=1,
        description="most log-probabilities one /v1/completions response may carry: characters (the echoed prompt "
        "and the completion) × (logprobs + 1), summed over its choices",
    )
    max_request_rows: int = Field(
        128,
        ge=1,
        description="most sequences one request may ask for: prompts × max(n, best_of) on /v1/completions "
        "(each prompt waits in the queue: keep this at most max_queue)",
    )
    prefill_chars: int = Field(256, ge=1, description="longer uncached prompts are read in chunks before joining")
    chunk_chars: int = Field(512, ge=1, description="characters read per chunk when scoring or reading a long prompt")
    prefix_cache_entries: int = Field(1024, ge=0, description="prompts whose state is cached (0: no cache)")
    prefix_cache_mb: float = Field(64.0, gt=0, description="most memory the prefix cache may hold, MiB")
    chat_template: str = Field(
        "{role}:\n{content}\n\n",
        description="how /v1/chat/completions writes each "
        "message ({role}: its name or role in capitals); the reply stops at the text after "
        "{content}",
    )
    stream_flush_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="streamed text is sent at most this often per "
        "stream (the first piece at once); 0: one event per token",
    )
    drain_seconds: float = Field(10.0, ge=0, description="on SIGTERM, how long requests in flight may take to finish")
    flush_denormal: bool = Field(True, description="flush denormal floats to zero in the engine")
    model_threads: int = Field(1, ge=1, description="torch intra-op threads of the engine")
    blas_threads: int = Field(
        0, ge=0, description="OpenBLAS threads of the engine for the CPU step (0: the usable cores)"
    )

    @field_validator("chat_template")
    @classmethod
    def _chat_template_has_role_and_content(cls, value: str) -> str:
        from app.chat import ChatTemplate

        ChatTemplate(value)  # raises ValueError with the reason
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def model_id(self) -> str:
        return self.weights.stem
