"""A persistent request cache in SQLite, so that rerunning or resuming a pipeline never pays for a call twice.

Key: a SHA-256 over the backend's model identity, the messages and every sampling parameter except ``n``.
Each of a request's samples is a row ``(key, sample index, text, ...)``; the ``n`` samples of one call are
written together in one transaction. Sampled (temperature > 0) requests are cached like greedy ones: asking
again for samples ``0..n-1`` of a prompt returns the stored ones, so a rerun reproduces the same data, and
asking for ``n=8`` after ``n=4`` only pays for samples ``4..7``.

Several processes and threads may share one file: the database runs in WAL mode with a busy timeout, each
thread has its own connection, and writes use ``INSERT OR IGNORE`` inside ``BEGIN IMMEDIATE`` -- the first
writer of a sample wins and :meth:`RequestCache.put` returns what is stored, so concurrent writers agree.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from novalign.llm.types import ChatRequest, dumps_canonical

__all__ = ["CachedSample", "RequestCache", "cache_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, model_id TEXT NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class CachedSample:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model: str


def cache_key(model_id: str, request: ChatRequest) -> str:
    return hashlib.sha256(dumps_canonical({"model": model_id, **request.cache_fields()}).encode()).hexdigest()


class RequestCache:
    """SQLite-backed sample store (see the module docstring). Safe to share across threads and processes."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()  # create the file and tables now, so that errors surface at construction
        # A random id of this cache file, drawn by its first user (every process sharing the file reads the
        # same one): part of the idempotency keys the client sends, so a new cache never gets an old one's
        # replies back from a server that stores replies by key (novalign.llm.idempotency).
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (secrets.token_hex(16),))
        self.salt: str = conn.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()[0]

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, key: str, start: int, count: int) -> dict[int, CachedSample]:
        """Stored samples with index in ``[start, start + count)``, by index (missing ones are absent)."""
        rows = self._conn().execute(
            "SELECT idx, text, finish_reason, prompt_tokens, completion_tokens, model FROM samples "
            "WHERE key = ? AND idx >= ? AND idx < ?", (key, start, start + count),
        ).fetchall()
        return {r[0]: CachedSample(*r[1:]) for r in rows}

    def put(self, key: str, samples: dict[int, CachedSample], *, model_id: str, request: ChatRequest) -> dict[int, CachedSample]:
        """Store ``samples`` (index -> sample) in one transaction; returns what the cache holds for them."""
        if not samples:
            return {}
        conn = self._conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR IGNORE INTO requests VALUES (?, ?, ?)",
                         (key, model_id, dumps_canonical(request.cache_fields())))
            conn.executemany(
                "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, i, s.text, s.finish_reason, s.prompt_tokens, s.completion_tokens, s.model, now)
                 for i, s in samples.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        stored = self.get(key, min(samples), max(samples) - min(samples) + 1)
        return {i: stored[i] for i in samples}

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
