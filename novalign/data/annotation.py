"""The annotation hand-off: tasks sent to human annotators and the results they send back (report 3.2, 3.3).

One JSONL format joins three parts of the flywheel: the preference-data step exports **preference** tasks
(a prompt and its responses, to rank, score and mark), the prompt classifier exports **labels** tasks (its
least confident labels, to correct), and the annotation app (or any tool writing this format) returns one
**result** per annotator per task. Human results then win over machine labels and scores.

A task (``AnnotationTask``)::

    {"task_id": "p17", "kind": "preference",
     "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
     "labels": {"ability": "KQA", "language": "en"},
     "responses": [{"response_id": "r0", "content": "An apple.", "model": "m1", "score": 0.8,
                    "critique": "Correct and short."}],
     "meta": {"source": "prefs run 3"}}

    {"task_id": "q9", "kind": "labels", "prompt": "Translate this into French: ...",
     "labels": {"ability": "IF", "difficulty": "easy"}, "confidence": {"ability": 0.41, "difficulty": 0.9}}

A result (``AnnotationResult``)::

    {"task_id": "p17", "annotator": "ann3", "kind": "preference",
     "ranking": [["r1"], ["r0", "r2"]],                      # best first; a tier holds ties
     "scores": {"r0": {"helpfulness": 4, "fluency": 5, "safety": 5}},
     "spans": [{"response_id": "r0", "start": 3, "end": 8, "kind": "factual", "note": "not a fruit"}],
     "edits": [{"response_id": "r2", "new_response_id": "r2-edit", "content": "A pear."}],
     "submitted_at": "2026-12-07T15:00:00Z"}

``spans`` are character offsets into the response's ``content`` (``start`` inclusive, ``end`` exclusive; spans
may overlap). Scores are integers 1-5 per dimension (``SCORE_DIMENSIONS``); normalization per annotator is
:mod:`novalign.data.scores`' job. A labels result carries ``labels`` (the corrected labels) instead.

:func:`read_tasks` / :func:`read_results` check every line and raise ``DataError`` naming file, line and field
(``skip_invalid`` counts and reports instead); :func:`check_result` checks a result against its task (ids
exist, spans inside the text, a ranking that is a partition of the responses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from novalign.data.io import DataError, SkipReport, read_valid, write_jsonl

SCORE_DIMENSIONS: tuple[str, ...] = ("helpfulness", "fluency", "safety")
"""The absolute scores the report's annotators give each response (section 3.3)."""
SPAN_KINDS: tuple[str, ...] = ("factual", "logical", "other")
TaskKind = Literal["preference", "labels"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class TaskResponse(_Strict):
    response_id: str = Field(min_length=1)
    content: str
    model: str | None = None
    score: float | dict[str, float] | None = None
    """A machine score (reward model, AutoRator) shown to reviewers; never a human target."""
    critique: str | None = None
    """An LLM critique shown beside the response as an aid."""
    meta: dict[str, Any] = Field(default_factory=dict)


class AnnotationTask(_Strict):
    task_id: str = Field(min_length=1)
    kind: TaskKind = "preference"
    prompt: str | list[Message]
    labels: dict[str, str | list[str]] = Field(default_factory=dict)
    confidence: dict[str, float] = Field(default_factory=dict)
    responses: list[TaskResponse] = Field(default_factory=list)
    gold: dict[str, Any] | None = None
    """Known answer of a gold task (e.g. ``{"ranking": [["r0"], ["r1"]]}``), used to measure annotators."""
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "AnnotationTask":
        ids = [r.response_id for r in self.responses]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate response_id in {ids}")
        if self.kind == "preference" and not self.responses:
            raise ValueError("a preference task needs at least one response")
        return self

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a string prompt is one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.prompt]


class Span(_Strict):
    response_id: str
    start: int = Field(ge=0)
    end: int
    kind: Literal["factual", "logical", "other"] = "other"
    note: str = ""

    @model_validator(mode="after")
    def _order(self) -> "Span":
        if self.end <= self.start:
            raise ValueError(f"span end {self.end} must be after start {self.start}")
        return self


class Edit(_Strict):
    response_id: str
    """The response the annotator started from."""
    new_response_id: str = Field(min_length=1)
    content: str = Field(min_length=1)


class AnnotationResult(_Strict):
    task_id: str = Field(min_length=1)
    annotator: str = Field(min_length=1)
    kind: TaskKind = "preference"
    ranking: list[list[str]] | None = None
    scores: dict[str, dict[str, int]] = Field(default_factory=dict)
    spans: list[Span] = Field(default_factory=list)
    edits: list[Edit] = Field(default_factory=list)
    labels: dict[str, str | list[str]] | None = None
    note: str = ""
    submitted_at: str | None = None

    @field_validator("scores")
    @classmethod
    def _score_range(cls, scores: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for rid, dims in scores.items():
            for dim, value in dims.items():
                if dim not in SCORE_DIMENSIONS:
                    raise ValueError(f"{rid}: unknown score dimension {dim!r} (known: {', '.join(SCORE_DIMENSIONS)})")
                if not 1 <= value <= 5:
                    raise ValueError(f"{rid}.{dim}: score {value} is outside 1-5")
        return scores


def _field_of(err: ValidationError) -> tuple[str | None, str]:
    first = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]).replace(".[", "[")
    return (loc or None), first["msg"]


def _convert(schema: type[BaseModel]):
    def convert(record: dict[str, Any], path: str, line: int) -> Any:
        try:
            return schema.model_validate(record)
        except ValidationError as err:
            field, msg = _field_of(err)
            raise DataError(path, line, field, msg, reason=f"invalid {schema.__name__}: {field}") from None
    return convert


def read_tasks(paths: Iterable[str | Path], *, skip_invalid: bool = False
               ) -> tuple[list[AnnotationTask], SkipReport]:
    """Every task of ``paths``; a duplicate ``task_id`` is an error naming both places."""
    seen: dict[str, str] = {}
    parse = _convert(AnnotationTask)

    def convert(record: dict[str, Any], path: str, line: int) -> AnnotationTask:
        task = parse(record, path, line)
        if task.task_id in seen:
            raise DataError(path, line, "task_id", f"duplicate task_id {task.task_id!r} (first at {seen[task.task_id]})",
                            reason="duplicate task_id")
        seen[task.task_id] = f"{path}:{line}"
        return task

    return read_valid(paths, convert, skip_invalid=skip_invalid)


def read_results(paths: Iterable[str | Path], *, skip_invalid: bool = False
                 ) -> tuple[list[AnnotationResult], SkipReport]:
    return read_valid(paths, _convert(AnnotationResult), skip_invalid=skip_invalid)


def write_tasks(path: str | Path, tasks: Iterable[AnnotationTask]) -> int:
    rows = [t.model_dump(exclude_none=True) for t in tasks]
    write_jsonl(path, rows)
    return len(rows)


def write_results(path: str | Path, results: Iterable[AnnotationResult]) -> int:
    rows = [r.model_dump(exclude_none=True) for r in results]
    write_jsonl(path, rows)
    return len(rows)


def check_result(result: AnnotationResult, task: AnnotationTask) -> list[str]:
    """Problems of ``result`` against ``task`` (empty when it fits): unknown response ids, spans outside the
    text, a ranking that leaves out or repeats a response, a result kind that differs from the task's."""
    problems: list[str] = []
    if result.task_id != task.task_id:
        problems.append(f"result is for task {result.task_id!r}, not {task.task_id!r}")
    if result.kind != task.kind:
        problems.append(f"result kind {result.kind!r} differs from task kind {task.kind!r}")
    by_id = {r.response_id: r for r in task.responses}
    if result.ranking is not None:
        flat = [rid for tier in result.ranking for rid in tier]
        if any(not tier for tier in result.ranking):
            problems.append("ranking has an empty tier")
        if sorted(flat) != sorted(by_id):
            problems.append(f"ranking {result.ranking} is not a partition of responses {sorted(by_id)}")
    for rid in result.scores:
        if rid not in by_id and rid not in {e.new_response_id for e in result.edits}:
            problems.append(f"scores name unknown response {rid!r}")
    for i, span in enumerate(result.spans):
        resp = by_id.get(span.response_id)
        if resp is None:
            problems.append(f"spans[{i}] names unknown response {span.response_id!r}")
        elif span.end > len(resp.content):
            problems.append(f"spans[{i}] ends at {span.end}, past the response's {len(resp.content)} characters")
    for i, edit in enumerate(result.edits):
        if edit.response_id not in by_id:
            problems.append(f"edits[{i}] starts from unknown response {edit.response_id!r}")
        if edit.new_response_id in by_id:
            problems.append(f"edits[{i}] reuses existing response id {edit.new_response_id!r}")
    return problems


def ranks_of(ranking: Sequence[Sequence[str]]) -> dict[str, int]:
    """``[["b"], ["a", "c"]]`` -> ``{"b": 1, "a": 2, "c": 2}``: rank 1 is best and a tier shares its rank, the
    convention of the preference reader's groups (equal ranks are ties)."""
    return {rid: i + 1 for i, tier in enumerate(ranking) for rid in tier}
