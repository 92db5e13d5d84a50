"""Routing, leases, submissions and reviews (report 3.2: tasks go to annotators whose skills match the prompt's
labels, several annotators per task).

A task has ``project.overlap`` (k) slots numbered 1..k; ``(task_id, slot)`` is unique, so a task can never
have more than k assignments holding a slot, however requests race. A slot is live while its assignment is
submitted, or leased and not expired; a rejected submission gives its slot number up (it moves to ``-id``). :func:`next_assignment` gives an annotator, in this order,
the lease they already hold, an expired lease of someone else on a task they may take (re-routing), or a new
slot. Database constraints, not Python locks, keep the promises across processes (see ``models``), so the app
runs as several workers on PostgreSQL as well.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session as DBSession

from novalign.annotate.db import end_read, is_postgres, read_only
from novalign.annotate.models import Assignment, Project, Response, Score, SpanRow, Submission, Task, User, utcnow
from novalign.data.annotation import AnnotationResult, AnnotationTask, check_result


class RoutingError(Exception):
    """``status`` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def eligible(user: User, route_value: str | None) -> bool:
    """An annotator takes a task when its routing label is one of their skills; ``"*"`` takes any, and a task
    without the label goes to anyone (routing cannot apply to it)."""
    skills = user.skills or []
    return route_value is None or "*" in skills or route_value in skills


# The statements of the two requests every annotator repeats ("next task" and "submit") are built once, here,
# with bind parameters, and run as Core statements on Table columns: SQLAlchemy memoizes a reused statement's
# cache key and finds its compiled SQL in the engine's cache, where building ``select(Model.col).where(...)``
# anew for each request cost ~160 us of Python per statement against ~25 us reused (measured here, SQLAlchemy
# 2.1, SQLite) -- most of the app's CPU per request under load was that, not the database.
_A, _T, _R, _P = Assignment.__table__.c, Task.__table__.c, Response.__table__.c, Project.__table__.c
_LIVE = or_(_A.status == "submitted", and_(_A.status == "leased", _A.lease_expires > bindparam("now")))
_HELD = (select(_A.id, _A.task_id).where(_A.project_id == bindparam("project"), _A.user_id == bindparam("user"),
                                        _A.status == "leased", _A.lease_expires > bindparam("now")).limit(1))
_SLOTS = select(_A.id, _A.slot, _A.status, _A.lease_expires).where(_A.task_id == bindparam("task")).order_by(_A.id)
_TAKE_OVER = (update(Assignment.__table__).where(_A.id == bindparam("stale"), _A.status == "leased",
                                                 _A.lease_expires <= bindparam("now"))
              .values(user_id=bindparam("user"), leased_at=bindparam("now"), lease_expires=bindparam("expires")))
_NEW_SLOT = {name: (dialect_insert(Assignment.__table__).on_conflict_do_nothing()  # a lost race: no row, no error
                    .returning(_A.id)) for name, dialect_insert in (("sqlite", sqlite_insert),
                                                                    ("postgresql", postgresql_insert))}
_PAYLOAD = (select(_T.external_id, _T.prompt, _T.labels, _R.id, _R.response_id, _R.content, _R.model, _R.critique)
            .join(Response.__table__, _R.task_id == _T.id)
            .where(_T.id == bindparam("task"), _R.parent_id.is_(None)).order_by(_R.position))
_NO_WAL_WAIT = text("SET LOCAL synchronous_commit = off")
_PROJECT = select(_P.id, _P.name, _P.overlap, _P.lease_seconds, _P.critique_llm).where(_P.id == bindparam("project"))


def project_settings(db: DBSession, project_id: int):
    """The project's id, name, overlap, lease_seconds and critique_llm as one row (None if there is none)."""
    return db.execute(_PROJECT, {"project": project_id}).first()


@functools.cache
def _candidates_statement(any_skill: bool, lock: bool):
    live_n = (select(func.count()).select_from(Assignment.__table__).where(_A.task_id == _T.id, _LIVE)
              .correlate(Task.__table__).scalar_subquery())
    mine = select(_A.task_id).where(_A.user_id == bindparam("user"), _A.project_id == bindparam("project"))
    q = select(_T.id).where(_T.project_id == bindparam("project"), _T.done.is_(False),
                            live_n < bindparam("overlap"), _T.id.not_in(mine))
    if not any_skill:
        q = q.where(or_(_T.route_value.is_(None), _T.route_value.in_(bindparam("skills", expanding=True))))
    q = q.order_by(_T.id).limit(4 if lock else 20)
    return q.with_for_update(skip_locked=True, of=Task.__table__) if lock else q


def _candidates(db: DBSession, project, user, now: dt.datetime, lock: bool = False) -> list[int]:
    """Open tasks of ``project`` this user may take, with a free slot, in task order (so tasks fill up to k --
    and agreement can be measured -- before later ones start). ``Task.done`` keeps the scan to open tasks: the
    live-slot count is a correlated subquery per open task, never a pass over every assignment.

    ``lock`` (PostgreSQL): the returned task rows are locked ``FOR UPDATE SKIP LOCKED`` until the commit, so
    concurrent requests each get tasks nobody else is claiming right now. Without it, 50 annotators asking at
    once all try the first open task's slot, and PostgreSQL makes each insert of the same unique key wait for
    the previous inserter's commit -- a queue that was most of the time to the next task under load."""
    skills = list(user.skills or [])
    any_skill = "*" in skills
    params = {"project": project.id, "user": user.id, "now": now, "overlap": project.overlap}
    if not any_skill:
        params["skills"] = skills
    return list(db.scalars(_candidates_statement(any_skill, lock), params))


def next_assignment(db: DBSession, project, user, now: dt.datetime | None = None, payload: bool = False
                    ) -> tuple[int, int] | tuple[int, int, dict[str, Any]] | None:
    """``(assignment id, task id)`` of what ``user`` should work on next in ``project`` (committed), or None when
    nothing is left; ``payload``: ``(assignment id, task id, task_payload)``, the payload read in the same
    transaction (one transaction per "next task", not a second one to read the task). ``project`` and ``user``
    may be ORM rows or any rows with their columns (:func:`project_settings`, ``accounts.LoggedIn``)."""
    now = now or utcnow()
    got = _find_or_claim(db, project, user, now)
    if got is not None and payload:
        got = (*got, task_payload(db, got[1]))
    db.commit()
    return got


def _find_or_claim(db: DBSession, project, user, now: dt.datetime) -> tuple[int, int] | None:
    held = db.execute(_HELD, {"project": project.id, "user": user.id, "now": now}).first()
    if held is not None:
        return held.id, held.task_id
    expires = now + dt.timedelta(seconds=project.lease_seconds)
    lock = is_postgres(db)  # (SQLite: the whole transaction holds the one write lock, see db.py)
    if lock:
        # a lease need not survive a database crash (the annotator would be routed a task again), so its commit
        # does not wait for the WAL flush -- ~8 ms per "next task" on this machine's disk; submissions still do
        db.execute(_NO_WAL_WAIT)
    for _ in range(5):  # another worker may take the same slot between our read and write: then look again
        candidates = _candidates(db, project, user, now, lock=lock)
        if not candidates:
            break
        for task_id in candidates:
            got = _claim(db, project, user, task_id, now, expires)
            if got is not None:
                return got, task_id
    return None


def _claim(db: DBSession, project, user, task_id: int, now: dt.datetime, expires: dt.datetime) -> int | None:
    """Take an expired lease of ``task_id`` (re-routing) or its next slot; None when another worker won."""
    rows = db.execute(_SLOTS, {"task": task_id}).all()
    stale = next((r.id for r in rows if r.status == "leased" and r.lease_expires <= now), None)
    if stale is not None:  # the WHERE repeats the expiry test, so only one of two racing takeovers succeeds
        took = db.execute(_TAKE_OVER, {"stale": stale, "now": now, "user": user.id, "expires": expires})
        return stale if took.rowcount == 1 else None
    used = {r.slot for r in rows if r.slot > 0}
    slot = next((n for n in range(1, project.overlap + 1) if n not in used), None)
    if slot is None:
        return None
    # ON CONFLICT DO NOTHING: when the slot (or this user on this task) was taken meanwhile, the insert makes no
    # row and returns none -- no savepoint around it and no IntegrityError to catch
    return db.scalar(_NEW_SLOT[db.get_bind().dialect.name], {
        "task_id": task_id, "project_id": project.id, "slot": slot, "user_id": user.id, "status": "leased",
        "leased_at": now, "lease_expires": expires})


def task_payload(db: DBSession, task_id: int) -> dict[str, Any]:
    """What an annotator is shown of a task (its original responses, not others' edits), as JSON; one query."""
    rows = db.execute(_PAYLOAD, {"task": task_id}).all()
    if not rows:
        raise RoutingError(404, "no such task")
    first = rows[0]
    return {"task_id": first.external_id, "prompt": first.prompt, "labels": first.labels,
            "responses": [{"id": r.id, "response_id": r.response_id, "content": r.content, "model": r.model,
                           "critique": r.critique} for r in rows]}


def annotation_task(task: Task) -> AnnotationTask:
    """The task in the hand-off format, with its original responses (not annotators' edits)."""
    return AnnotationTask(
        task_id=task.external_id, kind=task.kind, prompt=task.prompt, labels=task.labels, gold=task.gold,
        meta=task.meta,
        responses=[{"response_id": r.response_id, "content": r.content, "model": r.model, "score": r.machine_score,
                    "critique": r.critique} for r in task.responses if r.parent_id is None])


def own_assignment(db: DBSession, assignment_id: int, user: User) -> Assignment:
    """The assignment if ``user`` holds it; 404 otherwise, so guessed ids reveal nothing."""
    row = db.get(Assignment, assignment_id)
    if row is None or row.user_id != user.id:
        raise RoutingError(404, "no such task")
    return row


def _edited_id(response_id: str, assignment_id: int) -> str:
    return f"{response_id}-edit{assignment_id}"


_SUBMITTING = (select(_A.id, _A.user_id, _A.status, _A.task_id, _T.external_id, _T.kind, _T.prompt, _T.labels,
                      _T.gold, _T.meta, _P.overlap)
               .join(Task.__table__, _T.id == _A.task_id).join(Project.__table__, _P.id == _A.project_id)
               .where(_A.id == bindparam("assignment")))
_RESPONSES = (select(_R.id, _R.response_id, _R.position, _R.content, _R.model, _R.machine_score, _R.critique,
                     _R.parent_id).where(_R.task_id == bindparam("task")).order_by(_R.position))
_LOCK_TASK = select(_T.id).where(_T.id == bindparam("task")).with_for_update()
_MARK_SUBMITTED = (update(Assignment.__table__).where(_A.id == bindparam("assignment"), _A.user_id == bindparam("user"),
                                                      _A.status == "leased").values(status="submitted"))
_NEW_SUBMISSION = insert(Submission.__table__).returning(Submission.__table__.c.id)
_SUBMITTED_N = (select(func.count()).select_from(Assignment.__table__)
                .where(_A.task_id == bindparam("task"), _A.status == "submitted").scalar_subquery())
_MARK_DONE = (update(Task.__table__).where(_T.id == bindparam("task"), _SUBMITTED_N >= bindparam("overlap"))
              .values(done=True))


@dataclasses.dataclass
class TaskView:
    """The columns of a task and its responses (all of them, edits too) that checking and storing a submission
    read: what :func:`annotation_task` and :func:`store_rows` need of an ORM ``Task``, from two Core reads."""

    id: int
    external_id: str
    kind: str
    prompt: Any
    labels: dict[str, Any]
    gold: dict[str, Any] | None
    meta: dict[str, Any]
    responses: list[Any]


def submit(db: DBSession, assignment_id: int, user, payload: dict[str, Any]) -> int:
    """Check and store one result; exactly once per assignment (a repeat is a 409).

    The checks read in their own read-only transaction on SQLite, so the write lock is held only for the
    writes (PostgreSQL: one transaction, see ``db.end_read``); the conditional UPDATE of the assignment repeats
    the ownership and status test, which is what makes the submit exactly-once when another request changed
    the row in between."""
    if not db.in_transaction():
        read_only(db)
    row = db.execute(_SUBMITTING, {"assignment": assignment_id}).first()
    if row is None or row.user_id != user.id:
        raise RoutingError(404, "no such task")
    if row.status != "leased":
        raise RoutingError(409, f"this task is already {row.status}")
    task = TaskView(row.task_id, row.external_id, row.kind, row.prompt, row.labels, row.gold, row.meta,
                    db.execute(_RESPONSES, {"task": row.task_id}).all())
    result = _checked_result(row, task, user, payload)
    end_read(db)
    if is_postgres(db):  # lock order task -> assignment, the same as next_assignment's: no deadlock between them
        db.execute(_LOCK_TASK, {"task": task.id})
    done = db.execute(_MARK_SUBMITTED, {"assignment": row.id, "user": user.id})
    if done.rowcount != 1:
        db.rollback()
        raise RoutingError(409, "this task was submitted or re-routed meanwhile")
    sub_id = db.scalar(_NEW_SUBMISSION, {
        "assignment_id": row.id, "task_id": task.id, "user_id": user.id, "result": result.model_dump(exclude_none=True),
        "submitted_at": utcnow(), "review_status": "pending", "review_note": ""})
    store_rows(db, sub_id, result, task, user)
    # one statement: the task is done once k of its slots are submitted. The task row lock (PostgreSQL) orders
    # two last submits, so the second one's count sees both
    db.execute(_MARK_DONE, {"task": task.id, "overlap": row.overlap})
    db.commit()
    return sub_id


def _checked_result(row, task, user, payload: dict[str, Any]) -> AnnotationResult:
    """``payload`` as an :class:`AnnotationResult` of this assignment, checked against its task (422 if not)."""
    # the server names edited responses, so two annotators' edits of one response never collide
    renames = {e.get("new_response_id"): _edited_id(str(e.get("response_id")), row.id)
               for e in payload.get("edits") or [] if isinstance(e, dict)}
    body = dict(payload, task_id=task.external_id, annotator=user.username, kind=task.kind,
                submitted_at=utcnow().isoformat() + "Z")
    body["edits"] = [dict(e, new_response_id=renames.get(e.get("new_response_id"))) if isinstance(e, dict) else e
                     for e in payload.get("edits") or []]
    if isinstance(body.get("scores"), dict):
        body["scores"] = {renames.get(k, k): v for k, v in body["scores"].items()}
    try:
        result = AnnotationResult.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        raise RoutingError(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    problems = check_result(result, annotation_task(task))
    if problems:
        raise RoutingError(422, "; ".join(problems))
    return result


_NEW_SCORES, _NEW_SPANS = insert(Score.__table__), insert(SpanRow.__table__)


def store_rows(db: DBSession, submission_id: int, result: AnnotationResult, task, user) -> None:
    """The result's scores, spans and edited responses as rows (edits keep their unified diff). Scores and
    spans go in as one multi-row INSERT each (Core, not one ORM object per value). ``task``: an ORM ``Task``
    or a :class:`TaskView`; ``user``: an ORM ``User``, an ``accounts.LoggedIn`` or None."""
    by_id = {r.response_id: r for r in task.responses}
    position = max((r.position for r in task.responses), default=-1) + 1
    for i, edit in enumerate(result.edits):
        parent = by_id[edit.response_id]
        diff = "".join(difflib.unified_diff(parent.content.splitlines(keepends=True),
                                            edit.content.splitlines(keepends=True),
                                            fromfile=edit.response_id, tofile=edit.new_response_id))
        db.add(Response(task_id=task.id, response_id=edit.new_response_id, position=position + i, content=edit.content,
                        model=f"human:{user.username}" if user else "human", parent_id=parent.id, diff=diff,
                        created_by=user.id if user else None))
    scores = [{"submission_id": submission_id, "response_id": rid, "dimension": dim, "value": value}
              for rid, dims in result.scores.items() for dim, value in dims.items()]
    if scores:
        db.execute(_NEW_SCORES, scores)
    spans = [{"submission_id": submission_id, "response_id": sp.response_id, "start": sp.start, "end": sp.end,
              "kind": sp.kind, "note": sp.note} for sp in result.spans]
    if spans:
        db.execute(_NEW_SPANS, spans)
    if result.edits:
        db.flush()


def review(db: DBSession, submission_id: int, reviewer: User, accept: bool, note: str = "") -> Submission:
    """Accept or reject a submission; a rejection frees its slot for another annotator."""
    sub = db.get(Submission, submission_id)
    if sub is None:
        raise RoutingError(404, "no such submission")
    sub.review_status = "accepted" if accept else "rejected"
    sub.reviewer_id = reviewer.id
    sub.review_note = note
    if not accept and sub.assignment_id is not None:
        # the slot number goes negative (unique, out of 1..k): the slot is free again and the annotator, whose row
        # stays, is not routed the same task twice
        db.execute(update(Assignment).where(Assignment.id == sub.assignment_id)
                   .values(status="rejected", slot=-sub.assignment_id))
        db.execute(update(Task).where(Task.id == sub.task_id).values(done=False))
    db.commit()
    return sub
