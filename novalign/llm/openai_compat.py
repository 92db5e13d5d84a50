"""Backend for any OpenAI-compatible HTTP server (vLLM, SGLang, ``novalign serve``, hosted APIs).

One ``POST {base_url}/chat/completions`` per request, or ``POST {base_url}/completions`` for a raw
``prompt`` (a base model continuing few-shot text). ``top_k`` is not an OpenAI parameter; it goes as a
top-level body field, which is how vLLM and SGLang accept it (the OpenAI SDK's ``extra_body``). Every way a
call can go wrong becomes a :class:`~novalign.llm.types.BackendError` that says whether a retry may help:
429 / 408 / 5xx, timeouts, dropped connections and unparseable bodies may; other 4xx do not.
"""

from __future__ import annotations

import os

import httpx2

from novalign.llm.idempotency import HEADER
from novalign.llm.limits import parse_retry_after
from novalign.llm.types import BackendError, BackendResponse, ChatRequest, sample_seeds

__all__ = ["OpenAIBackend"]


def _error_message(response: httpx2.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else None
        return str(message or error)[:500]
    except (ValueError, UnicodeDecodeError):
        return response.text[:500] or response.reason_phrase


class OpenAIBackend:
    """Chat completions over HTTP. ``api_key=None`` reads ``$OPENAI_API_KEY`` (or ``api_key_env``)."""

    kind = "openai"
    takes_idempotency_key = True  # LLMClient passes one to generate() (novalign.llm.idempotency)

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, *,
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0, max_connections: int = 64,
                 cache_namespace: str = ""):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError("the openai backend needs a base_url (config llm.base_url or $OPENAI_BASE_URL), "
                             "e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError("the openai backend needs a model name (config llm.model)")
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        # The cache key names the server too: two servers that serve one model name (two checkpoints, each
        # served as "tiny") are different models. A namespace replaces the URL, to share a cache across
        # addresses of one model (a moved or load-balanced endpoint).
        self.model_id = f"openai:{cache_namespace or self.base_url}:{model}"
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._client: httpx2.AsyncClient | None = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:  # created on first use, inside the event loop that will use it
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx2.AsyncClient(
                headers=headers, timeout=httpx2.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                limits=httpx2.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections),
            )
        return self._client

    def body(self, request: ChatRequest) -> dict:
        """The JSON body for ``request``."""
        body: dict = {"model": self.model_name, "n": request.n, "temperature": request.temperature,
                      "top_p": request.top_p}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        else:
            body["messages"] = request.messages
        if request.tools:
            body["tools"] = request.tools
        if request.top_k:
            body["top_k"] = request.top_k
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:  # later samples of a seeded prompt get their own seed (see sample_seeds)
            body["seed"] = request.seed if request.sample_index == 0 else sample_seeds(request.seed, request.sample_index, 1)[0]
        if (fmt := request.response_format()) is not None:
            body["response_format"] = fmt
        return body

    async def generate(self, request: ChatRequest, idempotency_key: str | None = None) -> BackendResponse:
        """One call. ``idempotency_key`` goes as the ``Idempotency-Key`` header: a server that honours it
        (``novalign serve`` does) answers a repeat with the reply it stored instead of generating again."""
        headers = {HEADER: idempotency_key} if idempotency_key else None
        try:
            endpoint = "completions" if request.prompt is not None else "chat/completions"
            response = await self._http().post(f"{self.base_url}/{endpoint}", json=self.body(request), headers=headers)
        except httpx2.TimeoutException as exc:
            raise BackendError("timeout", f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except httpx2.TransportError as exc:  # refused, reset, closed mid-body, ...
            raise BackendError("connection", f"{type(exc).__name__}: {exc}", retryable=True) from exc
        status = response.status_code
        if status >= 400:
            message = f"HTTP {status}: {_error_message(response)}"
            retry_after = parse_retry_after(response.headers)
            if status == 429:
                raise BackendError("rate_limited", message, retryable=True, retry_after=retry_after, status=status)
            if status == 408 or status >= 500:
                kind = "timeout" if status == 408 else "server_error"
                raise BackendError(kind, message, retryable=True, retry_after=retry_after, status=status)
            raise BackendError("bad_request", message, retryable=False, status=status)
        return self._parse(response, request.n, raw=request.prompt is not None)

    def _parse(self, response: httpx2.Response, n: int, *, raw: bool = False) -> BackendResponse:
        try:
            body = response.json()
            choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
            if raw:  # /completions: {"text": ...} per choice
                texts = [c["text"] if isinstance(c["text"], str) else str(c["text"]) for c in choices]
            else:
                texts = [c["message"].get("content") or "" for c in choices]
            reasons = [c.get("finish_reason") for c in choices]
            if len(texts) != n:
                raise ValueError(f"asked for n={n} choices, got {len(texts)}")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            snippet = response.text[:200]
            raise BackendError("invalid_response", f"unusable response body ({type(exc).__name__}: {exc}): {snippet!r}",
                               retryable=True, status=response.status_code) from exc
        usage = body.get("usage") or {}
        return BackendResponse(
            model=body.get("model") or self.model_name, texts=texts, finish_reasons=reasons,
            prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
