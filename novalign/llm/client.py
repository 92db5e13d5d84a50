"""The one LLM client every stage uses: a sync call, an async/sync batch API, and the machinery around them.

    client = LLMClient.from_config(LLMConfig(backend="openai", base_url="http://127.0.0.1:8000/v1", model="m"))
    reply = client.chat([{"role": "user", "content": "Hi"}], temperature=0).text
    for result in client.batch(requests):          # results as they finish, with a progress bar
        ...                                        # each a ChatResult or a Failure (result.ok)
    client.close()                                 # prints the run's token / cost table

A request goes through, in order: the cache (samples already stored are not asked for again), the
rate limiter, the concurrency limit, the backend call with a per-request timeout, and retries with
backoff on transient errors. Structured requests (``json_mode`` / ``schema``) then validate the reply and
re-ask with the error. All of this runs on one event loop in a background thread owned by the client, so
the sync API works anywhere (scripts, notebooks, inside other event loops) and the async API from any loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import random
import threading
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Protocol

from novalign.data.io import KeyedAppender
from novalign.llm.accounting import Accounting, Price
from novalign.llm.cache import CachedSample, RequestCache, cache_key
from novalign.llm.idempotency import request_key
from novalign.llm.limits import RateLimiter, RetryPolicy, estimate_tokens
from novalign.llm.structured import check_reply, reask_messages
from novalign.llm.types import (
    BackendError, BackendResponse, ChatRequest, ChatResult, Choice, Failure, LLMError, as_request,
)

__all__ = ["Backend", "LLMClient", "make_backend"]

log = logging.getLogger("novalign.llm")
Result = ChatResult | Failure
_DONE = object()


class Backend(Protocol):
    """What the client needs from a backend. Raise :class:`BackendError` for failures."""

    kind: str
    model_name: str  # for accounting and prices
    model_id: str  # for cache keys: changes whenever the same request could get a different answer

    async def generate(self, request: ChatRequest) -> BackendResponse: ...

    async def aclose(self) -> None: ...

    # Optional, and the local backend has both: ``async def generate_many(self, requests) -> list[BackendResponse |
    # BackendError]`` answers a batch in one model call (:meth:`LLMClient.run_together`), and ``def
    # prompt_tokens(self, request) -> int`` counts a prompt's tokens (:meth:`LLMClient.prompt_tokens`). An HTTP
    # backend sets ``takes_idempotency_key = True`` and takes ``generate(request, idempotency_key=...)``.


def make_backend(cfg) -> Backend:
    """Build the backend an :class:`~novalign.config.LLMConfig` names."""
    if cfg.backend == "openai":
        from novalign.llm.openai_compat import OpenAIBackend

        return OpenAIBackend(cfg.base_url, cfg.model, cfg.api_key, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                             max_connections=cfg.max_concurrency, cache_namespace=cfg.cache_namespace)
    if not cfg.model:
        raise ValueError(f"the {cfg.backend} backend needs llm.model: a model directory")
    local = cfg.local
    if cfg.backend == "local":
        from novalign.llm.local import LocalBackend

        return LocalBackend(cfg.model, device=local.device, dtype=local.dtype, max_batch_size=local.max_batch_size,
                            batch_wait_ms=local.batch_wait_ms, default_max_tokens=local.default_max_tokens)
    from novalign.llm.vllm_engine import VLLMBackend

    return VLLMBackend(cfg.model, default_max_tokens=local.default_max_tokens, **cfg.vllm_args)


class _LoopThread:
    """An event loop running forever in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="novalign-llm-loop", daemon=True)
        self.thread.start()

    def submit(self, coro: Awaitable) -> concurrent.futures.Future:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the blocking LLMClient API cannot be called from the client's own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class LLMClient:
    """Chat generation against one backend, with cache, limits, retries, accounting and structured output.

    Args:
        backend: A :class:`Backend` (see :func:`make_backend` / :meth:`from_config`).
        cache: A :class:`RequestCache` or a path to one; ``None`` or ``no_cache=True``: no caching.
        max_concurrency: Most backend calls in flight.
        rpm, tpm: Optional requests- / tokens-per-minute limits.
        retry: Attempts and backoff for transient failures.
        timeout_s: Per-call timeout (a call past it counts as a transient failure).
        structured_attempts: Tries for a reply that validates (json_mode / schema requests).
        prices: Model name or pattern -> :class:`Price` for the cost estimate.
        progress: Default for the batch progress bar.
        print_usage: Print the usage table on :meth:`close`.
        seed: Seeds the backoff jitter (tests).
    """

    def __init__(self, backend: Backend, *, cache: RequestCache | str | Path | None = None, no_cache: bool = False,
                 max_concurrency: int = 16, rpm: float | None = None, tpm: float | None = None,
                 retry: RetryPolicy | None = None, timeout_s: float = 120.0, structured_attempts: int = 3,
                 prices: dict[str, Price] | None = None, progress: bool = True, print_usage: bool = True,
                 seed: int | None = None):
        if max_concurrency < 1 or structured_attempts < 1:
            raise ValueError("max_concurrency and structured_attempts must be >= 1")
        self.backend = backend
        if no_cache or cache is None:
            self.cache = None
        else:
            self.cache = cache if isinstance(cache, RequestCache) else RequestCache(cache)
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self.structured_attempts = structured_attempts
        self.usage = Accounting(prices)
        self.progress = progress
        self.print_usage = print_usage
        self.max_concurrency = max_concurrency
        self._rng = random.Random(seed)
        self._loop = _LoopThread()
        self._limiter = RateLimiter(rpm, tpm)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._closed = False

    @classmethod
    def from_config(cls, cfg, **overrides: Any) -> "LLMClient":
        """A client for an :class:`~novalign.config.LLMConfig`; keyword arguments override its settings."""
        kwargs: dict[str, Any] = dict(
            cache=None if cfg.no_cache else cfg.cache_path, max_concurrency=cfg.max_concurrency, rpm=cfg.rpm,
            tpm=cfg.tpm, timeout_s=cfg.timeout_s, structured_attempts=cfg.structured_attempts,
            retry=RetryPolicy(max_attempts=cfg.max_attempts, base_delay=cfg.backoff_base_s, max_delay=cfg.backoff_max_s),
            prices={k: Price(p.prompt_per_million, p.completion_per_million) for k, p in cfg.prices.items()},
            progress=cfg.progress,
        )
        kwargs.update(overrides)
        return cls(make_backend(cfg), **kwargs)

    # ------------------------------------------------------------------------------------ public API

    def chat(self, messages: list[dict] | ChatRequest, **params: Any) -> ChatResult:
        """One request, blocking. Returns the result or raises :class:`LLMError` carrying the :class:`Failure`."""
        result = self._loop.submit(self._answer(self._request(messages, params), None)).result()
        if isinstance(result, Failure):
            raise LLMError(result)
        return result

    async def achat(self, messages: list[dict] | ChatRequest, **params: Any) -> ChatResult:
        """:meth:`chat` for async code (any event loop)."""
        fut = self._loop.submit(self._answer(self._request(messages, params), None))
        result = await asyncio.wrap_future(fut)
        if isinstance(result, Failure):
            raise LLMError(result)
        return result

    def batch(self, requests: Iterable[ChatRequest | dict | list], *, progress: bool | None = None) -> Iterator[Result]:
        """Answer many requests concurrently; yields each :class:`ChatResult` or :class:`Failure` as it finishes.

        Every request yields exactly one item; ``item.index`` is its position in ``requests``. ``requests``
        may be a lazy iterable (it is read as capacity frees up, so millions of requests are fine).
        """
        items: queue.Queue = queue.Queue()
        fut = self._loop.submit(self._run_batch(requests, items.put, progress))
        fut.add_done_callback(lambda _: items.put(_DONE))
        try:
            while (item := items.get()) is not _DONE:
                yield item
            fut.result()  # re-raise what stopped the batch, if anything did
        finally:
            if not fut.done():
                fut.cancel()

    async def abatch(self, requests: Iterable[ChatRequest | dict | list], *,
                     progress: bool | None = None) -> AsyncIterator[Result]:
        """:meth:`batch` for async code: ``async for result in client.abatch(requests): ...``."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        fut = self._loop.submit(
            self._run_batch(requests, lambda r: loop.call_soon_threadsafe(items.put_nowait, r), progress))
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(items.put_nowait, _DONE))
        try:
            while (item := await items.get()) is not _DONE:
                yield item
            fut.result()
        finally:
            if not fut.done():
                fut.cancel()

    def run_batch(self, requests: Iterable[ChatRequest | dict | list], output: str | Path | None = None, *,
                  progress: bool | None = None) -> list[Result]:
        """Answer all ``requests``; returns results in input order.

        With ``output``, the file is started over and each result is appended to it (one durable JSON line,
        keyed by ``index``) as it finishes; the run's usage is written beside it (``<output>.usage.json``) and
        printed at the end.
        """
        results: dict[int, Result] = {}
        sink = KeyedAppender(output, "index", fresh=True, default=str) if output is not None else None
        try:
            for result in self.batch(requests, progress=progress):
                results[result.index] = result
                if sink is not None:
                    sink.append(result.to_dict())
        finally:
            if sink is not None:
                sink.close()
        if output is not None:
            self.usage.save(Path(str(output) + ".usage.json"))
            self.usage.print()
        return [results[i] for i in range(len(results))]

    def run_together(self, requests: Iterable[ChatRequest | dict | list]) -> list[Result]:
        """Answer ``requests`` as one batch of the model; results in input order, as :meth:`run_batch`.

        What the cache does not hold goes to the backend in a single call when the backend takes a batch
        (``generate_many``: the local engine runs it as one ``generate_batch``, rows in this order). Greedy
        replies then do not depend on timing -- on which concurrent requests happened to meet in the engine's
        queue -- which is how an evaluation reproduces a direct ``generate_batch`` loop to the token. The caller
        sizes the batch; the engine's ``max_batch_size`` still caps it (a larger one runs as several batches of
        at most that many rows), so a caller that needs one batch keeps it within the cap. Backends without ``generate_many`` (HTTP servers batch on their side) and structured
        requests (they re-ask one by one) go through :meth:`run_batch`.
        """
        items = [as_request(r) for r in requests]
        if not items:
            return []
        if getattr(self.backend, "generate_many", None) is None or any(r.structured for r in items):
            return self.run_batch(items, progress=False)
        return self._loop.submit(self._together(items)).result()

    def prompt_tokens(self, requests: Iterable[ChatRequest | dict | list]) -> list[int] | None:
        """Each request's prompt length in the model's tokens, where the backend can tell without a call (the
        local backend: its tokenizer and template); ``None`` where it cannot (HTTP servers)."""
        count = getattr(self.backend, "prompt_tokens", None)
        return None if count is None else [count(as_request(r)) for r in requests]

    def close(self) -> None:
        """Close the backend and the cache; print the usage table (if ``print_usage`` and anything was called)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.submit(self.backend.aclose()).result(timeout=30)
        finally:
            self._loop.stop()
            if self.cache is not None:
                self.cache.close()
        if self.print_usage and self.usage.models:
            self.usage.print()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internals

    @staticmethod
    def _request(messages: list[dict] | ChatRequest, params: dict) -> ChatRequest:
        if isinstance(messages, ChatRequest):
            return dataclasses.replace(messages, **params) if params else messages
        return ChatRequest(messages=messages, **params)

    async def _run_batch(self, requests: Iterable, deliver: Callable[[Result], None], progress: bool | None) -> None:
        """Keep up to a window of requests running; deliver each result as it finishes."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        total = len(requests) if hasattr(requests, "__len__") else None
        show = self.progress if progress is None else progress
        window = max(64, 4 * self.max_concurrency)  # bounded, so a huge lazy input is read as it goes
        source = enumerate(requests)
        pending: set[asyncio.Task] = set()
        failed = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), disable=not show) as bar:
            task_id = bar.add_task("LLM requests", total=total)
            exhausted = False
            try:
                while True:
                    while not exhausted and len(pending) < window:
                        try:
                            index, item = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        try:
                            request = as_request(item)
                        except (ValueError, TypeError) as exc:
                            raise ValueError(f"request {index}: {exc}") from exc
                        pending.add(asyncio.ensure_future(self._answer(request, index)))
                    if not pending:
                        break
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        result = task.result()
                        failed += not result.ok
                        deliver(result)
                        bar.update(task_id, advance=1, description=f"LLM requests ({failed} failed)" if failed else "LLM requests")
            finally:
                for task in pending:
                    task.cancel()

    async def _answer(self, request: ChatRequest, index: int | None) -> Result:
        try:
            result = await (self._answer_structured(request) if request.structured else self._complete(request))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected backend exception: still an explicit failure
            log.exception("request %s failed unexpectedly", index)
            result = Failure(request, "internal", f"unexpected {type(exc).__name__}: {exc}")
        result.index = index
        if not result.ok:
            self.usage.record_failure(self.backend.model_name)
        return result

    async def _complete(self, request: ChatRequest) -> Result:
        """``request``'s samples: from the cache where stored, the rest from one backend call."""
        key, samples, sub = self._lookup(request)
        if sub is None:
            return self._result(request, key, samples, None, None, 0)
        called = await self._call(sub, self._idempotency_key(key, sub))
        if isinstance(called, Failure):
            called.request = request
            return called
        return self._result(request, key, samples, sub, *called)

    def _lookup(self, request: ChatRequest) -> tuple[str | None, dict[int, CachedSample], ChatRequest | None]:
        """The cache key, the samples the cache holds, and the request for the rest (``None``: all stored)."""
        first, wanted = request.sample_index, range(request.sample_index, request.sample_index + request.n)
        key = cache_key(self.backend.model_id, request) if self.cache is not None else None
        samples: dict[int, CachedSample] = self.cache.get(key, first, request.n) if key else {}
        missing = [i for i in wanted if i not in samples]
        if not missing:
            return key, samples, None
        start = missing[0]  # one call for the tail from the first gap (rows already stored are kept)
        return key, samples, dataclasses.replace(request, n=wanted.stop - start, sample_index=start)

    def _result(self, request: ChatRequest, key: str | None, samples: dict[int, CachedSample], sub: ChatRequest | None,
                response: BackendResponse | None, attempts: int) -> ChatResult:
        """Store the backend's answer to ``sub`` (if any), count usage, and build ``request``'s result."""
        first, wanted = request.sample_index, range(request.sample_index, request.sample_index + request.n)
        if sub is not None and response is not None:
            each = response.completion_tokens_each or _split(response.completion_tokens, sub.n)
            fresh = {sub.sample_index + j: CachedSample(text, reason, response.prompt_tokens, each[j], response.model)
                     for j, (text, reason) in enumerate(zip(response.texts, response.finish_reasons, strict=True))}
            if key:
                fresh = self.cache.put(key, fresh, model_id=self.backend.model_id, request=sub)
            samples = {**samples, **fresh}
            prompt_tokens = response.prompt_tokens
            self.usage.record(self.backend.model_name, response.prompt_tokens, response.completion_tokens, cached=False)
        else:
            prompt_tokens = samples[first].prompt_tokens
            self.usage.record(self.backend.model_name, prompt_tokens,
                              sum(samples[i].completion_tokens for i in wanted), cached=True)
        choices = [Choice(j, samples[i].text, samples[i].finish_reason) for j, i in enumerate(wanted)]
        return ChatResult(
            request=request, model=samples[first].model, choices=choices, prompt_tokens=prompt_tokens,
            completion_tokens=sum(samples[i].completion_tokens for i in wanted), cached=sub is None, attempts=attempts,
        )

    def _idempotency_key(self, key: str | None, sub: ChatRequest) -> str:
        """The key a backend call is sent with (its retries too). With a cache: derived from the cache key, so
        a restarted process asks again under the same key and a server that stores replies by key returns the
        one the killed process never stored. Without a cache, identical requests are meant to be fresh
        samples: a new random key per call."""
        if key is None or self.cache is None:
            return uuid.uuid4().hex
        return request_key(self.cache.salt, key, sub.sample_index, sub.n)

    async def _call(self, request: ChatRequest, idempotency_key: str | None = None) -> tuple[BackendResponse, int] | Failure:
        """One backend call under the limits, retried on transient errors. Returns (response, attempts)."""
        if idempotency_key is not None and getattr(self.backend, "takes_idempotency_key", False):
            def call():
                return self.backend.generate(request, idempotency_key=idempotency_key)
        else:
            def call():
                return self.backend.generate(request)
        outcome, attempts = await self._retrying(call, _estimate(request), lambda r: r.prompt_tokens + r.completion_tokens)
        if isinstance(outcome, BackendError):
            return Failure(request, outcome.kind, str(outcome), attempts=attempts, status=outcome.status)
        return outcome, attempts

    async def _retrying(self, call: Callable[[], Awaitable[Any]], estimate: int,
                        used: Callable[[Any], int]) -> tuple[Any, int]:
        """``call()`` under the limits and the timeout, retried with backoff on transient errors.
        Returns (its value or the last :class:`BackendError`, attempts made)."""
        error: BackendError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            await self._limiter.acquire(estimate)
            async with self._semaphore:
                try:
                    value = await asyncio.wait_for(call(), self.timeout_s)
                except asyncio.TimeoutError:
                    error = BackendError("timeout", f"no complete response within {self.timeout_s}s", retryable=True)
                except BackendError as exc:
                    error = exc
                else:
                    self._limiter.settle(estimate, used(value))
                    return value, attempt
            if not error.retryable or attempt == self.retry.max_attempts:
                break
            delay = self.retry.delay(attempt, error.retry_after, self._rng)
            log.info("attempt %d failed (%s: %s); retrying in %.2fs", attempt, error.kind, error, delay)
            await asyncio.sleep(delay)
        assert error is not None
        return error, attempt

    async def _together(self, requests: list[ChatRequest]) -> list[Result]:
        """:meth:`run_together`'s work: cache lookups, then one ``generate_many`` call for every miss."""
        looked = [self._lookup(r) for r in requests]
        asked = [i for i, (_, _, sub) in enumerate(looked) if sub is not None]
        subs = [looked[i][2] for i in asked]
        answers: dict[int, BackendResponse | BackendError] = {}
        attempts = 0
        if subs:
            try:
                outcome, attempts = await self._retrying(
                    lambda: self.backend.generate_many(subs), sum(_estimate(r) for r in subs),
                    lambda rs: sum(r.prompt_tokens + r.completion_tokens for r in rs if isinstance(r, BackendResponse)))
            except Exception as exc:  # as in _answer: a bug or an unexpected backend exception is a failure, per request
                log.exception("a batch of %d requests failed unexpectedly", len(subs))
                outcome = BackendError("internal", f"unexpected {type(exc).__name__}: {exc}", retryable=False)
            answers = dict(zip(asked, [outcome] * len(asked) if isinstance(outcome, BackendError) else outcome,
                               strict=True))
        results: list[Result] = []
        for i, (request, (key, samples, sub)) in enumerate(zip(requests, looked, strict=True)):
            answer = answers.get(i)
            if isinstance(answer, BackendError):
                results.append(Failure(request, answer.kind, str(answer), attempts=max(attempts, 1), status=answer.status))
                self.usage.record_failure(self.backend.model_name)
            else:
                results.append(self._result(request, key, samples, sub, answer, attempts))
            results[-1].index = i
        return results

    async def _answer_structured(self, request: ChatRequest) -> Result:
        """Ask, validate, and re-ask with the validation error, up to ``structured_attempts`` times."""
        current, attempts, prompt_tokens, completion_tokens, cached = request, 0, 0, 0, True
        error, reply = "", ""
        for _ in range(self.structured_attempts):
            result = await self._complete(current)
            if isinstance(result, Failure):
                result.request, result.attempts = request, attempts + result.attempts
                return result
            attempts += result.attempts
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            cached = cached and result.cached
            reply = result.text
            parsed, error = check_reply(request, reply)
            if error is None:
                result.choices[0].parsed = parsed
                return dataclasses.replace(result, request=request, attempts=attempts, prompt_tokens=prompt_tokens,
                                           completion_tokens=completion_tokens, cached=cached)
            current = dataclasses.replace(request, messages=reask_messages(current, reply, error))
        return Failure(request, "validation", f"no valid reply in {self.structured_attempts} tries; last error: {error}",
                       attempts=attempts, last_text=reply)


def _estimate(request: ChatRequest) -> int:
    text = request.messages if request.prompt is None else [{"content": request.prompt}]
    return estimate_tokens(text, request.max_tokens, request.n)


def _split(total: int, n: int) -> list[int]:
    """``total`` tokens over ``n`` samples when the server reports only the sum."""
    return [total // n + (j < total % n) for j in range(n)]
