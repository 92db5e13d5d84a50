"""The annotation web app (report 3.2-3.3): FastAPI, server-rendered Jinja2 pages, a little JavaScript.

Access rules, enforced here and tested in ``tests/test_annotate_security.py``: every page and API except the
login page and static files needs a session (pages redirect to ``/login``, ``/api/`` answers 401); every POST
checks the session's CSRF token; an annotator reaches only assignments they hold (others are a 404, so ids
cannot be probed); admin routes need the admin role, review and QC routes admin or reviewer. Pages are
autoescaped and sent with a Content-Security-Policy that allows no inline script, so response text holding
HTML or ``<script>`` is shown as text.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from sqlalchemy import func, select

from novalign.annotate import accounts, exports, qc
from novalign.annotate.accounts import AccountError, LoggedIn
from novalign.annotate.db import end_read, make_engine, migrate, read_only, session_factory
from novalign.annotate.models import Assignment, Project, Response as ResponseRow, Submission, Task, User
from novalign.annotate.projects import create_project, import_file
from novalign.annotate.routing import (RoutingError, next_assignment, own_assignment, project_settings, review,
                                      submit)
from novalign.data.annotation import SCORE_DIMENSIONS, SPAN_KINDS, AnnotationResult
from novalign.data.io import DataError

HERE = Path(__file__).parent
COOKIE, LOGIN_COOKIE = "nv_session", "nv_login"
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


class NeedLogin(Exception):
    pass


def create_app(db_url: str, run_migrations: bool = True) -> FastAPI:
    """The app on ``db_url``. Everything it keeps between requests is in the database (sessions, CSRF tokens,
    leases), so several worker processes can serve one database; ``app.state.critics`` only caches LLM
    clients, whose answers are stored on the response row."""
    engine = make_engine(db_url)
    if run_migrations:
        migrate(engine)
    app = FastAPI(title="novalign annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.critics = {}
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    d = _Deps(session_factory(engine), Jinja2Templates(directory=str(HERE / "templates")))
    _guards(app)
    for add in (_login_routes, _admin_routes, _task_routes, _review_routes):
        add(app, d)
    return app


class _Deps:
    """The request dependencies every route group shares: a database session, the logged-in user (with the
    CSRF check of POSTs), role checks, and page rendering."""

    def __init__(self, session_factory, templates: Jinja2Templates):
        self.Session, self.templates = session_factory, templates
        self.current = self._make_current()

    async def db(self, request: Request):
        # async on purpose: the teardown (close = rollback, releasing SQLite's write lock) then runs on the event
        # loop and never waits for a worker thread -- threads blocked on that lock would otherwise deadlock it
        s = self.Session()
        s.info["read_only"] = request.method in ("GET", "HEAD")  # pages only read (see db.read_only)
        try:
            yield s
        finally:
            s.close()

    async def form_token(self, request: Request) -> str | None:
        # FastAPI keeps the parsed form on the request, so the handler's Form(...) fields read the same one
        if request.method == "POST" and "form" in request.headers.get("content-type", ""):
            token = (await request.form()).get("csrf_token")
            return token if isinstance(token, str) else None
        return None

    def authenticate(self, request: Request, s, form_csrf: str | None = None, roles: tuple[str, ...] | None = None
                     ) -> LoggedIn:
        """The user of the request's session (:class:`NeedLogin` when there is none), the CSRF token of a POST
        checked (403), and their role when ``roles`` is given (403). Blocking (a database read): the
        :attr:`current` dependency runs it in a worker thread, and the two requests every annotator repeats run
        it in the same worker thread as their own work (see :meth:`in_thread`)."""
        user = accounts.session_of(read_only(s), request.cookies.get(COOKIE))
        if user is None:
            raise NeedLogin()
        expected = user.csrf_token
        if not s.info["read_only"]:
            end_read(s)  # the handler's next statements write
        given = request.headers.get("x-csrf-token") or form_csrf
        if request.method == "POST" and not accounts.csrf_ok(expected, given):
            raise HTTPException(403, "CSRF token missing or wrong")
        request.state.csrf = expected
        if roles is not None:
            _require_role(user, roles)
        return user

    def _make_current(self):
        def current(request: Request, form_csrf: str | None = Depends(self.form_token), s=Depends(self.db)) -> LoggedIn:
            return self.authenticate(request, s, form_csrf)
        return current

    @staticmethod
    async def in_thread(work):
        """``work()`` in a worker thread. The hot API routes are async and call :meth:`authenticate` inside
        ``work``: one thread hop per request, where a sync ``current`` dependency and a sync handler take two --
        each hop is anyio's capacity limiter, cancel scope and thread handoff, a sixth of the app's CPU per
        request under load (py-spy, 50 clients)."""
        return await run_in_threadpool(work)

    def role(self, *roles: str):
        async def check(user: LoggedIn = Depends(self.current)) -> LoggedIn:  # async: no thread hop for a comparison
            return _require_role(user, roles)
        return check

    def page(self, request: Request, name: str, user: LoggedIn | None, **ctx: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, {"user": user, "csrf": getattr(request.state, "csrf", ""),
                                                               **ctx})


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every response, and a W3C ``Server-Timing: app;dur=<ms>``
    header (the time spent in the app, so a load test can tell it from client and network time). Starlette's
    ``BaseHTTPMiddleware`` did the same at the cost of an extra task and stream per request."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - start) * 1000:.1f}".encode()
                message = dict(message, headers=[*message.get("headers", []), (b"server-timing", took),
                                                 *self.HEADERS])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _guards(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, _exc: NeedLogin):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RoutingError)
    async def routing_error(request: Request, exc: RoutingError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)


def _login_routes(app: FastAPI, d: _Deps) -> None:
    # --- login --------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, error: str = ""):
        token = secrets.token_urlsafe(24)
        resp = d.page(request, "login.html", None, login_csrf=token, error=error)
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict")
        return resp

    @app.post("/login")
    def login(request: Request, username: str = Form(...), password: str = Form(...),
              given: str | None = Depends(d.form_token), s=Depends(d.db)):
        expected = request.cookies.get(LOGIN_COOKIE)
        if not expected or not accounts.csrf_ok(expected, given):  # double-submit token: no login CSRF
            raise HTTPException(403, "CSRF token missing or wrong")
        user = accounts.authenticate(s, username, password)
        if user is None:
            return RedirectResponse("/login?error=1", status_code=303)
        token, _ = accounts.open_session(s, user)
        s.commit()
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=accounts.SESSION_DAYS * 86400)
        resp.delete_cookie(LOGIN_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, _user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        accounts.close_session(s, request.cookies.get(COOKIE))
        s.commit()
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp


def _admin_routes(app: FastAPI, d: _Deps) -> None:
    # --- home and admin -----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        projects = list(s.scalars(select(Project).order_by(Project.id)))
        done = dict(s.execute(select(Assignment.project_id, func.count()).where(
            Assignment.user_id == user.id, Assignment.status == "submitted").group_by(Assignment.project_id)).all())
        return d.page(request, "home.html", user, projects=projects, done=done)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, message: str = "", user: LoggedIn = Depends(d.role("admin")), s=Depends(d.db)):
        users = list(s.scalars(select(User).order_by(User.id)))
        projects = list(s.scalars(select(Project).order_by(Project.id)))
        counts = dict(s.execute(select(Task.project_id, func.count()).group_by(Task.project_id)).all())
        return d.page(request, "admin.html", user, users=users, projects=projects, counts=counts, message=message)

    def back(message: str) -> RedirectResponse:
        return RedirectResponse("/admin?" + _query(message=message), status_code=303)

    @app.post("/admin/users")
    def add_user(username: str = Form(...), password: str = Form(...), role_: str = Form(..., alias="role"),
                 skills: str = Form(""), _u: LoggedIn = Depends(d.role("admin")), s=Depends(d.db)):
        try:
            accounts.create_user(s, username, password, role_, accounts.parse_skills(skills))
            s.commit()
        except AccountError as err:
            s.rollback()
            return back(str(err))
        return back(f"user {username} created")

    @app.post("/admin/projects")
    def add_project(name: str = Form(...), overlap: int = Form(1), route_field: str = Form("labels.ability"),
                    lease_seconds: int = Form(1800), critique_llm: str = Form(""),
                    _u: LoggedIn = Depends(d.role("admin")), s=Depends(d.db)):
        try:
            llm = json.loads(critique_llm) if critique_llm.strip() else None
            create_project(s, name, overlap, route_field, lease_seconds, llm)
        except (AccountError, json.JSONDecodeError) as err:
            s.rollback()
            return back(f"project not created: {err}")
        return back(f"project {name} created")

    @app.post("/admin/projects/{pid}/import")
    def import_upload(pid: int, file: UploadFile = File(...), _u: LoggedIn = Depends(d.role("admin")), s=Depends(d.db)):
        project = s.get(Project, pid) or _missing()
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(file.filename or "upload.jsonl").name)[:100] or "upload.jsonl"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(file.file.read())
            try:
                counts = import_file(s, project, path)
            except (DataError, ValueError) as err:
                return back(f"import failed: {str(err).replace(tmp + '/', '')}")
        return back(f"imported {counts['tasks']} tasks and {counts['results']} results into {project.name}")

    @app.get("/projects/{pid}/export/{fmt}")
    def export(pid: int, fmt: str, normalize: str = "minmax", _u: LoggedIn = Depends(d.role("admin")), s=Depends(d.db)):
        s.get(Project, pid) or _missing()
        if fmt not in exports.FORMATS or normalize not in ("minmax", "zscore", "range"):
            raise HTTPException(404, "unknown export format")
        rows, _summary = exports.export(s, pid, fmt, normalize)
        if fmt in ("label-studio", "argilla"):
            body, ext = json.dumps(rows, ensure_ascii=False, indent=1), "json"
        else:
            body, ext = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "jsonl"
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="project{pid}-{fmt}.{ext}"'})


def _task_routes(app: FastAPI, d: _Deps) -> None:
    # --- annotating ---------------------------------------------------------------------------------------
    @app.post("/projects/{pid}/next")
    def next_page(pid: int, user: LoggedIn = Depends(d.role("annotator", "admin")), s=Depends(d.db)):
        project = project_settings(s, pid) or _missing()
        got = next_assignment(s, project, user)
        if got is None:
            return RedirectResponse("/?" + _query(message=f"nothing left for you in {project.name}"), status_code=303)
        return RedirectResponse(f"/assignments/{got[0]}", status_code=303)

    @app.post("/api/projects/{pid}/next")
    async def next_api(request: Request, pid: int, form_csrf: str | None = Depends(d.form_token), s=Depends(d.db)):
        def work():
            user = d.authenticate(request, s, form_csrf, roles=("annotator", "admin"))
            project = project_settings(s, pid) or _missing()
            got = next_assignment(s, project, user, payload=True)
            # JSONResponse, not a returned dict: the payload is JSON already, jsonable_encoder would walk it again
            return JSONResponse({"assignment_id": None} if got is None else {"assignment_id": got[0], "task": got[2]})
        return await d.in_thread(work)

    @app.get("/assignments/{aid}", response_class=HTMLResponse)
    def task_page(request: Request, aid: int, user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        row = own_assignment(s, aid, user)
        project = s.get(Project, row.project_id)
        data = _task_json(row) | {"assignment_id": aid, "status": row.status, "dimensions": list(SCORE_DIMENSIONS),
                                  "span_kinds": list(SPAN_KINDS), "critique_llm": bool(project.critique_llm)}
        return d.page(request, "task.html", user, a=row, task=row.task, data=data, project=project)

    @app.get("/api/assignments")
    def my_assignments(user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        rows = s.execute(select(Assignment.id, Task.external_id, Assignment.status, Assignment.project_id)
                         .join(Task, Task.id == Assignment.task_id).where(Assignment.user_id == user.id)
                         .order_by(Assignment.id)).all()
        return [{"assignment_id": a, "task_id": t, "status": st, "project_id": p} for a, t, st, p in rows]

    @app.get("/api/assignments/{aid}")
    def task_api(aid: int, user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        row = own_assignment(s, aid, user)
        return _task_json(row) | {"assignment_id": aid, "status": row.status}

    @app.post("/api/assignments/{aid}/submit")
    async def submit_api(request: Request, aid: int, s=Depends(d.db)):
        # the body is JSON, so the CSRF token comes in the X-CSRF-Token header (no form field to read); the
        # blocking database calls run in the worker thread, never on the event loop
        body = await request.body()

        def work():
            user = d.authenticate(request, s)  # before the body is looked at: without a session it is a 401
            return JSONResponse({"submission_id": submit(s, aid, user, _json_object(body))})
        return await d.in_thread(work)

    @app.post("/api/responses/{rid}/critique")
    def critique_api(rid: int, user: LoggedIn = Depends(d.current), s=Depends(d.db)):
        resp = s.get(ResponseRow, rid)
        if resp is None:
            raise HTTPException(404, "no such response")
        holds = s.scalar(select(Assignment.id).where(Assignment.task_id == resp.task_id, Assignment.user_id == user.id))
        if holds is None and user.role == "annotator":
            raise HTTPException(404, "no such response")
        if resp.critique:
            return {"critique": resp.critique, "cached": True}
        project = s.get(Project, resp.task.project_id)
        if not project.critique_llm:
            raise HTTPException(409, "this project has no critique LLM configured")
        from novalign.annotate.critique import critique

        resp.critique = critique(app.state.critics, project, resp.task.prompt, resp.content)
        s.commit()
        return {"critique": resp.critique, "cached": False}


def _review_routes(app: FastAPI, d: _Deps) -> None:
    # --- review and QC ------------------------------------------------------------------------------------
    @app.get("/projects/{pid}/review", response_class=HTMLResponse)
    def review_page(request: Request, pid: int, user: LoggedIn = Depends(d.role("reviewer", "admin")), s=Depends(d.db)):
        project = s.get(Project, pid) or _missing()
        subs = list(s.scalars(select(Submission).join(Task).where(Task.project_id == pid).order_by(Submission.id)))
        edits = {r.response_id: r for sub in subs for r in sub.task.responses if r.parent_id is not None}
        return d.page(request, "review.html", user, project=project, subs=subs, edits=edits)

    @app.post("/submissions/{sid}/review")
    def review_post(sid: int, verdict: str = Form(...), note: str = Form(""),
                    user: LoggedIn = Depends(d.role("reviewer", "admin")), s=Depends(d.db)):
        if verdict not in ("accept", "reject"):
            raise HTTPException(400, "verdict: accept or reject")
        sub = review(s, sid, user, verdict == "accept", note)
        return RedirectResponse(f"/projects/{sub.task.project_id}/review", status_code=303)

    @app.get("/projects/{pid}/qc", response_class=HTMLResponse)
    def qc_page(request: Request, pid: int, user: LoggedIn = Depends(d.role("reviewer", "admin")), s=Depends(d.db)):
        project = s.get(Project, pid) or _missing()
        agreement, stats = project_qc(s, pid)
        return d.page(request, "qc.html", user, project=project, agreement=agreement, stats=stats, fmt=qc.fmt)

    @app.get("/api/projects/{pid}/qc")
    def qc_api(pid: int, _u: LoggedIn = Depends(d.role("reviewer", "admin")), s=Depends(d.db)):
        s.get(Project, pid) or _missing()
        agreement, stats = project_qc(s, pid)
        return {"agreement": agreement, "annotators": stats}



def project_qc(s, pid: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = exports.load(s, pid)
    results = [r for rs in data.results.values() for r in rs]
    reviews = {(sub.task.external_id, sub.user.username): sub.review_status
               for sub in s.scalars(select(Submission).join(Task).where(Task.project_id == pid))}
    all_results = [AnnotationResult.model_validate(sub.result)
                   for sub in s.scalars(select(Submission).join(Task).where(Task.project_id == pid))]
    return qc.project_agreement(results), qc.annotator_stats(all_results, {t.task_id: t for t in data.tasks}, reviews)


def _task_json(row: Assignment) -> dict[str, Any]:
    task = row.task
    return {"task_id": task.external_id, "prompt": task.prompt, "labels": task.labels,
            "responses": [{"id": r.id, "response_id": r.response_id, "content": r.content, "model": r.model,
                           "critique": r.critique} for r in task.responses if r.parent_id is None]}


def _require_role(user: LoggedIn, roles: tuple[str, ...]) -> LoggedIn:
    if user.role not in roles:
        raise HTTPException(403, "not allowed for your role")
    return user


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise HTTPException(422, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return payload


def _missing():
    raise HTTPException(404, "not found")


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
