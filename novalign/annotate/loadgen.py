"""Concurrent annotator clients against a running app (``bench/annotate_load.py`` and the suite's short load
test): each client logs in and loops -- ask for the next task, submit a full result -- until a deadline. Then
the database is read back: every acknowledged submission must be there (``lost``), none twice for one
(task, annotator) and no task above its overlap k (``duplicated``). Loopback only; the loop is bounded."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx2
from sqlalchemy import func, select

from novalign.annotate.db import make_engine
from novalign.annotate.models import Assignment, Project, Submission, User

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _server_time(response: httpx2.Response) -> float:
    """Seconds the app spent on the request, from its ``Server-Timing: app;dur=<ms>`` header."""
    value = response.headers.get("server-timing", "app;dur=nan")
    return float(value.split("dur=", 1)[1]) / 1000


def _client(base: str, user: str, password: str, project_id: int, seconds: float, start: threading.Barrier,
            out: dict[str, Any], think_s: float = 0.0) -> None:
    with httpx2.Client(base_url=base, timeout=60) as http:
        token = _CSRF.search(http.get("/login").text).group(1)
        http.post("/login", data={"csrf_token": token, "username": user, "password": password})
        csrf = _CSRF.search(http.get("/").text).group(1)
        headers = {"X-CSRF-Token": csrf}
        start.wait()  # logins (Argon2 hashing) are not part of the measured loop
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            r = http.post(f"/api/projects/{project_id}/next", headers=headers)
            latency = time.perf_counter() - t0
            if r.status_code != 200:
                out["errors"].append(f"next {r.status_code}")
                continue
            body = r.json()
            out["next_latency"].append(latency)
            out["next_server"].append(_server_time(r))
            if body["assignment_id"] is None:
                out["exhausted"] += 1
                return
            if think_s:  # reading and labelling time, not part of any latency
                time.sleep(think_s)
            ids = [x["response_id"] for x in body["task"]["responses"]]
            result = {"ranking": [ids], "scores": {rid: {"helpfulness": 3, "fluency": 4, "safety": 5} for rid in ids}}
            t0 = time.perf_counter()
            s = http.post(f"/api/assignments/{body['assignment_id']}/submit", json=result, headers=headers)
            out["submit_latency"].append(time.perf_counter() - t0)
            if s.status_code == 200:
                out["acked"].append(s.json()["submission_id"])
            else:
                out["errors"].append(f"submit {s.status_code}: {s.text[:100]}")


def run_load(base: str, db_url: str, users: list[str], password: str, project_id: int, seconds: float,
             think_s: float = 0.0) -> dict[str, Any]:
    shared: dict[str, Any] = {"acked": [], "errors": [], "next_latency": [], "next_server": [], "submit_latency": [],
                              "exhausted": 0}
    barrier = threading.Barrier(len(users) + 1)
    threads = [threading.Thread(target=_client, args=(base, u, password, project_id, seconds, barrier, shared, think_s),
                                daemon=True) for u in users]
    for t in threads:
        t.start()
    barrier.wait(timeout=300)
    start = time.monotonic()
    for t in threads:
        t.join(timeout=seconds + 120)
    elapsed = time.monotonic() - start
    engine = make_engine(db_url)
    with engine.connect() as conn:
        ours = select(User.id).where(User.username.in_(users))
        rows = conn.execute(select(Submission.id, Submission.task_id, Submission.user_id)
                            .join(Assignment, Assignment.id == Submission.assignment_id)
                            .where(Assignment.project_id == project_id, Submission.user_id.in_(ours))).all()
        overlap = conn.scalar(select(Project.overlap).where(Project.id == project_id))
        per_task = conn.execute(select(Submission.task_id, func.count()).join(
            Assignment, Assignment.id == Submission.assignment_id).where(Assignment.project_id == project_id)
            .group_by(Submission.task_id)).all()
    engine.dispose()
    stored = {r.id for r in rows}
    duplicated = (len(rows) - len({(r.task_id, r.user_id) for r in rows})
                  + sum(max(0, n - overlap) for _, n in per_task))
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {"clients": len(users), "seconds": round(elapsed, 1), "submissions": len(shared["acked"]),
            "stored": len(stored), "lost": len(set(shared["acked"]) - stored), "duplicated": duplicated,
            "unacknowledged_stored": len(stored - set(shared["acked"])),
            "next_p50_ms": ms(_percentile(shared["next_latency"], 0.5)),
            "next_p95_ms": ms(_percentile(shared["next_latency"], 0.95)),
            "submit_p95_ms": ms(_percentile(shared["submit_latency"], 0.95)),
            "next_server_p50_ms": ms(_percentile(shared["next_server"], 0.5)),
            "next_server_p95_ms": ms(_percentile(shared["next_server"], 0.95)),
            "errors": len(shared["errors"]), "error_examples": shared["errors"][:3],
            "clients_out_of_tasks": shared["exhausted"]}
