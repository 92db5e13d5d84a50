"""Behaving well at scale: retry backoff and request/token rate limits.

* Backoff: attempt ``a`` (1-based) waits ``cap/2 + U(0, cap/2)`` with ``cap = min(max_delay, base * 2**(a-1))``
  ("equal jitter": never less than half the exponential step, so waits grow, yet clients spread out). A
  server's ``Retry-After`` replaces the computed wait (plus up to 10 % jitter), capped at ``max_retry_after``.
* Rate limits: two token buckets, requests per minute and tokens per minute, refilled continuously and
  holding ``burst_s`` seconds of allowance. A call takes one request and its *estimated* tokens (prompt
  characters / 4 + max_tokens); once the real usage is known the difference is settled, so a bucket may go
  into debt that later calls wait out.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

__all__ = ["RetryPolicy", "parse_retry_after", "RateLimiter", "estimate_tokens"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        rng = rng or random
        if retry_after is not None and math.isfinite(retry_after):  # "nan"/"inf": the computed backoff instead
            wait = min(max(retry_after, 0.0), self.max_retry_after)
            return wait * (1 + 0.1 * rng.random())
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return cap / 2 + rng.uniform(0, cap / 2)


def parse_retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); ``None`` if absent/bad
    (``nan``, ``inf`` and negative numbers are bad: ``float()`` takes them, but they are no wait)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            seconds = float(ms) / 1000
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[dict], max_tokens: int | None, n: int = 1) -> int:
    """Rough token cost of a call before it is made (about 4 characters per token)."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // 4 + 4 * len(messages) + n * (max_tokens or 256)


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float):
        self.rate = per_minute / 60.0  # per second
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity

    def refill(self, dt: float) -> None:
        self.level = min(self.capacity, self.level + dt * self.rate)

    def wait_for(self, cost: float) -> float:
        need = min(cost, self.capacity)  # a call bigger than the bucket goes ahead once it is full, into debt
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    """Async requests-per-minute / tokens-per-minute limiter (either may be ``None``: unlimited). FIFO."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, burst_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.requests = _Bucket(rpm, burst_s) if rpm else None
        self.tokens = _Bucket(tpm, burst_s) if tpm else None
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock: asyncio.Lock | None = None

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def _refill(self) -> None:
        now = self._clock()
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now - self._last)
        self._last = now

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of about ``tokens`` tokens fits, then take it."""
        if not self.active:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                self._refill()
                wait = max(self.requests.wait_for(1) if self.requests else 0.0,
                           self.tokens.wait_for(tokens) if self.tokens else 0.0)
                if wait <= 0:
                    break
                await self._sleep(wait)
            if self.requests:
                self.requests.level -= 1
            if self.tokens:
                self.tokens.level -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once a call's real usage is known."""
        if self.tokens is not None:
            self.tokens.level -= actual - estimated
