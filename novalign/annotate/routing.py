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

import datetime as dt
import difflib
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DBSession, joinedload

from novalign.annotate.db import is_postgres, read_only
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


def _live(now: dt.datetime):
    return or_(Assignment.status == "submitted", and_(Assignment.status == "leased", Assignment.lease_expires > now))


def _candidates(db: DBSession, project: Project, user: User, now: dt.datetime, limit: int = 20,
                lock: bool = False) -> list[int]:
    """Open tasks of ``project`` this user may take, with a free slot, in task order (so tasks fill up to k --
    and agreement can be measured -- before later ones start). ``Task.done`` keeps the scan to open tasks: the
    live-slot count is a correlated subquery per open task, never a pass over every assignment.

    ``lock`` (PostgreSQL): the returned task rows are locked ``FOR UPDATE SKIP LOCKED`` until the commit, so
    concurrent requests each get tasks nobody else is claiming right now. Without it, 50 annotators asking at
    once all try the first open task's slot, and PostgreSQL makes each insert of the same unique key wait for
    the previous inserter's commit -- a queue that was most of the time to the next task under load."""
    live_n = (select(func.count()).select_from(Assignment).where(Assignment.task_id == Task.id, _live(now))
              .correlate(Task).scalar_subquery())
    mine = select(Assignment.task_id).where(Assignment.user_id == user.id, Assignment.project_id == project.id)
    q = select(Task.id).where(Task.project_id == project.id, Task.done.is_(False), live_n < project.overlap,
                              Task.id.not_in(mine))
    skills = user.skills or []
    if "*" not in skills:
        q = q.where(or_(Task.route_value.is_(None), Task.route_value.in_(skills)))
    q = q.order_by(Task.id).limit(limit)
    if lock:
        q = q.with_for_update(skip_locked=True, of=Task)
    return list(db.scalars(q))


def next_assignment(db: DBSession, project: Project, user: User, now: dt.datetime | None = None
                    ) -> tuple[int, int] | None:
    """``(assignment id, task id)`` of what ``user`` should work on next in ``project`` (committed), or None when
    nothing is left. Column reads and Core statements, not ORM rows: this runs on every "next task" under load."""
    now = now or utcnow()
    held = db.execute(select(Assignment.id, Assignment.task_id).where(
        Assignment.project_id == project.id, Assignment.user_id == user.id, Assignment.status == "leased",
        Assignment.lease_expires > now).limit(1)).first()
    if held is not None:
        db.commit()
        return held.id, held.task_id
    expires = now + dt.timedelta(seconds=project.lease_seconds)
    lock = is_postgres(db)  # (SQLite: the whole transaction holds the one write lock, see db.py)
    if lock:
        # a lease need not survive a database crash (the annotator would be routed a task again), so its commit
        # does not wait for the WAL flush -- ~8 ms per "next task" on this machine's disk; submissions still do
        db.execute(text("SET LOCAL synchronous_commit = off"))
    for _ in range(5):  # another worker may take the same slot between our read and write: then look again
        candidates = _candidates(db, project, user, now, limit=4 if lock else 20, lock=lock)
        if not candidates:
            break
        for task_id in candidates:
            got = _claim(db, project, user, task_id, now, expires)
            if got is not None:
                db.commit()
                return got, task_id
    db.commit()
    return None


def _claim(db: DBSession, project: Project, user: User, task_id: int, now: dt.datetime, expires: dt.datetime
           ) -> int | None:
    """Take an expired lease of ``task_id`` (re-routing) or its next slot; None when another worker won."""
    rows = db.execute(select(Assignment.id, Assignment.slot, Assignment.status, Assignment.lease_expires)
                      .where(Assignment.task_id == task_id).order_by(Assignment.id)).all()
    stale = next((r.id for r in rows if r.status == "leased" and r.lease_expires <= now), None)
    if stale is not None:  # the WHERE repeats the expiry test, so only one of two racing takeovers succeeds
        took = db.execute(update(Assignment).where(Assignment.id == stale, Assignment.status == "leased",
                                                   Assignment.lease_expires <= now)
                          .values(user_id=user.id, leased_at=now, lease_expires=expires))
        return stale if took.rowcount == 1 else None
    used = {r.slot for r in rows if r.slot > 0}
    slot = next((n for n in range(1, project.overlap + 1) if n not in used), None)
    if slot is None:
        return None
    try:
        with db.begin_nested():
            return db.scalar(insert(Assignment).values(
                task_id=task_id, project_id=project.id, slot=slot, user_id=user.id, status="leased", leased_at=now,
                lease_expires=expires).returning(Assignment.id))
    except IntegrityError:  # the slot (or this user on this task) was taken meanwhile
        return None


def task_payload(db: DBSession, task_id: int) -> dict[str, Any]:
    """What an annotator is shown of a task (its original responses, not others' edits), as JSON; one query."""
    rows = db.execute(select(Task.external_id, Task.prompt, Task.labels, Response.id, Response.response_id,
                             Response.content, Response.model, Response.critique)
                      .join(Response, Response.task_id == Task.id)
                      .where(Task.id == task_id, Response.parent_id.is_(None)).order_by(Response.position)).all()
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


def submit(db: DBSession, assignment_id: int, user: User, payload: dict[str, Any]) -> int:
    """Check and store one result; exactly once per assignment (a repeat is a 409).

    The checks read in their own read-only transaction, so on SQLite the write lock is held only for the
    writes; the conditional UPDATE of the assignment repeats the ownership and status test, which is what makes
    the submit exactly-once when another request changed the row in between."""
    if not db.in_transaction():
        read_only(db)
    row = db.scalar(select(Assignment).options(joinedload(Assignment.task).selectinload(Task.responses))
                    .where(Assignment.id == assignment_id))
    if row is None or row.user_id != user.id:
        raise RoutingError(404, "no such task")
    if row.status != "leased":
        raise RoutingError(409, f"this task is already {row.status}")
    task = row.task
    result = _checked_result(row, task, user, payload)
    overlap = db.scalar(select(Project.overlap).where(Project.id == row.project_id))
    db.commit()
    if is_postgres(db):  # lock order task -> assignment, the same as next_assignment's: no deadlock between them
        db.execute(select(Task.id).where(Task.id == task.id).with_for_update())
    done = db.execute(update(Assignment).where(Assignment.id == row.id, Assignment.user_id == user.id,
                                               Assignment.status == "leased").values(status="submitted"))
    if done.rowcount != 1:
        db.rollback()
        raise RoutingError(409, "this task was submitted or re-routed meanwhile")
    sub_id = db.scalar(insert(Submission).values(
        assignment_id=row.id, task_id=task.id, user_id=user.id, result=result.model_dump(exclude_none=True),
        submitted_at=utcnow(), review_status="pending", review_note="").returning(Submission.id))
    store_rows(db, sub_id, result, task, user)
    submitted = db.scalar(select(func.count()).select_from(Assignment)
                          .where(Assignment.task_id == task.id, Assignment.status == "submitted"))
    if submitted >= overlap:  # the task row lock (PostgreSQL) orders two last submits: the second counts both
        db.execute(update(Task).where(Task.id == task.id).values(done=True))
    db.commit()
    return sub_id


def _checked_result(row: Assignment, task: Task, user: User, payload: dict[str, Any]) -> AnnotationResult:
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


def store_rows(db: DBSession, submission_id: int, result: AnnotationResult, task: Task, user: User | None) -> None:
    """The result's scores, spans and edited responses as rows (edits keep their unified diff). Scores and
    spans go in as one multi-row INSERT each (Core, not one ORM object per value)."""
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
        db.execute(insert(Score), scores)
    spans = [{"submission_id": submission_id, "response_id": sp.response_id, "start": sp.start, "end": sp.end,
              "kind": sp.kind, "note": sp.note} for sp in result.spans]
    if spans:
        db.execute(insert(SpanRow), spans)
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
