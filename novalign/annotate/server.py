"""Running the app (``novalign annotate serve``) and the command-line operations beside it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from sqlalchemy import select

from novalign.annotate import accounts, exports
from novalign.annotate.db import make_engine, migrate, session_factory
from novalign.annotate.models import Project
from novalign.annotate.projects import create_project, import_file
from novalign.data.io import write_json_atomic, write_jsonl

DEFAULT_DB = "sqlite:///runs/annotate.db"


def serve(db_url: str = DEFAULT_DB, host: str = "127.0.0.1", port: int = 8765, echo=print) -> None:
    """Migrate, bind (port 0 picks a free one) and serve until interrupted; prints ``novalign annotate: URL``."""
    import uvicorn

    from novalign.annotate.app import create_app

    app = create_app(db_url)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    echo(f"novalign annotate: http://{host}:{bound}/ (database {db_url})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=512)
    uvicorn.Server(config).run(sockets=[sock])


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
