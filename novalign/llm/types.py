"""The records that cross the LLM layer: a request, its result, and an explicit failure.

A request that cannot be answered comes back as a :class:`Failure` that says why -- never as ``None`` and
never by being left out of a batch's results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

__all__ = [
    "ChatRequest", "Choice", "ChatResult", "Failure", "FailureKind", "LLMError", "BackendResponse", "BackendError",
    "as_request", "sample_seeds",
]

FailureKind = Literal[
    "rate_limited", "server_error", "timeout", "connection", "invalid_response", "bad_request", "validation",
    "internal",
]


@dataclass
class ChatRequest:
    """One call: ``messages`` (a chat) or ``prompt`` (a raw text completion), plus sampling parameters
    (OpenAI semantics).

    A raw ``prompt`` is continued as it is, with no chat template: how base models are evaluated on few-shot
    text (lm-eval-harness's generation tasks). The local backend encodes it without adding special tokens
    (no BOS), as the project's pretraining encodes plain text (``novalign.data.text``); HTTP backends send it
    to ``/completions``.

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]`` (empty when ``prompt`` is given).
        prompt: Raw text to continue, instead of ``messages``.
        n: Samples to return.
        temperature: 0 is greedy.
        top_p: Nucleus mass in (0, 1].
        top_k: Keep the k most likely tokens (``None``: off). Sent to HTTP servers as a top-level body field,
            the way vLLM and SGLang accept it.
        max_tokens: Completion-length cap (``None``: the backend's default).
        stop: Strings that end a completion (not included in it).
        seed: Sampling seed, for backends that honour one.
        json_mode: Ask for a JSON object; the reply is parsed and re-asked if it does not parse.
        schema: A pydantic model: ask for JSON of that shape, validate, re-ask with the error.
        sample_index: Cache index of the first of the ``n`` samples. Samples ``0..n-1`` of a prompt are cached
            under indices ``0..n-1``; ask ``sample_index=n`` for further, different ones.
        tag: Anything of yours; it comes back on the result (e.g. a record id).
        tools: OpenAI function definitions (``[{"type": "function", "function": {...}}]``) the chat template
            shows the model; sent as the ``tools`` body field over HTTP. The reply comes back as text.
    """

    messages: list[dict] = field(default_factory=list)
    prompt: str | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    json_mode: bool = False
    schema: type[BaseModel] | None = None
    sample_index: int = 0
    tag: Any = None
    tools: list[dict] | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None:
            if not isinstance(self.prompt, str) or not self.prompt:
                raise ValueError("prompt must be a non-empty string")
            if self.messages:
                raise ValueError("give messages (a chat) or prompt (a raw completion), not both")
            if self.structured:
                raise ValueError("structured output (json_mode / schema) needs messages, not a raw prompt")
        elif not isinstance(self.messages, list) or not self.messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for m in self.messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ValueError(f"every message needs a 'role' (and usually 'content'); got {m!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.tools is not None:
            if not isinstance(self.tools, list) or not all(isinstance(t, dict) for t in self.tools):
                raise ValueError("tools must be a list of OpenAI function definitions (dicts)")
            if self.prompt is not None:
                raise ValueError("tools need messages (a chat), not a raw prompt")
            self.tools = self.tools or None
        checks = [
            (self.n >= 1, "n must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 0, "top_k must be >= 0 (0 or None: off)"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.sample_index >= 0, "sample_index must be >= 0"),
            (self.schema is None or (isinstance(self.schema, type) and issubclass(self.schema, BaseModel)),
             "schema must be a pydantic BaseModel subclass"),
            (not (self.structured and self.n != 1), "structured output (json_mode / schema) needs n == 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def structured(self) -> bool:
        return self.json_mode or self.schema is not None

    def response_format(self) -> dict | None:
        """The OpenAI ``response_format`` field for this request."""
        if self.schema is not None:
            return {"type": "json_schema",
                    "json_schema": {"name": self.schema.__name__, "schema": self.schema.model_json_schema()}}
        return {"type": "json_object"} if self.json_mode else None

    def cache_fields(self) -> dict:
        """What identifies the answer besides the model: everything but ``n``, ``sample_index`` and ``tag``."""
        fields = {
            "messages": self.messages, "temperature": self.temperature, "top_p": self.top_p,
            "top_k": self.top_k or None, "max_tokens": self.max_tokens, "stop": self.stop or None, "seed": self.seed,
            "response_format": self.response_format(),
        }
        # only when set, so the keys of chat requests stored before raw prompts (and tools) existed stay valid
        return (fields | ({"prompt": self.prompt} if self.prompt is not None else {})
                | ({"tools": self.tools} if self.tools else {}))

    def to_dict(self) -> dict:
        out = self.cache_fields() | {"n": self.n, "sample_index": self.sample_index}
        return out | ({"tag": self.tag} if self.tag is not None else {})


def as_request(item: ChatRequest | dict | list) -> ChatRequest:
    """Accept a :class:`ChatRequest`, a dict of its fields, or a bare message list."""
    if isinstance(item, ChatRequest):
        return item
    if isinstance(item, list):
        return ChatRequest(messages=item)
    if isinstance(item, dict):
        return ChatRequest(**item)
    raise ValueError(f"a request is a ChatRequest, a dict of its fields or a list of messages, not {type(item).__name__}")


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str | None = None
    parsed: Any = None  # the validated object (schema) or the parsed JSON (json_mode)


@dataclass
class ChatResult:
    """A successful call. ``index`` is the request's position in a batch (``None`` for single calls)."""

    ok: ClassVar[bool] = True
    request: ChatRequest
    model: str
    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False  # every sample came from the cache
    attempts: int = 1  # calls made, counting retries and structured-output re-asks
    index: int | None = None

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.choices]

    @property
    def parsed(self) -> Any:
        return self.choices[0].parsed

    def to_dict(self) -> dict:
        parsed = self.parsed.model_dump(mode="json") if isinstance(self.parsed, BaseModel) else self.parsed
        out = {
            "index": self.index, "ok": True, "model": self.model, "texts": self.texts,
            "finish_reasons": [c.finish_reason for c in self.choices], "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cached": self.cached, "attempts": self.attempts,
            "request": self.request.to_dict(),
        }
        return out | ({"parsed": parsed} if self.request.structured else {})


@dataclass
class Failure:
    """A request that finally failed, with the reason. Yielded in place of a result, never dropped."""

    ok: ClassVar[bool] = False
    request: ChatRequest
    kind: FailureKind
    reason: str
    attempts: int = 1
    status: int | None = None  # the last HTTP status, when there was one
    index: int | None = None
    last_text: str | None = None  # for validation failures: the last reply that did not validate

    def to_dict(self) -> dict:
        return {
            "index": self.index, "ok": False, "kind": self.kind, "reason": self.reason, "attempts": self.attempts,
            "status": self.status, "last_text": self.last_text, "request": self.request.to_dict(),
        }

    def __str__(self) -> str:
        return f"{self.kind} after {self.attempts} attempt(s): {self.reason}"


class LLMError(RuntimeError):
    """Raised by the single-call API (:meth:`LLMClient.chat`) when the request failed; ``.failure`` says why."""

    def __init__(self, failure: Failure):
        super().__init__(str(failure))
        self.failure = failure


@dataclass
class BackendResponse:
    """What a backend returns for one request: ``n`` completions and the token counts of the call."""

    model: str
    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    completion_tokens_each: list[int] = field(default_factory=list)


class BackendError(Exception):
    """A failed backend call. ``retryable`` errors are retried by the client with backoff."""

    def __init__(self, kind: FailureKind, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.kind, self.retryable, self.retry_after, self.status = kind, retryable, retry_after, status


def dumps_canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the input of cache keys."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sample_seeds(seed: int | None, start: int, n: int) -> list[int | None]:
    """Seeds of samples ``start .. start+n-1`` of a request seeded with ``seed`` (``None``: unseeded).

    Each sample's seed depends only on (seed, sample index), so sample 5 is the same whether it was asked
    for in a call for samples 0..7 or alone.
    """
    if seed is None:
        return [None] * n
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "little") >> 1 for i in range(start, start + n)]
