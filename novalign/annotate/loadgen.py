"""Concurrent annotator clients against a running app (``bench/annotate_load.py`` and the suite's short load
test): each client logs in and loops -- ask for the next task, think, submit a full result -- until a deadline.
Then the database is read back: every acknowledged submission must be there (``lost``), none twice for one
(task, annotator) and no task above its overlap k (``duplicated``). Loopback only; the loop is bounded.

The clients are coroutines on one asyncio loop in one thread (an ``aiohttp.ClientSession`` each, with one
keep-alive connection), not one OS thread per client: on a small machine the load generator shares the cores
with the server, and 50 threads contending for the GIL cost it more CPU and add their own scheduling delay to
every timing. aiohttp, not httpx: 0.18 ms of client CPU per request against 0.7-0.85 ms (measured here, the same
requests), which the server would otherwise lose to its own load generator."""

from __future__ import annotations

import asyncio
import re
import resource
import time
from typing import Any

import aiohttp
from sqlalchemy import func, select

from novalign.annotate.db import make_engine
from novalign.annotate.models import Assignment, Project, Submission, User

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _server_time(response: aiohttp.ClientResponse) -> float:
    """Seconds the app spent on the request, from its ``Server-Timing: app;dur=<ms>`` header."""
    value = response.headers.get("server-timing", "app;dur=nan")
    return float(value.split("dur=", 1)[1].split(",", 1)[0]) / 1000


def _result(task: dict[str, Any]) -> dict[str, Any]:
    ids = [x["response_id"] for x in task["responses"]]
    return {"ranking": [ids], "scores": {rid: {"helpfulness": 3, "fluency": 4, "safety": 5} for rid in ids}}


async def _login(http: aiohttp.ClientSession, user: str, password: str) -> dict[str, str]:
    async with http.get("/login") as r:
        token = _CSRF.search(await r.text()).group(1)
    async with http.post("/login", data={"csrf_token": token, "username": user, "password": password}) as r:
        await r.read()  # a 303 to "/", which the session follows with its new cookie
    async with http.get("/") as r:
        return {"X-CSRF-Token": _CSRF.search(await r.text()).group(1)}


async def _client(base: str, user: str, password: str, project_id: int, seconds: float, start: asyncio.Barrier,
                  out: dict[str, Any], think_s: float) -> None:
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, as one browser tab would use
    jar = aiohttp.CookieJar(unsafe=True)  # "unsafe": keep cookies of an IP-address host (127.0.0.1)
    async with aiohttp.ClientSession(base_url=base, connector=connector, cookie_jar=jar,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        headers = await _login(http, user, password)
        await start.wait()  # logins (Argon2 hashing) are not part of the measured loop
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with http.post(f"/api/projects/{project_id}/next", headers=headers) as r:
                body = await r.json() if r.status == 200 else None
                latency = time.perf_counter() - t0
                if body is None:
                    out["errors"].append(f"next {r.status}")
                    continue
                out["next_latency"].append(latency)
                out["next_server"].append(_server_time(r))
            if body["assignment_id"] is None:
                out["exhausted"] += 1
                return
            if think_s:  # reading and labelling time, not part of any latency
                await asyncio.sleep(think_s)
            t0 = time.perf_counter()
            async with http.post(f"/api/assignments/{body['assignment_id']}/submit", json=_result(body["task"]),
                                 headers=headers) as s:
                answer = await s.json() if s.status == 200 else (await s.text())[:100]
            out["submit_latency"].append(time.perf_counter() - t0)
            if s.status == 200:
                out["acked"].append(answer["submission_id"])
            else:
                out["errors"].append(f"submit {s.status}: {answer}")


def _cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


async def _run(base: str, users: list[str], password: str, project_id: int, seconds: float, think_s: float,
               shared: dict[str, Any], server_cpu) -> dict[str, float]:
    barrier = asyncio.Barrier(len(users) + 1)
    tasks = [asyncio.create_task(_client(base, u, password, project_id, seconds, barrier, shared, think_s))
             for u in users]
    await asyncio.wait_for(barrier.wait(), timeout=300)
    start, cpu0, server0 = time.monotonic(), _cpu_seconds(), server_cpu()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 120)
    return {"elapsed": time.monotonic() - start, "client_cpu": _cpu_seconds() - cpu0,
            "server_cpu": server_cpu() - server0}


def run_load(base: str, db_url: str, users: list[str], password: str, project_id: int, seconds: float,
             think_s: float = 0.0, server_cpu=None) -> dict[str, Any]:
    """Run the clients; ``server_cpu`` (optional) returns the server's CPU seconds so far, to report its CPU per
    submission. The client CPU is this process's (the clients are its only work while they run)."""
    shared: dict[str, Any] = {"acked": [], "errors": [], "next_latency": [], "next_server": [], "submit_latency": [],
                              "exhausted": 0}
    took = asyncio.run(_run(base, users, password, project_id, seconds, think_s, shared,
                            server_cpu or (lambda: float("nan"))))
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
    n = len(shared["acked"])
    per_sub = lambda cpu: round(cpu * 1000 / n, 2) if n and cpu == cpu else None  # noqa: E731
    return {"clients": len(users), "seconds": round(took["elapsed"], 1), "submissions": n,
            "submissions_per_s": round(n / took["elapsed"], 1), "stored": len(stored),
            "lost": len(set(shared["acked"]) - stored), "duplicated": duplicated,
            "unacknowledged_stored": len(stored - set(shared["acked"])),
            "next_p50_ms": ms(_percentile(shared["next_latency"], 0.5)),
            "next_p95_ms": ms(_percentile(shared["next_latency"], 0.95)),
            "next_server_p50_ms": ms(_percentile(shared["next_server"], 0.5)),
            "next_server_p95_ms": ms(_percentile(shared["next_server"], 0.95)),
            "submit_p50_ms": ms(_percentile(shared["submit_latency"], 0.5)),
            "submit_p95_ms": ms(_percentile(shared["submit_latency"], 0.95)),
            "server_cpu_ms_per_submission": per_sub(took["server_cpu"]),
            "client_cpu_ms_per_submission": per_sub(took["client_cpu"]),
            "errors": len(shared["errors"]), "error_examples": shared["errors"][:3],
            "clients_out_of_tasks": shared["exhausted"]}
