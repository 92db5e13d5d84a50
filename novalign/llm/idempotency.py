"""Idempotency keys for ``novalign serve``: a request repeated with the same ``Idempotency-Key`` header is
generated once.

The novalign client sends a key with every HTTP request (see :func:`request_key`): derived from the request
cache's key, so a pipeline that is killed and started again sends the same key for the same request, and
the server can hand back a reply the killed process never stored instead of generating it again.

What the server does with a key (:class:`IdempotencyStore`), after the IETF HTTPAPI draft "The
Idempotency-Key HTTP Header Field" (draft-ietf-httpapi-idempotency-key-header) and Stripe's API, which
introduced the header:

- the first request with a key generates; a repeat that arrives after it finished gets the stored reply,
  for as long as the store keeps it (the newest replies, at most ``max_entries`` of them and ``max_bytes``
  of reply JSON in all, each for ``ttl_s`` seconds);
- a repeat that arrives while the first is still generating waits for it and gets the same reply. (The draft
  answers 409 Conflict here; waiting is what a client that timed out or was restarted wants, and costs the
  server nothing.)
- a key reused with a different request body is refused (422, as in the draft);
- a failed generation is not stored, so a repeat generates again;
- a keyed generation runs to its end even when every client waiting for it has hung up: sending a key says
  the client will ask again. (Requests without a key stop generating when their client goes.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable

__all__ = ["HEADER", "MAX_KEY_CHARS", "IdempotencyStore", "KeyReused", "request_key"]

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255  # Stripe's limit; a SHA-256 hex key is 64


class KeyReused(ValueError):
    """An idempotency key sent again with a different request body."""


def request_key(salt: str, cache_key: str, sample_index: int, n: int) -> str:
    """The key of one backend call: samples ``sample_index .. sample_index + n - 1`` of the request whose
    cache key is ``cache_key``, in the cache whose random ``salt`` is given.

    The sample range is part of it because one cached request may be asked for in pieces (samples 0-3, then
    4-7): different calls, different replies. The salt is part of it so that a new cache -- a user who
    deleted theirs to draw fresh samples -- never gets an old cache's replies back from the server.
    """
    return hashlib.sha256(f"{salt}:{cache_key}:{sample_index}:{n}".encode()).hexdigest()


class IdempotencyStore:
    """Finished replies and running generations by idempotency key (see the module docstring). Used from one
    event loop (the server's)."""

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 24 * 3600.0,
                 clock: Callable[[], float] = time.monotonic, max_bytes: int = 256 * 2**20):
        if max_entries < 1 or ttl_s <= 0 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1 and ttl_s > 0")
        self.max_entries, self.ttl_s, self.clock, self.max_bytes = max_entries, ttl_s, clock, max_bytes
        # key -> (fingerprint, when, reply, size): a count alone does not bound memory (a reply of n long
        # samples can be megabytes), so the replies' JSON size is summed too
        self._done: OrderedDict[str, tuple[str, float, Any, int]] = OrderedDict()
        self.bytes = 0
        self._running: dict[str, tuple[str, asyncio.Future]] = {}

    def __len__(self) -> int:
        return len(self._done)

    async def run(self, key: str, fingerprint: str, produce: Callable[[], Awaitable[Any]]) -> tuple[Any, str]:
        """``produce()``'s reply for ``key``, generated at most once while stored. Returns (reply, how): how is
        ``"generated"``, ``"joined"`` (waited for the generation already running) or ``"replayed"`` (stored).
        Raises :class:`KeyReused` if ``key`` came before with another ``fingerprint``."""
        self._expire()
        if (done := self._done.get(key)) is not None:
            _same(key, done[0], fingerprint)
            return done[2], "replayed"
        if (running := self._running.get(key)) is not None:
            _same(key, running[0], fingerprint)
            return await asyncio.shield(running[1]), "joined"
        task = asyncio.ensure_future(produce())
        self._running[key] = (fingerprint, task)
        task.add_done_callback(lambda t: self._finished(key, fingerprint, t))
        # shielded: a waiter that is cancelled (its client went) leaves the generation running for the others
        return await asyncio.shield(task), "generated"

    def _finished(self, key: str, fingerprint: str, task: asyncio.Future) -> None:
        self._running.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return  # not stored: a repeat generates again
        reply = task.result()
        size = reply_size(reply)
        if size > self.max_bytes:
            return  # larger than the whole store: kept nowhere, a repeat generates again
        self._done[key] = (fingerprint, self.clock(), reply, size)
        self.bytes += size
        while len(self._done) > self.max_entries or self.bytes > self.max_bytes:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        self.bytes -= self._done.popitem(last=False)[1][3]

    def _expire(self) -> None:
        cutoff = self.clock() - self.ttl_s
        while self._done and next(iter(self._done.values()))[1] < cutoff:  # oldest first: insertion order
            self._pop_oldest()


def reply_size(reply: Any) -> int:
    """Bytes of ``reply`` as UTF-8 JSON, what the store counts against ``max_bytes`` (``str()`` for values JSON
    cannot hold)."""
    return len(json.dumps(reply, default=str, ensure_ascii=False).encode())


def _same(key: str, stored: str, given: str) -> None:
    if stored != given:
        raise KeyReused(f"the {HEADER} {key!r} was used before with a different request body")
