"""A project's annotations out, in the formats the trainers read (report 2.1 eq. 1 and 3.3).

* ``rm`` -- RM-ready groups ``{"prompt": [messages], "task_id", "labels", "responses": [{"content", "score",
  "model", "response_id"}]}``. ``score`` is the target r-hat: each annotator's 1-5 helpfulness / fluency /
  safety are normalized over that annotator's own scores (``novalign.data.scores``, ``group_by=annotator``,
  minmax by default: a strict annotator's 4 and a lenient one's 5 both become their top), averaged over the
  dimensions, then over the annotators of the response. Train with ``scores.normalize: none`` -- the scores are
  already normalized. Edited responses (human answers) are in the group with their own scores.
* ``trl`` -- TRL's conversational preference pairs ``{"prompt", "chosen", "rejected"}``: every better/worse pair
  of the consensus ranking (mean rank over annotators), and each edit over the response it was edited from.
* ``sft`` -- ``{"messages": prompt + [edited answer]}`` per edit.
* ``results`` -- the hand-off format's results (``novalign.data.annotation``), one per submission.
* ``label-studio`` / ``argilla`` -- see :mod:`novalign.annotate.interop`.

Rejected submissions are left out of every export; so are responses no annotator scored on all three
dimensions (their count is in the export summary, never dropped silently).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from novalign.annotate.interop import argilla_records, label_studio_tasks
from novalign.annotate.models import Response, Submission, Task
from novalign.annotate.routing import annotation_task
from novalign.config import ScoreConfig
from novalign.config.preference import ScoreDimension
from novalign.data.annotation import SCORE_DIMENSIONS, AnnotationResult, AnnotationTask, ranks_of
from novalign.data.preference import expand_ranked
from novalign.data.scores import ScoreObservation, normalize_scores

FORMATS = ("rm", "trl", "sft", "results", "label-studio", "argilla")


@dataclass
class ExportData:
    tasks: list[AnnotationTask]
    results: dict[str, list[AnnotationResult]]
    edited: dict[str, dict[str, Response]] = field(default_factory=dict)
    """task_id -> new_response_id -> the stored edited response."""


def load(db: DBSession, project_id: int) -> ExportData:
    tasks = list(db.scalars(select(Task).where(Task.project_id == project_id).order_by(Task.id)))
    subs = db.scalars(select(Submission).join(Task).where(Task.project_id == project_id,
                                                         Submission.review_status != "rejected")
                      .order_by(Submission.id))
    results: dict[str, list[AnnotationResult]] = defaultdict(list)
    for sub in subs:
        results[sub.task.external_id].append(AnnotationResult.model_validate(sub.result))
    edited = {t.external_id: {r.response_id: r for r in t.responses if r.parent_id is not None} for t in tasks}
    return ExportData([annotation_task(t) for t in tasks], dict(results), edited)


def score_config(normalize: str = "minmax") -> ScoreConfig:
    dims = {d: ScoreDimension(weight=1.0, range=(1, 5)) for d in SCORE_DIMENSIONS}
    return ScoreConfig(dimensions=dims, normalize=normalize, group_by="annotator")


def normalized_targets(results: list[AnnotationResult], normalize: str = "minmax"
                       ) -> tuple[dict[tuple[str, str], float], int]:
    """(task_id, response_id) -> mean over annotators of their normalized r-hat; and the number of scored
    responses left out because a dimension was missing."""
    keys, obs, partial = [], [], 0
    for r in results:
        for rid, dims in r.scores.items():
            if set(dims) != set(SCORE_DIMENSIONS):
                partial += 1
                continue
            keys.append((r.task_id, rid))
            obs.append(ScoreObservation({d: float(v) for d, v in dims.items()}, r.annotator))
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for key, value in zip(keys, normalize_scores(obs, score_config(normalize)) if obs else []):
        per[key].append(value)
    return {k: sum(v) / len(v) for k, v in per.items()}, partial


def consensus_order(task: AnnotationTask, results: list[AnnotationResult]) -> list[float] | None:
    """Mean rank of each response over the annotators who ranked the task (lower is better)."""
    ranked = [ranks_of(r.ranking) for r in results if r.ranking]
    if not ranked:
        return None
    return [sum(rk[x.response_id] for rk in ranked) / len(ranked) for x in task.responses]


def rm_groups(data: ExportData, normalize: str = "minmax") -> tuple[list[dict[str, Any]], dict[str, int]]:
    everything = [r for rs in data.results.values() for r in rs]
    targets, partial = normalized_targets(everything, normalize)
    groups, unscored = [], 0
    for task in data.tasks:
        if task.task_id not in data.results:
            continue
        candidates = [(r.response_id, r.content, r.model) for r in task.responses]
        candidates += [(rid, e.content, e.model) for rid, e in data.edited.get(task.task_id, {}).items()]
        responses = []
        for rid, content, model in candidates:
            if (task.task_id, rid) not in targets:
                unscored += 1
                continue
            responses.append({"response_id": rid, "content": content, "score": round(targets[(task.task_id, rid)], 6),
                              "model": model})
        if len(responses) >= 2:
            groups.append({"task_id": task.task_id, "prompt": task.messages(), "labels": task.labels,
                           "responses": responses})
    return groups, {"groups": len(groups), "unscored_responses": unscored, "partial_scores": partial}


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def trl_pairs(data: ExportData) -> list[dict[str, Any]]:
    out = []
    for task in data.tasks:
        results = data.results.get(task.task_id, [])
        order = consensus_order(task, results)
        if order is not None:
            for better, worse in expand_ranked(order):
                out.append({"prompt": task.messages(), "chosen": _assistant(task.responses[better].content),
                            "rejected": _assistant(task.responses[worse].content), "task_id": task.task_id})
        by_id = {r.response_id: r for r in task.responses}
        for r in results:
            for edit in r.edits:
                out.append({"prompt": task.messages(), "chosen": _assistant(edit.content),
                            "rejected": _assistant(by_id[edit.response_id].content), "task_id": task.task_id})
    return out


def sft_records(data: ExportData) -> list[dict[str, Any]]:
    return [{"messages": task.messages() + _assistant(edit.content),
             "meta": {"task_id": task.task_id, "annotator": r.annotator, "edited_from": edit.response_id}}
            for task in data.tasks for r in data.results.get(task.task_id, []) for edit in r.edits]


def export(db: DBSession, project_id: int, fmt: str, normalize: str = "minmax") -> tuple[Any, dict[str, int]]:
    """The records of ``fmt`` (a list; JSONL for rm/trl/sft/results, one JSON array for the other tools)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    data = load(db, project_id)
    pairs = [(t, data.results.get(t.task_id, [])) for t in data.tasks]
    if fmt == "rm":
        return rm_groups(data, normalize)
    rows = {"trl": lambda: trl_pairs(data), "sft": lambda: sft_records(data),
            "results": lambda: [r.model_dump(exclude_none=True) for _, rs in pairs for r in rs],
            "label-studio": lambda: label_studio_tasks(pairs), "argilla": lambda: argilla_records(pairs)}[fmt]()
    return rows, {"records": len(rows)}
