"""Projects and imports: tasks in the hand-off format become rows; results that come with an import (a Label
Studio export's annotations) become submissions of login-less accounts named after their annotator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session as DBSession

from novalign.annotate.accounts import AccountError, create_user
from novalign.annotate.db import is_postgres
from novalign.annotate.interop import read_task_file, route_value
from novalign.annotate.models import Project, Response, Submission, Task, User
from novalign.annotate.routing import annotation_task, store_rows
from novalign.data.annotation import AnnotationResult, AnnotationTask, check_result
from novalign.data.io import DataError


def create_project(db: DBSession, name: str, overlap: int = 1, route_field: str = "labels.ability",
                   lease_seconds: int = 1800, critique_llm: dict[str, Any] | None = None) -> Project:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise AccountError("project name: 1-200 characters")
    if not 1 <= overlap <= 50:
        raise AccountError(f"overlap {overlap}: must be 1-50")
    if lease_seconds < 1:
        raise AccountError("lease_seconds: at least 1")
    if db.scalar(select(Project).where(Project.name == name)) is not None:
        raise AccountError(f"project {name!r} exists")
    project = Project(name=name, overlap=overlap, route_field=route_field, lease_seconds=lease_seconds,
                      critique_llm=critique_llm)
    db.add(project)
    db.commit()
    return project


def add_tasks(db: DBSession, project: Project, tasks: list[AnnotationTask], source: str) -> int:
    known = set(db.scalars(select(Task.external_id).where(Task.project_id == project.id)))
    for n, task in enumerate(tasks, start=1):
        if task.task_id in known:
            raise DataError(source, None, f"task {n}: task_id", f"task_id {task.task_id!r} is already in project "
                            f"{project.name!r}", reason="duplicate task_id")
        known.add(task.task_id)
        row = Task(project_id=project.id, external_id=task.task_id, kind=task.kind, prompt=task.messages(),
                   labels=task.labels, route_value=route_value(task, project.route_field), gold=task.gold,
                   meta=task.meta)
        row.responses = [Response(response_id=r.response_id, position=i, content=r.content, model=r.model,
                                  machine_score=r.score, critique=r.critique) for i, r in enumerate(task.responses)]
        db.add(row)
    db.flush()
    return len(tasks)


def _external_user(db: DBSession, name: str) -> User:
    user = db.scalar(select(User).where(User.username == name))
    if user is None:
        user = create_user(db, name, None, "annotator")
    return user


def add_results(db: DBSession, project: Project, results: list[AnnotationResult], source: str) -> int:
    tasks = {t.external_id: t for t in db.scalars(select(Task).where(Task.project_id == project.id))}
    for n, result in enumerate(results, start=1):
        task = tasks.get(result.task_id)
        if task is None:
            raise DataError(source, None, f"result {n}: task_id", f"unknown task {result.task_id!r}", reason="unknown task")
        problems = check_result(result, annotation_task(task))
        if problems:
            raise DataError(source, None, f"result {n}", "; ".join(problems), reason="result does not fit its task")
        user = _external_user(db, result.annotator.replace(" ", "_")[:80])
        sub = Submission(task_id=task.id, user_id=user.id, result=result.model_dump(exclude_none=True))
        db.add(sub)
        db.flush()
        store_rows(db, sub.id, result, task, user)
    return len(results)


def import_file(db: DBSession, project: Project, path: str | Path, source: str | None = None) -> dict[str, int]:
    """Import one file (any of the forms of :mod:`novalign.annotate.interop`) into ``project``, all or nothing."""
    try:
        tasks, results = read_task_file(path)
        n_tasks = add_tasks(db, project, tasks, source or str(path))
        n_results = add_results(db, project, results, source or str(path))
        db.commit()
    except Exception:
        db.rollback()
        raise
    if is_postgres(db):
        # fresh statistics now, not at autovacuum's next pass: with the empty-table estimates the routing query
        # sorts every open task before locking four (8.7 ms at 3,000 tasks, growing) instead of walking
        # ix_tasks_open in order (0.12 ms) -- EXPLAIN ANALYZE, PostgreSQL 15
        db.execute(text("ANALYZE tasks, responses, assignments"))
        db.commit()
    return {"tasks": n_tasks, "results": n_results}
