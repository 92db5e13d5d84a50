"""The annotation app's tables (SQLAlchemy 2 declarative models; the schema itself is made by the Alembic
migrations in ``migrations/versions``, never by ``create_all``, so SQLite and PostgreSQL run the same DDL).

How the tables keep the routing promises (report 3.2: several annotators per task, each task to annotators whose
skills match its labels):

* a task has ``overlap`` slots numbered 1..k; an :class:`Assignment` is one annotator holding one slot.
  ``(task_id, slot)`` is unique (a rejected assignment moves to slot ``-id``), so two annotators never hold the same slot even when two requests race to insert it, and
  ``(task_id, user_id)`` is unique, so nobody annotates one task twice.
* a lease expires at ``lease_expires``; an expired, unsubmitted assignment is taken over by the next annotator
  with a conditional UPDATE (it only succeeds while the row is still expired), which is the re-routing.
* a :class:`Submission` is unique per assignment, so a retried submit can never make a duplicate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "annotator", "reviewer")


def utcnow() -> dt.datetime:
    # naive UTC everywhere: SQLite stores no zone, and mixing aware/naive values fails comparisons
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    """None for an account imported from another tool (it cannot log in)."""
    role: Mapped[str] = mapped_column(String(16))
    skills: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """Taxonomy labels this annotator may take (e.g. ``["Math", "Code"]``); ``"*"`` takes any."""
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the cookie value: a stolen database does not hand out live sessions."""
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    user: Mapped[User] = relationship()


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    """k: how many annotators label each task."""
    route_field: Mapped[str] = mapped_column(String(100), default="labels.ability")
    lease_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    critique_llm: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """An ``LLMConfig`` (as a dict) for the optional critique shown beside responses."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "external_id"), Index("ix_tasks_open", "project_id", "done", "id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    """The hand-off format's ``task_id``."""
    kind: Mapped[str] = mapped_column(String(16), default="preference")
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    """Chat messages (a string prompt is stored as one user turn)."""
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    route_value: Mapped[str | None] = mapped_column(String(100), index=True)
    """The label at the project's ``route_field``, copied out so routing is one indexed comparison."""
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    done: Mapped[bool] = mapped_column(default=False, server_default=false())
    """All k slots submitted (migration 0002): routing skips the task without counting its assignments."""
    responses: Mapped[list["Response"]] = relationship(order_by="Response.position", back_populates="task")


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("task_id", "response_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    response_id: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    machine_score: Mapped[Any] = mapped_column(JSON, nullable=True)
    critique: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("responses.id"), nullable=True)
    """Set for an annotator's edit: the response it was edited from."""
    diff: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    task: Mapped[Task] = relationship(back_populates="responses")


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "slot"), UniqueConstraint("task_id", "user_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    slot: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="leased")
    """leased | submitted | rejected (a rejected slot is reopened as a new one)."""
    leased_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_expires: Mapped[dt.datetime] = mapped_column(DateTime)
    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"), unique=True, nullable=True)
    """None for a result imported from another tool (no lease was involved)."""
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The ``AnnotationResult`` as JSON (the hand-off format, ``novalign.data.annotation``)."""
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    review_status: Mapped[str] = mapped_column(String(16), default="pending")
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="")
    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship(foreign_keys=[user_id])
    scores: Mapped[list["Score"]] = relationship(order_by="Score.id")
    spans: Mapped[list["SpanRow"]] = relationship(order_by="SpanRow.id")


class Score(Base):
    __tablename__ = "scores"
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    response_id: Mapped[str] = mapped_column(String(200))
    dimension: Mapped[str] = mapped_column(String(32))
    value: Mapped[int] = mapped_column(Integer)


class SpanRow(Base):
    __tablename__ = "spans"
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"), index=True)
    response_id: Mapped[str] = mapped_column(String(200))
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
