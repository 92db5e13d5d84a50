"""Running the app (``novalign annotate serve``) and the command-line operations beside it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import select
from uvicorn.supervisors import Multiprocess

from novalign.annotate import accounts, exports
from novalign.annotate.db import make_engine, migrate, session_factory
from novalign.annotate.models import Project
from novalign.annotate.projects import create_project, import_file
from novalign.data.io import write_json_atomic, write_jsonl

DEFAULT_DB = "sqlite:///runs/annotate.db"


_DB_ENV = "NOVALIGN_ANNOTATE_DB"


def serve(db_url: str = DEFAULT_DB, host: str = "127.0.0.1", port: int = 8765, echo=print, workers: int = 1) -> None:
    """Migrate, bind (port 0 picks a free one) and serve until interrupted; prints ``novalign annotate: URL``.

    ``workers`` > 1: that many uvicorn worker processes share the one listening socket (the parent supervises
    them). The app keeps its state in the database only, so any worker may answer any request of a session;
    migrations run once here, before the workers start. ``X-Forwarded-*`` headers are not read (uvicorn trusts
    them from 127.0.0.1 by default, i.e. from any local process): the app uses neither client addresses nor
    absolute URLs, and skipping that middleware is less work per request."""
    if workers < 1:
        raise ValueError(f"workers: {workers}; at least 1")
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    app = None
    if workers == 1:
        from novalign.annotate.app import create_app

        app = create_app(db_url, run_migrations=False)  # before the URL is printed: it is ready when it is
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)  # connections made right after the URL is printed wait in the backlog for the workers
    bound = sock.getsockname()[1]
    say = lambda: echo(f"novalign annotate: http://{host}:{bound}/ (database {db_url}, "  # noqa: E731
                       f"{workers} worker{'s' * (workers > 1)})", flush=True)
    if app is not None:
        say()
        config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=512, proxy_headers=False)
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ[_DB_ENV] = db_url  # the spawned workers read it in worker_app
    config = uvicorn.Config("novalign.annotate.server:worker_app", factory=True, workers=workers,
                            log_level="warning", access_log=False, backlog=512, proxy_headers=False)
    _Supervisor(config, [sock], say).run()


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, printing the URL only once every worker serves (a spawned worker imports the
    app first, seconds on a busy machine), as the one-process server does."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], ready):
        super().__init__(config, sockets)
        self.ready = ready

    def init_processes(self) -> None:
        super().init_processes()
        if not all(p.wait_until_ready(120, self.should_exit) for p in self.processes):
            self.should_exit.set()
            raise SystemExit("novalign annotate: a worker did not start (see its error above)")
        self.ready()


def worker_app():
    """The app of one worker process of :func:`serve` (a uvicorn factory: the database URL comes from the
    parent's environment, and the parent has migrated it)."""
    from novalign.annotate.app import create_app

    return create_app(os.environ[_DB_ENV], run_migrations=False)


def _session(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    return session_factory(engine)()


def run_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()


def add_user(db_url: str, username: str, password: str, role: str, skills: str = "") -> None:
    with _session(db_url) as s:
        accounts.create_user(s, username, password, role, accounts.parse_skills(skills))
        s.commit()


def _project(s, name: str) -> Project:
    project = s.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise ValueError(f"no project named {name!r}")
    return project


def add_project(db_url: str, name: str, overlap: int, route_field: str, lease_seconds: int) -> None:
    with _session(db_url) as s:
        create_project(s, name, overlap, route_field, lease_seconds)


def import_tasks(db_url: str, project: str, path: Path) -> dict[str, int]:
    with _session(db_url) as s:
        return import_file(s, _project(s, project), path)


def export_records(db_url: str, project: str, fmt: str, output: Path, normalize: str = "minmax") -> dict[str, Any]:
    with _session(db_url) as s:
        rows, summary = exports.export(s, _project(s, project).id, fmt, normalize)
    if fmt in ("label-studio", "argilla"):
        write_json_atomic(output, rows)
    else:
        write_jsonl(output, rows)
    return summary
