"""LLM access (``LLMConfig``) and ``novalign serve`` (issue 3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict


class LocalModelConfig(Strict):
    """Generation with an in-process Hugging Face model (the client's 'local' backend and `novalign serve`)."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs ('auto': cuda if present).")
    dtype: Literal["auto", "float32", "bf16", "fp16"] = Field("auto", description="'auto': bf16 on GPU, float32 on CPU.")
    max_batch_size: int = Field(32, ge=1, description="Most sequences (requests x n) generated together in one batch.")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests before it starts.")
    default_max_tokens: int = Field(256, ge=1, description="Completion length when a request sets no max_tokens.")


class PriceConfig(Strict):
    prompt_per_million: float = Field(0.0, ge=0, description="Price of one million prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0, description="Price of one million completion tokens.")


class LLMConfig(Strict):
    """The LLM access layer every stage uses: backend, limits, retries, cache and prices (novalign.llm)."""

    backend: Literal["openai", "local", "vllm"] = Field(
        "openai", description="'openai': any OpenAI-compatible HTTP server; 'local': in-process transformers; "
        "'vllm': vLLM's offline engine (needs vLLM and a GPU).",
    )
    model: str = Field("", description="Model name sent to the server (openai), or the model directory (local, vllm).")
    base_url: str | None = Field(None, description="Server URL such as http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL).")
    api_key: str | None = Field(None, description="API key (default: the variable named by api_key_env).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(16, ge=1, description="Most requests in flight at once.")
    rpm: float | None = Field(None, gt=0, description="Requests-per-minute limit (None: none).")
    tpm: float | None = Field(None, gt=0, description="Tokens-per-minute limit, prompt + completion (None: none).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout; a request past it is retried.")
    max_attempts: int = Field(6, ge=1, description="Tries per request on 429 / 5xx / timeout / connection errors.")
    backoff_base_s: float = Field(0.5, ge=0, description="First retry waits about this long; each retry doubles it.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest computed backoff (a server's Retry-After wins).")
    structured_attempts: int = Field(3, ge=1, description="Tries to get JSON that validates (re-asking with the error).")
    cache_path: str = Field("runs/llm-cache.sqlite", description="SQLite request cache, shared by runs and processes.")
    no_cache: bool = Field(False, description="Bypass the cache: neither read nor write it.")
    cache_namespace: str = Field("", description="Replaces the base URL in the cache key (the key holds the URL by default, "
                                 "so two servers serving one model name never share answers); set it to share a "
                                 "cache across addresses of one model.")
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description="Price per model name or fnmatch pattern, for the cost estimate.",
    )
    progress: bool = Field(True, description="Show a progress bar for batches.")
    local: LocalModelConfig = Field(default_factory=LocalModelConfig)
    vllm_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM(...) arguments, e.g. {tensor_parallel_size: 2}.",
    )


class ServeConfig(Strict):
    """``novalign serve``: an OpenAI-compatible server for a local Hugging Face model."""

    model: str = Field("runs/tiny-base", description="Local Hugging Face model directory to serve.")
    served_model_name: str | None = Field(None, description="Model id clients ask for (default: the directory name).")
    host: str = Field("127.0.0.1", description="Interface to bind (loopback by default; 0.0.0.0 exposes it).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    api_key: str | None = Field(None, description="Require 'Authorization: Bearer KEY' (default: $NOVALIGN_API_KEY).")
    max_body_bytes: int = Field(4 * 2**20, ge=1024, description="Largest request body accepted (413 beyond).")
    idempotency_max_entries: int = Field(10_000, ge=1, description="Replies kept for Idempotency-Key repeats (newest).")
    idempotency_max_bytes: int = Field(256 * 2**20, ge=1, description="Reply JSON bytes kept for Idempotency-Key "
                                       "repeats in all (oldest dropped first).")
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0, description="How long a reply is kept for Idempotency-Key repeats.")
    engine: LocalModelConfig = Field(default_factory=LocalModelConfig)
