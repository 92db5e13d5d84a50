"""Shared parts of the annotation app's tests: a real PostgreSQL (started in a temporary folder) and SQLite,
the app as a real ``novalign annotate serve`` subprocess, and a logged-in HTTP client."""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx2
import pytest

# real Argon2 hashing, at its cheapest parameters (the default costs ~1 s per login on a busy 2-core box);
# set before novalign.annotate.accounts is imported, and inherited by the served subprocess
os.environ.setdefault("NOVALIGN_ARGON2_PROFILE", "CHEAPEST")

from cli_server import start_server, stop
from novalign.annotate.accounts import create_user, parse_skills
from novalign.annotate.db import make_engine, migrate, session_factory
from novalign.annotate.projects import create_project, import_file
from novalign.annotate.tempdb import TempPostgres, find_bin

PASSWORD = "correct horse battery"
_counter = itertools.count()


def postgres_or_skip() -> TempPostgres:
    """A started temporary PostgreSQL; a skip (with the reason) only where no server binary is installed, and
    never under CI, where a missing server is a failure (the Makefile's test target installs it)."""
    if find_bin("initdb") is None:
        message = "PostgreSQL server binaries not installed (apt-get install postgresql; `make test` does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return TempPostgres().start()


_PG: list[TempPostgres] = []


def shared_postgres() -> TempPostgres:
    """One server for the whole test session (each test gets its own database on it), stopped at exit."""
    if not _PG:
        _PG.append(postgres_or_skip())
        atexit.register(_PG[0].stop)
    return _PG[0]


def fresh_db(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.db'}"
    return shared_postgres().create_database(f"t{os.getpid()}_{next(_counter)}")


@contextmanager
def served(db_url: str) -> Iterator[str]:
    proc, url, _ = start_server(["annotate", "serve", "--db", db_url, "--port", "0"], marker="novalign annotate:")
    try:
        yield url.rstrip("/")
    finally:
        stop(proc)


def seed(db_url: str, tmp_path: Path, tasks: list[dict[str, Any]], project: str = "p", overlap: int = 2,
         lease_seconds: int = 1800, users: dict[str, tuple[str, str]] | None = None) -> None:
    """Users (name -> (role, skills)), one project and its tasks, through the app's own functions."""
    engine = make_engine(db_url)
    migrate(engine)
    with session_factory(engine)() as s:
        for name, (role, skills) in (users or {}).items():
            create_user(s, name, PASSWORD, role, parse_skills(skills))
        s.commit()
        row = create_project(s, project, overlap, "labels.ability", lease_seconds)
        path = tmp_path / f"{project}.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
        import_file(s, row, path)
    engine.dispose()


def task(tid: str, ability: str = "Math", n: int = 3, **extra: Any) -> dict[str, Any]:
    return {"task_id": tid, "prompt": [{"role": "system", "content": "Be exact."},
                                       {"role": "user", "content": f"Question {tid}?"}],
            "labels": {"ability": ability},
            "responses": [{"response_id": f"r{i}", "content": f"Answer {i} to {tid}.", "model": f"m{i}"}
                          for i in range(n)], **extra}


USERS = {"admin": ("admin", "*"), "ann_math": ("annotator", "Math"), "ann_code": ("annotator", "Code"),
         "ann_any": ("annotator", "*"), "ann_mc": ("annotator", "Math, Code"), "rev": ("reviewer", ""),
         **{f"load{i}": ("annotator", "*") for i in range(8)}}
SCRIPT = "<script>window.__pwned = 1</script><b>not bold</b>"
SQLI = "x'; DROP TABLE users; -- \" OR 1=1 --"
_ENVS: dict[str, dict[str, Any]] = {}


def shared_env(kind: str, tmp_root: Path) -> dict[str, Any]:
    """One seeded database and one served app per backend for the whole session (stopped at exit). Projects:
    The app is served by ``novalign annotate serve --workers 2``. 1 ``route`` (m1 Math, c1 Code; k=2), 2 ``lease`` (k=1, 1 s leases), 3 ``load`` (20 tasks, k=2),
    4 ``security`` (s1 with HTML in a response, s2 with SQL metacharacters everywhere; k=1),
    5 ``browser`` (b1, a two-turn prompt with a system message; k=1)."""
    if kind in _ENVS:
        return _ENVS[kind]
    tmp = tmp_root / kind
    tmp.mkdir(parents=True, exist_ok=True)
    db = fresh_db(kind, tmp)
    seed(db, tmp, [task("m1", "Math"), task("c1", "Code")], project="route", overlap=2, users=USERS)
    seed(db, tmp, [task("x1", "Math")], project="lease", overlap=1, lease_seconds=1)
    seed(db, tmp, [task(f"l{i}", "Math", n=2) for i in range(20)], project="load", overlap=2)
    s1 = task("s1", "Code", n=2)
    s1["responses"][0]["content"] = SCRIPT
    s2 = task(SQLI, SQLI, n=2)
    s2["responses"][1]["content"] = SQLI
    s2["labels"]["domain"] = SQLI
    seed(db, tmp, [s1, s2], project="security", overlap=1)
    seed(db, tmp, [browser_task()], project="browser", overlap=1)
    # two worker processes: every app, security and browser test also checks that no state lives in one worker
    proc, url, _ = start_server(["annotate", "serve", "--db", db, "--port", "0", "--workers", "2"],
                                marker="novalign annotate:")
    atexit.register(stop, proc)
    _ENVS[kind] = {"db": db, "base": url.rstrip("/"), "tmp": tmp, "kind": kind, "pid": proc.pid}
    return _ENVS[kind]


def browser_task() -> dict[str, Any]:
    return {"task_id": "b1", "labels": {"ability": "KQA", "language": "en"},
            "prompt": [{"role": "system", "content": "You are a careful geography tutor."},
                       {"role": "user", "content": "What is the capital of Australia?"},
                       {"role": "assistant", "content": "Do you mean the country or a state?"},
                       {"role": "user", "content": "The country, and say why it was chosen."}],
            "responses": [
                {"response_id": "r0", "model": "small-7b",
                 "content": "The capital is Sydney, the largest city, chosen because it is the oldest."},
                {"response_id": "r1", "model": "mid-13b",
                 "content": "Canberra. It was chosen in 1908 as a compromise between Sydney and Melbourne."},
                {"response_id": "r2", "model": "tiny-1b", "content": "Melbourne <b>probably</b>."}]}


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Client:
    """A logged-in user of the app over real HTTP (cookies kept, CSRF token read from the pages)."""

    def __init__(self, base: str, username: str | None = None, password: str = PASSWORD):
        self.http = httpx2.Client(base_url=base, follow_redirects=False, timeout=30)
        self.csrf = ""
        if username:
            self.login(username, password)

    def login(self, username: str, password: str = PASSWORD) -> None:
        page = self.http.get("/login")
        token = CSRF.search(page.text).group(1)
        r = self.http.post("/login", data={"csrf_token": token, "username": username, "password": password})
        assert r.status_code == 303 and r.headers["location"] == "/", (r.status_code, r.headers.get("location"))
        self.csrf = CSRF.search(self.http.get("/").text).group(1)

    def next(self, project_id: int = 1) -> dict[str, Any]:
        r = self.http.post(f"/api/projects/{project_id}/next", headers={"X-CSRF-Token": self.csrf})
        assert r.status_code == 200, r.text
        return r.json()

    def submit(self, assignment_id: int, payload: dict[str, Any]) -> httpx2.Response:
        return self.http.post(f"/api/assignments/{assignment_id}/submit", json=payload,
                              headers={"X-CSRF-Token": self.csrf})

    def form(self, path: str, data: dict[str, Any], files=None) -> httpx2.Response:
        return self.http.post(path, data={"csrf_token": self.csrf, **data}, files=files)

    def close(self) -> None:
        self.http.close()


def full_result(task_json: dict[str, Any], order: list[int], score: int = 4) -> dict[str, Any]:
    """A result that ranks the task's responses by ``order`` (indices, best first) and scores all of them."""
    ids = [r["response_id"] for r in task_json["responses"]]
    return {"ranking": [[ids[i]] for i in order],
            "scores": {rid: {"helpfulness": score, "fluency": 5, "safety": 5} for rid in ids}}
