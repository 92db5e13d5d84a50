"""Security of the annotation app, on SQLite and PostgreSQL, over real HTTP: nothing without a session, no
reading or writing of another annotator's task (guessed ids), no submitting what is not leased to you, no admin
routes for others, CSRF checked on every POST, HTML in task text shown as text, SQL metacharacters harmless."""

from __future__ import annotations

import json
import re

import httpx2
import pytest
from sqlalchemy import inspect, select

from annotate_kit import SCRIPT, SQLI, Client, full_result, shared_env
from novalign.annotate.app import create_app
from novalign.annotate.db import make_engine, session_factory
from novalign.annotate.models import Response, Task


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory):
    return shared_env(request.param, tmp_path_factory.getbasetemp())


def _routes(tmp_path) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, path parameters filled with 1 (read from the app itself)."""
    app = create_app(f"sqlite:///{tmp_path / 'routes.db'}")
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or []):
            if method in ("GET", "POST"):
                out.append((method, re.sub(r"\{[^}]+\}", lambda m: "rm" if m.group(0) == "{fmt}" else "1", route.path)))
    app.state.engine.dispose()
    return out


def test_every_route_refuses_without_a_session(env, tmp_path):
    routes = _routes(tmp_path)
    assert len(routes) >= 20
    with httpx2.Client(base_url=env["base"], follow_redirects=False) as anon:
        for method, path in routes:
            if path in ("/login",) or path.startswith("/static"):
                continue
            r = anon.request(method, path)
            if path.startswith("/api/"):
                assert r.status_code == 401, (method, path, r.status_code)
            else:
                assert r.status_code == 303 and r.headers["location"] == "/login", (method, path, r.status_code)
    with httpx2.Client(base_url=env["base"], follow_redirects=False, cookies={"nv_session": "forged"}) as forged:
        bad = forged.get("/")
        assert bad.status_code == 303 and bad.headers["location"] == "/login"


def test_annotators_are_fenced_in(env):
    """ann_code holds s1 (Code) of project 4; ann_any, an annotator too, probes assignment ids 1-20 and finds
    only their own; ann_code's task stays unsubmitted. Annotators reach no admin, review or QC route; a
    reviewer no admin route."""
    owner, other, rev = Client(env["base"], "ann_code"), Client(env["base"], "ann_any"), Client(env["base"], "rev")
    held = owner.next(4)
    aid = held["assignment_id"]
    assert held["task"]["task_id"] == "s1"
    own = {a["assignment_id"] for a in other.http.get("/api/assignments").json()}
    for guess in range(1, 21):
        api = other.http.get(f"/api/assignments/{guess}")
        assert api.status_code == (200 if guess in own else 404), guess
    assert aid not in own and other.http.get(f"/assignments/{aid}").status_code == 404
    assert other.submit(aid, full_result(held["task"], [0, 1])).status_code == 404
    assert other.submit(999999, full_result(held["task"], [0, 1])).status_code == 404
    assert owner.http.get(f"/api/assignments/{aid}").json()["status"] == "leased"
    for path in ("/admin", "/projects/4/export/rm", "/projects/4/review", "/projects/4/qc", "/api/projects/4/qc"):
        assert other.http.get(path).status_code == 403, path
    assert other.form("/admin/users", {"username": "evil", "password": "12345678", "role": "admin"}).status_code == 403
    assert other.form("/admin/projects", {"name": "evil"}).status_code == 403
    assert rev.http.post("/api/projects/4/next", headers={"X-CSRF-Token": rev.csrf}).status_code == 403
    assert rev.http.get("/admin").status_code == 403 and rev.http.get("/projects/4/qc").status_code == 200
    # a submit needs the session's own CSRF token in its header and a JSON object as its body; none of these
    # submits anything (the owner's proper submit below is the first to succeed)
    url, result = f"/api/assignments/{aid}/submit", full_result(held["task"], [0, 1])
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other.csrf}):
        assert owner.http.post(url, json=result, headers=headers).status_code == 403, headers
    for body in (b"[1, 2]", b"not json"):
        assert owner.http.post(url, content=body, headers={"X-CSRF-Token": owner.csrf,
                                                           "Content-Type": "application/json"}).status_code == 422
    # submitting twice, or a task that is not (or no longer) leased, is refused
    assert owner.submit(aid, full_result(held["task"], [0, 1])).status_code == 200
    assert owner.submit(aid, full_result(held["task"], [0, 1])).status_code == 409


def test_csrf_is_checked(env):
    admin = Client(env["base"], "admin")
    ann = Client(env["base"], "ann_math")
    other_token = ann.csrf
    # a name no random CSRF token on the page can contain by chance ("u1" once matched one: a flaky test)
    PROBE = "csrf_probe_user"
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other_token}):
        assert admin.http.post("/api/projects/1/next", headers=headers).status_code == 403
    assert admin.http.post("/admin/users", data={"username": PROBE, "password": "12345678", "role": "annotator"}
                           ).status_code == 403
    assert admin.http.post("/admin/users", data={"csrf_token": other_token, "username": PROBE, "password": "12345678",
                                                 "role": "annotator"}).status_code == 403
    assert PROBE not in admin.http.get("/admin").text
    assert admin.http.post("/logout").status_code == 403
    with httpx2.Client(base_url=env["base"]) as fresh:  # login needs the token its own login page set
        r = fresh.post("/login", data={"csrf_token": "guess", "username": "admin", "password": "x"})
        assert r.status_code == 403


def test_html_in_task_text_is_text(env):
    """s1's first response is ``<script>...</script><b>not bold</b>``: the page carries it only escaped (inside
    the JSON data block as \\u003c...), the review page as &lt;...&gt;, and the CSP allows no inline script."""
    admin = Client(env["base"], "admin")
    owner = Client(env["base"], "ann_code")
    rows = [json.loads(x) for x in admin.http.get("/projects/4/export/results").text.splitlines()]
    mine = [a for a in owner.http.get("/api/assignments").json() if a["task_id"] == "s1"]
    aid = mine[0]["assignment_id"] if mine else owner.next(4)["assignment_id"]
    page = owner.http.get(f"/assignments/{aid}")
    assert "<script>window.__pwned" not in page.text and "<b>not bold" not in page.text
    assert "\\u003cscript\\u003ewindow.__pwned" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert rows and SCRIPT not in admin.http.get("/projects/4/review").text


def test_sql_metacharacters_are_data(env):
    """A task id, label, response and note full of quotes, semicolons and comment markers round-trip exactly,
    a login with an injection as username fails, and every table is still there."""
    anyone = Client(env["base"], "ann_any")
    got = anyone.next(4)
    assert got["task"]["task_id"] == SQLI and got["task"]["labels"]["domain"] == SQLI
    result = full_result(got["task"], [1, 0])
    result["spans"] = [{"response_id": "r1", "start": 0, "end": 3, "kind": "other", "note": SQLI}]
    result["note"] = SQLI
    assert anyone.submit(got["assignment_id"], result).status_code == 200
    with httpx2.Client(base_url=env["base"], follow_redirects=False) as fresh:
        token = re.search(r'name="csrf_token" value="([^"]+)"', fresh.get("/login").text).group(1)
        r = fresh.post("/login", data={"csrf_token": token, "username": "admin' OR '1'='1", "password": SQLI})
        assert r.headers["location"] == "/login?error=1"
    rows = [json.loads(x) for x in Client(env["base"], "admin").http.get("/projects/4/export/results").text.splitlines()]
    mine = next(r for r in rows if r["task_id"] == SQLI)
    assert mine["spans"][0]["note"] == SQLI and mine["note"] == SQLI
    engine = make_engine(env["db"])
    assert {"users", "tasks", "submissions", "spans"} <= set(inspect(engine).get_table_names())
    with session_factory(engine)() as s:
        task = s.scalar(select(Task).where(Task.external_id == SQLI))
        assert s.scalar(select(Response.content).where(Response.task_id == task.id, Response.response_id == "r1")) == SQLI
    engine.dispose()
