"""``novalign pas serve``: PAS as a plug-and-play OpenAI-compatible proxy (report section 2.3, figure 3a).

    client --> POST /v1/chat/completions --> [PAS: complement the last user message] --> upstream --> client

The proxy rewrites only the content of the last ``user`` message (prompt -> joined prompt + complement) and
forwards the request otherwise unchanged to any OpenAI-compatible upstream; streamed answers (SSE) are
passed through chunk by chunk as they arrive. Per request:

* PAS off: header ``X-PAS: off`` or body field ``"pas": false`` (the field is removed before forwarding);
* RAG mode: body fields ``"pas_search_keywords": [...]`` and/or ``"pas_search_results": [...]``;
* response headers ``X-PAS`` (``on`` / ``off`` / ``error``) and ``X-PAS-Latency-Ms``; the added latency is
  also logged (logger ``novalign.pas``) and summed in ``GET /health``.

A PAS failure never blocks the answer: the request goes upstream unchanged with ``X-PAS: error``.

Credentials (issue 22): the proxy has its own client key (``api_key``, default ``$NOVALIGN_PAS_API_KEY``),
required when it binds anything but loopback. With a client key, every path but ``/health`` needs it and
the upstream gets the proxy's upstream key (the client's key is never forwarded); without one, the upstream
gets exactly the ``Authorization`` the client sent, never the proxy's upstream key -- a keyless client can
never spend someone else's credentials. A stream the upstream cuts short ends with an SSE error event, not a
clean end.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from novalign.pas.augment import PromptAugmenter

__all__ = ["create_proxy_app", "check_messages", "last_user_text", "pas_switch", "replace_last_user_text", "serve_proxy"]

log = logging.getLogger("novalign.pas")
_OFF = {"off", "0", "false", "no"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_messages(messages: Any) -> str | None:
    """Why ``messages`` is not a list of chat messages (``None``: it is): each an object with a string
    ``role`` and a ``content`` that is a string, a list of parts, or null."""
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list of messages is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}]: a message must be an object, got {type(m).__name__}"
        if not isinstance(m.get("role"), str):
            return f"messages[{i}].role: a string is required"
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"messages[{i}].content: a string or a list of parts is required, got {type(content).__name__}"
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            return f"messages[{i}].content: every part must be an object"
    return None


def _bearer(headers) -> str:
    header = headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


def _error(status: int, message: str, type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": None}}, status_code=status)


def pas_switch(headers, body: dict) -> bool:
    """Whether PAS runs for this request: on unless ``X-PAS: off`` or ``"pas": false``."""
    if str(headers.get("x-pas", "on")).strip().lower() in _OFF:
        return False
    return body.get("pas", True) is not False


def last_user_text(messages: list[dict]) -> tuple[int, str] | None:
    """Index and text of the last user message (text parts joined), or ``None`` if there is none."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return i, "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
            return i, content if isinstance(content, str) else ""
    return None


def replace_last_user_text(messages: list[dict], index: int, text: str) -> list[dict]:
    """A copy of ``messages`` whose message ``index`` has ``text`` (non-text parts of a list content kept)."""
    out = [dict(m) for m in messages]
    content = out[index].get("content")
    if isinstance(content, list):
        others = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
        out[index]["content"] = [{"type": "text", "text": text}, *others]
    else:
        out[index]["content"] = text
    return out


def create_proxy_app(augmenter: PromptAugmenter, upstream: str, *, upstream_api_key: str | None = None,
                     api_key: str | None = None, timeout_s: float = 300.0) -> FastAPI:
    """The proxy app. ``app.state.stats`` counts requests with/without PAS and the PAS time spent.

    ``api_key``: the key clients must send (``None``: none, and then ``upstream_api_key`` is never used)."""
    base = upstream.rstrip("/")
    stats = {"requests": 0, "pas_on": 0, "pas_off": 0, "pas_errors": 0, "pas_seconds": 0.0}
    holder: dict[str, httpx2.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["http"] = httpx2.AsyncClient(timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)))
        try:
            yield
        finally:
            await holder["http"].aclose()

    app = FastAPI(title="novalign pas serve", version="1", lifespan=lifespan)
    app.state.stats = stats

    @app.middleware("http")
    async def _client_key(request: Request, call_next):
        if api_key is not None and request.url.path != "/health":
            if not secrets.compare_digest(_bearer(request.headers).encode(), api_key.encode()):
                return JSONResponse({"error": {"message": "Incorrect or missing API key for this proxy (send "
                                               "'Authorization: Bearer KEY').", "type": "invalid_request_error",
                                               "param": None, "code": "invalid_api_key"}}, status_code=401)
        return await call_next(request)

    def upstream_headers(request: Request) -> dict[str, str]:
        if api_key is not None:  # the client proved it may use the proxy: the proxy's own upstream key
            return {"Authorization": f"Bearer {upstream_api_key}"} if upstream_api_key else {}
        auth = request.headers.get("authorization")  # only what the client itself presented
        return {"Authorization": auth} if auth else {}

    async def augment(body: dict) -> tuple[dict, dict[str, str]]:
        keywords = body.pop("pas_search_keywords", None) or []
        results = body.pop("pas_search_results", None) or []
        found = last_user_text(body["messages"])
        if found is None or not found[1].strip():
            return body, {"X-PAS": "off"}
        start = time.perf_counter()
        try:
            out = await augmenter.aaugment(found[1], keywords=keywords, results=results)
        except Exception as exc:  # noqa: BLE001 - the answer must still go through
            stats["pas_errors"] += 1
            log.warning("PAS failed, forwarding the prompt unchanged: %s", exc)
            return body, {"X-PAS": "error"}
        elapsed = time.perf_counter() - start
        stats["pas_on"] += 1
        stats["pas_seconds"] += elapsed
        log.info("PAS added %.1f ms (complement: %r)", elapsed * 1000, out.complement)
        body["messages"] = replace_last_user_text(body["messages"], found[0], out.augmented)
        return body, {"X-PAS": "on", "X-PAS-Latency-Ms": f"{elapsed * 1000:.1f}"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        stats["requests"] += 1
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if (problem := check_messages(body.get("messages"))) is not None:
            return _error(400, problem)
        on = pas_switch(request.headers, body)
        body.pop("pas", None)
        if on:
            body, extra = await augment(body)
        else:
            stats["pas_off"] += 1
            body.pop("pas_search_keywords", None)
            body.pop("pas_search_results", None)
            extra = {"X-PAS": "off"}
        return await forward(request, body, extra)

    async def forward(request: Request, body: dict, extra: dict[str, str]):
        http = holder["http"]
        url = f"{base}/chat/completions"
        try:
            if body.get("stream"):
                upstream_req = http.build_request("POST", url, json=body, headers=upstream_headers(request))
                resp = await http.send(upstream_req, stream=True)
                if resp.status_code >= 400:
                    content = await resp.aread()
                    await resp.aclose()
                    return Response(content, status_code=resp.status_code, media_type="application/json", headers=extra)
                return StreamingResponse(_relay(resp, base), status_code=resp.status_code,
                                         media_type=resp.headers.get("content-type", "text/event-stream"),
                                         headers=extra | {"Cache-Control": "no-cache"}, background=BackgroundTask(resp.aclose))
            resp = await http.post(url, json=body, headers=upstream_headers(request))
        except httpx2.TransportError as exc:
            return _error(502, f"upstream {base} unreachable: {type(exc).__name__}: {exc}", "upstream_error")
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"), headers=extra)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            resp = await holder["http"].get(f"{base}/models", headers=upstream_headers(request))
        except httpx2.TransportError as exc:
            return _error(502, f"upstream {base} unreachable: {exc}", "upstream_error")
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        mean = stats["pas_seconds"] / stats["pas_on"] * 1000 if stats["pas_on"] else None
        return {"status": "ok", "upstream": base, **stats, "pas_mean_latency_ms": mean}

    return app


async def _relay(resp, base: str):
    """The upstream's SSE bytes as they come; a stream cut before ``data: [DONE]`` (an error mid-read, or a
    clean close too early) ends with an error event, so the client does not take a cut answer as complete."""
    tail = b""
    try:
        async for chunk in resp.aiter_raw():
            tail = (tail + chunk)[-64:]
            yield chunk
    except httpx2.HTTPError as exc:
        reason = f"the upstream stream broke: {type(exc).__name__}: {exc}"
    else:
        if b"data: [DONE]" in tail:
            return
        reason = "the upstream stream ended early (no [DONE] event)"
    log.warning("%s (%s)", reason, base)
    event = {"error": {"message": reason, "type": "upstream_error", "param": None, "code": None}}
    yield f"\n\ndata: {json.dumps(event)}\n\n".encode()


def serve_proxy(cfg, *, log_level: str = "info") -> None:
    """Run the proxy of a :class:`~novalign.config.PASServeConfig` until interrupted.

    Prints ``novalign pas serve: http://HOST:PORT/v1 -> UPSTREAM`` once it accepts connections.
    """
    from novalign.llm.server import run_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if cfg.host not in _LOOPBACK and cfg.api_key is None and not os.environ.get("NOVALIGN_PAS_API_KEY"):
        raise ValueError(f"pas serve on {cfg.host} needs a client key: set api_key (--set api_key=KEY) or "
                         "$NOVALIGN_PAS_API_KEY; anyone who can reach it could otherwise use its upstream")
    augmenter = PromptAugmenter.from_config(cfg.pas_llm, cfg.augment, progress=False)
    key = cfg.upstream_api_key if cfg.upstream_api_key is not None else os.environ.get(cfg.upstream_api_key_env)
    client_key = cfg.api_key if cfg.api_key is not None else os.environ.get("NOVALIGN_PAS_API_KEY") or None
    if client_key is None and key:
        log.warning("no client key (api_key / $NOVALIGN_PAS_API_KEY): the upstream key is not used; each "
                    "client's own Authorization is forwarded instead")
    app = create_proxy_app(augmenter, cfg.upstream, upstream_api_key=key, api_key=client_key, timeout_s=cfg.timeout_s)
    try:
        run_app(app, cfg.host, cfg.port, lambda port: f"novalign pas serve: http://{cfg.host}:{port}/v1 -> {cfg.upstream}",
                log_level=log_level)
    finally:
        augmenter.close()
