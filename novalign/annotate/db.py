"""Engines and migrations of the annotation app: ``sqlite:///path`` (the default, nothing to install) or
``postgresql://...`` (psycopg 3). The schema is the Alembic migrations', applied by :func:`migrate` on every
start and by ``novalign annotate migrate``.

SQLite allows one writer at a time. A writer that finds the lock taken does not queue: SQLite's busy handler
polls, sleeping 1, 2, 5, 10 ... up to 100 ms between tries (``sqliteDefaultBusyCallback`` in its ``main.c``), so
under 50 concurrent annotators a write waits hundreds of milliseconds for a lock that was free after a few. Here
writers first queue on an ``flock`` of a file beside the database -- the kernel wakes a waiter the moment the
lock is released, across threads and worker processes alike -- and only then ``BEGIN IMMEDIATE``; the busy
timeout is left for other programs writing the same file. Reads (the session lookup of every request, page
views) run as deferred, ``query_only`` transactions, which in WAL mode never wait for the writer.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
READ_ONLY = "novalign_read_only"
"""Execution option: begin the transaction as a reader (see :func:`read_only`)."""


# One pooled connection per request thread (anyio's default limit: 40 threads a process) and no overflow: an
# overflow connection is closed when returned, so under load PostgreSQL forked a backend for a fraction of all
# requests. With N workers the app keeps up to 40 N connections (PostgreSQL's default max_connections is 100).
_POOL = {"pool_size": 40, "max_overflow": 0, "pool_timeout": 60}


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's bare default is psycopg2, which we do not ship)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class QueuedWriterConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions take an exclusive ``flock`` on ``lock_path`` first and
    hold it until their COMMIT or ROLLBACK has finished. Each connection opens its own descriptor: ``flock``
    locks belong to an open file, so two connections (threads) of one process exclude each other too."""

    lock_path: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock_fd: int | None = None
        self._locked = False
        self._query_only = False

    def begin(self, read_only: bool) -> None:
        if read_only != self._query_only:  # a write in a read transaction fails at once instead of racing
            self.execute(f"PRAGMA query_only={int(read_only)}")
            self._query_only = read_only
        if read_only:
            self.execute("BEGIN")
            return
        if self.lock_path:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks in the kernel, without the GIL
            self._locked = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._locked:
            self._locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _sqlite_engine(url: str) -> Engine:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    lock_path = None
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock_path = path + "-writer.lock"
    factory = type("QueuedWriter", (QueuedWriterConnection,), {"lock_path": lock_path})
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30, "factory": factory},
                           **_POOL)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # WAL: readers never wait for the one writer; FKs are off by default
        dbapi_conn.isolation_level = None  # SQLAlchemy, not pysqlite, begins transactions (see _begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, one fsync per checkpoint
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # writers take the write lock at BEGIN: no deadlock between two readers upgrading to writers
        conn.connection.dbapi_connection.begin(bool(conn.get_execution_options().get(READ_ONLY)))

    return engine


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # no pre-ping (a round trip on every checkout); a connection the server closed fails one request, and
    # SQLAlchemy then drops the pool's connections
    return create_engine(url, pool_recycle=3600, **_POOL)


def read_only(s: Session) -> Session:
    """Begin ``s``'s next transaction as a reader: on SQLite a deferred, ``query_only`` transaction that never
    waits for the writer (a write in it is an error); on PostgreSQL an ordinary transaction. Call it before the
    transaction's first statement; after its commit the session's next transaction is a writer again."""
    s.connection(execution_options={READ_ONLY: True})
    return s


def end_read(s: Session) -> None:
    """End a :func:`read_only` transaction before the same session writes. On SQLite it must end (the writer
    begins with the write lock, see ``QueuedWriterConnection``); on PostgreSQL the read just goes on into the
    writes, one transaction instead of two (a BEGIN and a COMMIT round trip fewer per request)."""
    if not is_postgres(s):
        s.commit()


def is_postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
