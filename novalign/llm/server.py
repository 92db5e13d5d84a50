"""``novalign serve``: an OpenAI-compatible HTTP server for a local Hugging Face model (FastAPI + uvicorn).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``n``, ``temperature``, ``top_p``,
``top_k``, ``max_tokens``, ``stop``, ``seed``, ``stream``), ``GET /v1/models``, ``GET /health``.

Requests that arrive together are generated together: every handler submits its rows to the model's
:class:`~novalign.llm.local.LocalEngine`, whose batching queue gathers them for a few milliseconds and runs
one batched ``generate`` (static batching: a batch ends when its longest row does). Streaming is real:
tokens are pushed to the client as the batch produces them.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with status 400 for
invalid requests, 401 for a missing or wrong API key, 404 for an unknown model or path, 413 for a body over
``max_body_bytes``, 500 (``server_error``) for a failure of ours. The server binds 127.0.0.1 unless told
otherwise.

Hardening (issue 22): every sampling parameter is range-checked before it reaches a batch, and a batch that
fails anyway is rerun item by item (:class:`~novalign.llm.batching.BatchingQueue`), so one bad request fails
alone; the API key guards every path but ``/health`` (``/docs`` and ``/openapi.json`` too); a prompt longer
than the context could hold is refused before it is tokenized, and tokenizing runs on a worker thread, never
on the event loop; a request with more rows than ``max_batch_size`` is split across batches; when a client
disconnects (a dropped stream or an abandoned request) its rows stop generating at the next step.

Idempotency keys (issue 15): a non-streaming request with an ``Idempotency-Key`` header is generated once --
a repeat gets the stored reply, or waits for the running generation (:mod:`novalign.llm.idempotency`);
``/health`` counts ``generations``, ``idempotent_replays`` and ``idempotent_joins``. Streaming requests
ignore the header.

``response_format`` is accepted but not enforced (no constrained decoding here); the novalign client
validates JSON replies itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from novalign.data.chat import ToolsNotRendered
from novalign.llm.idempotency import HEADER, MAX_KEY_CHARS, IdempotencyStore, KeyReused
from novalign.llm.local import InvalidRow, LocalEngine, cancel_rows
from novalign.models.generate import GenerationOutput

__all__ = ["create_app", "run_app", "serve", "DeltaText"]

_DONE = object()
MAX_BODY_BYTES = 4 * 2**20  # a long chat is well under a megabyte; 16 MB bodies once stalled the server
_INT64 = 2**63


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


class _Sampling(BaseModel):
    """Fields shared by both generation endpoints. Unknown fields are ignored, as OpenAI-style servers do."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, lt=2**31, description="-1 or 0: off (vLLM convention)")
    max_tokens: int | None = Field(None, ge=1, lt=2**31)
    max_completion_tokens: int | None = Field(None, ge=1, lt=2**31)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stream: bool = False
    stream_options: dict | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 1024 for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings of at most 1024 characters", param="stop")
        return stops


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None

    def to_template(self) -> dict:
        content = self.content
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if any(part.get("type") != "text" or not isinstance(part.get("text", ""), str) for part in content):
                raise APIError(400, "only text content parts (with a string 'text') are supported", param="messages")
            content = "".join(part.get("text", "") for part in content)
        role = "system" if self.role == "developer" else self.role
        return (self.model_extra or {}) | {"role": role, "content": content or ""}


class ChatBody(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    response_format: dict | None = None
    # OpenAI's function definitions: rendered into the prompt by the chat template (checked as training data
    # is); the reply is text -- turning it into `tool_calls` depends on each template's call syntax
    tools: list[dict] | None = None


class CompletionBody(_Sampling):
    prompt: str | list[str]
    # vLLM's extension of the same name. Default off: the prompt is continued as it is, the same tokens the
    # local backend and novalign's pretraining use (vLLM's own default is on: a tokenizer that adds a BOS
    # token then gets one)
    add_special_tokens: bool = False


class DeltaText:
    """Turns one row's streamed token ids into text deltas: waits out half-decoded characters, and holds
    back a tail that could still become a stop string, so nothing past a stop string is ever sent."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return ""
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.stopped = True
            safe = text[: min(hits)]
        else:
            safe = text[: len(text) - self.hold] if self.hold else text
        return self._send(safe)

    def finish(self, final_text: str) -> str:
        return self._send(final_text)

    def _send(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta


async def _until_disconnect(request: Request) -> None:
    """Return once the client has gone (the body is read already, so the next ASGI message is the disconnect;
    uvicorn also sends it once the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Service:
    """The generation endpoints' logic for one engine (FastAPI wiring is in :func:`create_app`)."""

    def __init__(self, engine: LocalEngine, name: str, idempotency: IdempotencyStore | None = None):
        self.engine, self.name = engine, name
        self.counters = {"requests": 0, "chat_completions": 0, "completions": 0, "cancelled": 0, "generations": 0,
                         "idempotent_replays": 0, "idempotent_joins": 0}
        self.idempotency = idempotency or IdempotencyStore()
        # one thread: tokenizing never blocks the event loop, and a fast tokenizer is never used concurrently
        self.tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="novalign-tokenize")

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise APIError(404, f"The model `{requested}` does not exist; this server serves `{self.name}`.",
                           param="model", code="model_not_found")

    def check_length(self, chars: int, param: str) -> None:
        """Refuse a prompt that cannot fit the context before paying to tokenize it."""
        limit = self.engine.max_prompt_chars
        if limit is not None and chars > limit:
            raise APIError(400, f"the prompt has {chars} characters; no prompt over {limit} characters fits this "
                           f"model's context of {self.engine.max_positions} tokens", param=param,
                           code="context_length_exceeded")

    @staticmethod
    def check_tools(tools: list[dict] | None) -> list[dict] | None:
        """The request's ``tools``, checked by the rules training data follows (:mod:`novalign.data.tools`)."""
        from novalign.data.io import DataError
        from novalign.data.tools import normalize_tools

        try:
            return normalize_tools(tools, path="request", line=1)
        except DataError as exc:
            raise APIError(400, f"{exc.field}: {exc.problem}", param=exc.field or "tools") from exc

    async def tokenize(self, fn: Callable[[], list[int]]) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(self.tokenize_pool, fn)

    def rows(self, body: _Sampling, prompts: list[list[int]], on_token=None) -> list:
        """``body.n`` rows per prompt; row ``p * n + j`` is sample ``j`` of prompt ``p``."""
        stops, rows = body.stops(), []
        for p, ids in enumerate(prompts):
            try:
                rows.extend(self.engine.rows(
                    ids, n=body.n, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                    max_tokens=body.max_completion_tokens or body.max_tokens, stop=stops, seed=body.seed,
                    on_token=None if on_token is None else (lambda j, tok, p=p: on_token(p * body.n + j, tok)),
                ))
            except InvalidRow as exc:
                raise APIError(400, str(exc), param=exc.param) from exc
        return rows

    async def generate(self, request: Request, rows: list) -> list[GenerationOutput]:
        """Submit ``rows`` and wait; a client that disconnects first has its rows cancelled."""
        fut = self.engine.submit(rows)
        waiter = asyncio.wrap_future(fut)
        gone = asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                raise APIError(499, "the client closed the connection", code="client_closed_request")
            return waiter.result()
        finally:
            gone.cancel()
            if not fut.done():
                self.counters["cancelled"] += 1
                cancel_rows(fut, rows)

    async def answer(self, request: Request, response: Response | None, body: _Sampling, rows: Callable[[], list],
                     build: Callable[[list[GenerationOutput]], dict]) -> dict:
        """``build(outputs)`` of a generation of ``rows()`` -- or, for a request with an idempotency key, the
        reply stored or being generated under that key (then the response says ``Idempotent-Replayed: true``)."""
        key = request.headers.get(HEADER)
        if key is None:
            planned = rows()
            self.counters["generations"] += 1
            return build(await self.generate(request, planned))
        if not key or len(key) > MAX_KEY_CHARS:
            raise APIError(400, f"the {HEADER} header must have 1 to {MAX_KEY_CHARS} characters", param=HEADER)

        async def produce() -> dict:  # not cancelled when the client goes: it sent a key to say it will ask again
            planned = rows()
            self.counters["generations"] += 1
            return build(await asyncio.wrap_future(self.engine.submit(planned)))

        fingerprint = hashlib.sha256(f"{request.url.path} {body.model_dump_json()}".encode()).hexdigest()
        try:
            reply, how = await self.idempotency.run(key, fingerprint, produce)
        except KeyReused as exc:
            raise APIError(422, str(exc), param=HEADER, code="idempotency_key_reused") from exc
        if how != "generated":
            self.counters["idempotent_replays" if how == "replayed" else "idempotent_joins"] += 1
            if response is not None:
                response.headers["Idempotent-Replayed"] = "true"
        return reply

    @staticmethod
    def usage(prompts: list[list[int]], outputs: list[GenerationOutput]) -> dict:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(o.completion_tokens for o in outputs)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def chat(self, body: ChatBody, request: Request, response: Response | None = None):
        self.counters["chat_completions"] += 1
        self.check_model(body.model)
        messages = [m.to_template() for m in body.messages]
        self.check_length(sum(len(m["content"]) for m in messages), "messages")
        tools = self.check_tools(body.tools)
        try:
            prompt = await self.tokenize(lambda: self.engine.encode_chat(messages, tools))
        except ToolsNotRendered as exc:
            raise APIError(400, str(exc), param="tools") from exc
        except Exception as exc:  # the chat template rejected the conversation
            raise APIError(400, f"the chat template could not render these messages: {exc}", param="messages") from exc
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return self.stream(request, body, [prompt], rid, "chat.completion.chunk")
        return await self.answer(request, response, body, lambda: self.rows(body, [prompt]), lambda outputs: {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": self.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                         "finish_reason": o.finish_reason} for i, o in enumerate(outputs)],
            "usage": self.usage([prompt], outputs),
        })

    async def complete(self, body: CompletionBody, request: Request, response: Response | None = None):
        self.counters["completions"] += 1
        self.check_model(body.model)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if body.max_tokens is None and body.max_completion_tokens is None:
            body.max_tokens = 16  # OpenAI's default for the completions endpoint
        self.check_length(max(len(t) for t in texts), "prompt")
        encode = self.engine.encode_text if body.add_special_tokens else self.engine.encode_prompt
        prompts = await self.tokenize(lambda: [encode(t) for t in texts])
        rid = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return self.stream(request, body, prompts, rid, "text_completion")
        return await self.answer(request, response, body, lambda: self.rows(body, prompts), lambda outputs: {
            "id": rid, "object": "text_completion", "created": int(time.time()), "model": self.name,
            "choices": [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                        for i, o in enumerate(outputs)],
            "usage": self.usage(prompts, outputs),
        })

    def stream(self, request: Request, body: _Sampling, prompts: list[list[int]], rid: str,
               kind: str) -> StreamingResponse:
        """Server-sent events: token deltas as the batch produces them, then finish reasons, then [DONE]."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        rows = self.rows(body, prompts, on_token=lambda i, tok: loop.call_soon_threadsafe(tokens.put_nowait, (i, tok)))
        self.counters["generations"] += 1
        deltas = [DeltaText(self.engine.tokenizer, body.stops()) for _ in rows]
        fut: Future = self.engine.submit(rows)
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, _DONE))
        head = {"id": rid, "object": kind, "created": int(time.time()), "model": self.name}

        def chunk(i: int, text: str | None, finish: str | None = None, first: bool = False) -> str:
            if kind == "text_completion":
                choice: dict[str, Any] = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            else:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse(head | {"choices": [choice]})

        abandoned: list[bool] = []

        def abandon() -> None:
            if not fut.done() and not abandoned:
                abandoned.append(True)
                self.counters["cancelled"] += 1
                cancel_rows(fut, rows)

        async def events() -> AsyncIterator[str]:
            # the disconnect may be seen by the watcher (ASGI's http.disconnect) or by a failing send (the
            # generator is closed): both cancel the rows
            gone = asyncio.ensure_future(_until_disconnect(request))
            gone.add_done_callback(lambda task: None if task.cancelled() else abandon())
            try:
                if kind != "text_completion":
                    for i in range(len(rows)):
                        yield chunk(i, None, first=True)
                while (item := await tokens.get()) is not _DONE:
                    if text := deltas[item[0]].push(item[1]):
                        yield chunk(item[0], text)
                try:
                    outputs = fut.result()
                except Exception as exc:  # noqa: BLE001 - reported in-band: the 200 status is already sent
                    yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error",
                                          "param": None, "code": None}})
                    yield "data: [DONE]\n\n"
                    return
                for i, out in enumerate(outputs):
                    if rest := deltas[i].finish(out.text):
                        yield chunk(i, rest)
                    yield chunk(i, None, finish=out.finish_reason)
                if (body.stream_options or {}).get("include_usage"):
                    yield _sse(head | {"choices": [], "usage": self.usage(prompts, outputs)})
                yield "data: [DONE]\n\n"
            finally:
                gone.cancel()
                abandon()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; request validation errors are 400s (FastAPI's default is 422)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "the request body is not valid JSON")
        fields = [".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in errors]
        message = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors, strict=True))
        return _error(400, message or "invalid request", param=fields[0] if fields else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind, code="request_too_large" if exc.status_code == 413 else None)

    @app.exception_handler(Exception)
    async def _ours(request: Request, exc: Exception):  # a bug of ours: still OpenAI's shape, never plain text
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


class _Guard:
    """Pure ASGI middleware (a BaseHTTPMiddleware would hide client disconnects from the endpoints): the API
    key on every path but ``/health``, the body-size cap, and the count of /v1 requests."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, counters: dict):
        self.app, self.api_key, self.max_body_bytes, self.counters = app, api_key, max_body_bytes, counters

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if path.startswith("/v1/"):
            self.counters["requests"] += 1
        if self.api_key is not None and path != "/health":
            header = headers.get(b"authorization", b"").decode("latin-1")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), self.api_key.encode()):
                return await _error(401, "Incorrect or missing API key (send 'Authorization: Bearer KEY').",
                                    code="invalid_api_key")(scope, receive, send)
        length = headers.get(b"content-length", b"0").decode("latin-1")
        too_big = f"the request body is over the {self.max_body_bytes}-byte limit"
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await _error(413, too_big, code="request_too_large")(scope, receive, send)
        received = 0

        async def capped():  # a chunked body has no length up front: count it as it arrives
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, too_big)  # FastAPI re-raises its own, not as a 400 parse error
            return message

        await self.app(scope, capped, send)


def create_app(engine: LocalEngine, *, model_name: str | None = None, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, idempotency: IdempotencyStore | None = None) -> FastAPI:
    """The FastAPI app serving ``engine``. ``app.state.counters`` counts the /v1 requests received and the
    generations run; ``idempotency`` bounds the replies kept for idempotency keys (default 10,000 for 24 h)."""
    service = _Service(engine, model_name or engine.name, idempotency)
    app = FastAPI(title="novalign serve", version="1")
    app.state.counters = service.counters
    app.state.engine = engine
    created = int(time.time())
    _install_error_handlers(app)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, counters=service.counters)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.name, **service.counters, "batches": engine.queue.batches_run,
                "largest_batch": engine.queue.largest_batch, "isolated_failures": engine.queue.isolated_failures}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": created,
                                             "owned_by": "novalign", "max_model_len": engine.max_positions}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request, response: Response):
        return await service.chat(body, request, response)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request, response: Response):
        return await service.complete(body, request, response)

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def serve(cfg, *, log_level: str = "info") -> None:
    """Load ``cfg.model`` and serve it until interrupted (``cfg`` is a :class:`~novalign.config.ServeConfig`).

    Prints ``novalign serve: MODEL at http://HOST:PORT/v1`` (with the real port, also for ``port: 0``) once
    it accepts connections.
    """

    e = cfg.engine
    engine = LocalEngine(cfg.model, device=e.device, dtype=e.dtype, max_batch_size=e.max_batch_size,
                         batch_wait_ms=e.batch_wait_ms, default_max_tokens=e.default_max_tokens,
                         name=cfg.served_model_name)
    api_key = cfg.api_key if cfg.api_key is not None else os.environ.get("NOVALIGN_API_KEY") or None
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {cfg.host} without an API key; anyone who can reach it can use it "
              "(set --api-key or $NOVALIGN_API_KEY)", file=sys.stderr, flush=True)
    app = create_app(engine, model_name=cfg.served_model_name, api_key=api_key, max_body_bytes=cfg.max_body_bytes,
                     idempotency=IdempotencyStore(cfg.idempotency_max_entries, cfg.idempotency_ttl_s,
                                                  max_bytes=cfg.idempotency_max_bytes))
    try:
        run_app(app, cfg.host, cfg.port, lambda port: f"novalign serve: {engine.name} at http://{cfg.host}:{port}/v1"
                f"{' (API key required)' if api_key else ''}", log_level=log_level)
    finally:
        engine.close()


def run_app(app, host: str, port: int, announce, *, log_level: str = "warning") -> None:
    """Serve ``app`` with uvicorn until stopped; once listening, print ``announce(bound_port)`` (port 0 binds
    any free port, so the printed line is how callers and tests learn the address)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(announce(server.servers[0].sockets[0].getsockname()[1]), flush=True)
        await task

    asyncio.run(main())
