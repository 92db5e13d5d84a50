"""The annotation hand-off of the preference chain (report section 3.3), in the format of
:mod:`novalign.data.annotation`.

Export: every group left after the AutoRators and drop rules becomes a **preference** task -- its responses
(ids ``r0, r1, ...``) with their model, machine score and critique shown as aids. Annotators "rate their
preferred order" (``ranking``), give "the absolute feeling score about the helpfulness, writing fluency and
safety" (``scores``, 1-5 each) and "highlight the erroneous part and add a note" (``spans``).

Import (:func:`import_annotations`): each result is checked against its task (file and line named on a
problem); the absolute scores are normalized **per annotator** and per dimension (:mod:`novalign.data.scores`,
``minmax`` by default: an annotator who never gives below 3 still spans [0, 1]), averaged over dimensions
(weights) and then over the annotators of a response -- the normalized absolute score r-hat of equation 1.
A response's rank is the dense rank of its mean rank over the annotators who ranked it; an annotator's edit
is a new response ranked just above the one it started from (an edit improves on its source). Out come RM-ready
groups ``{prompt, labels, responses: [{content, score, model, rank}]}`` and TRL pairs
(:func:`novalign.flywheel.responses.trl_pairs`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from novalign.data.annotation import SCORE_DIMENSIONS, AnnotationResult, AnnotationTask, check_result, ranks_of
from novalign.data.io import DataError
from novalign.flywheel.responses import messages_of, trl_pairs

__all__ = ["group_to_task", "read_results_located", "ImportStats", "import_annotations"]


def _labels(record: dict) -> dict[str, str | list[str]]:
    labels = record.get("labels") or {}
    return {k: v for k, v in labels.items()
            if isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))}


def group_to_task(record: dict, *, score_field: str = "score") -> AnnotationTask:
    """The preference task of a group record (its ``_id`` is the task id)."""
    prompt = record["prompt"] if isinstance(record["prompt"], str) else messages_of(record["prompt"])
    responses = []
    for i, r in enumerate(record["responses"]):
        meta = {k: r[k] for k in ("params", "sample", "rater", "cluster", "source_response") if k in r}
        responses.append({"response_id": f"r{i}", "content": r["content"], "model": r.get("model"),
                          "score": r.get(score_field), "critique": r.get("critique"), "meta": meta})
    meta = {k: record[k] for k in ("rater", "all_low") if k in record}
    return AnnotationTask(task_id=str(record["_id"]), kind="preference", prompt=prompt, labels=_labels(record),
                          responses=responses, meta=meta)


def read_results_located(path: str | Path) -> list[tuple[int, AnnotationResult]]:
    """Every result of a JSONL file with its line number (format errors name file, line and field)."""
    from novalign.data.annotation import _convert
    from novalign.data.io import iter_records

    convert = _convert(AnnotationResult)
    return [(line, convert(record, str(path), line)) for line, record in iter_records(Path(path))]


@dataclass
class ImportStats:
    tasks: int = 0
    results: int = 0
    annotators: int = 0
    groups: int = 0
    pairs: int = 0
    responses_without_score: int = 0  # taken out of their group: the MSE term needs every score
    tasks_without_results: int = 0
    groups_too_small: int = 0  # fewer than two scored responses left
    edits: int = 0
    spans: int = 0
    by_annotator: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _observations(located: Sequence[tuple[str, int, AnnotationResult]], weights: dict[str, float], normalize: str):
    """(task id, response id, annotator) -> r-hat, per-annotator normalized (``novalign.data.scores``)."""
    from novalign.config import ScoreConfig
    from novalign.config.preference import ScoreDimension
    from novalign.data.scores import ScoreObservation, normalize_scores

    cfg = ScoreConfig(dimensions={d: ScoreDimension(weight=w, range=(1, 5)) for d, w in weights.items()},
                      normalize=normalize, group_by="annotator")
    keys, obs = [], []
    for path, line, res in located:
        for rid, dims in res.scores.items():
            missing = [d for d in weights if d not in dims]
            if missing:
                raise DataError(path, line, f"scores.{rid}.{missing[0]}", "missing score dimension (each scored "
                                f"response needs {', '.join(weights)})", reason="missing score dimension")
            keys.append((res.task_id, rid, res.annotator))
            obs.append(ScoreObservation({d: float(dims[d]) for d in weights}, res.annotator))
    return dict(zip(keys, normalize_scores(obs, cfg))) if obs else {}


def _dense(values: dict[str, float]) -> dict[str, int]:
    order = sorted(set(values.values()))
    return {k: order.index(v) + 1 for k, v in values.items()}


def import_annotations(tasks: Sequence[AnnotationTask], results: Iterable[tuple[str, int, AnnotationResult]], *,
                       weights: dict[str, float] | None = None, normalize: str = "minmax",
                       max_pairs: int | None = None) -> tuple[list[dict], list[dict], ImportStats]:
    """RM-ready groups and TRL pairs from tasks and finished annotations (see the module docstring).

    ``results``: ``(path, line, result)`` so a problem names where it is.

    Raises:
        DataError: a result for an unknown task, or one that does not fit its task (``check_result``).
    """
    weights = weights or {d: 1.0 for d in SCORE_DIMENSIONS}
    by_id = {t.task_id: t for t in tasks}
    located = list(results)
    stats = ImportStats(tasks=len(tasks), results=len(located))
    per_task: dict[str, list[AnnotationResult]] = defaultdict(list)
    seen: dict[tuple[str, str], str] = {}
    for path, line, res in located:
        where = seen.setdefault((res.task_id, res.annotator), f"{path}:{line}")
        if where != f"{path}:{line}":  # twice the same annotator would count twice in every mean
            raise DataError(path, line, "annotator", f"{res.annotator!r} already annotated task {res.task_id!r} "
                            f"(at {where})", reason="duplicate result")
        task = by_id.get(res.task_id)
        if task is None:
            raise DataError(path, line, "task_id", f"no task {res.task_id!r} among the exported tasks", reason="unknown task")
        problems = check_result(res, task)
        if problems:
            raise DataError(path, line, None, "; ".join(problems), reason="result does not fit its task")
        per_task[res.task_id].append(res)
        stats.by_annotator[res.annotator] = stats.by_annotator.get(res.annotator, 0) + 1
    stats.annotators = len(stats.by_annotator)
    targets = _observations(located, weights, normalize)
    groups, pairs = [], []
    for task in tasks:
        done = per_task.get(task.task_id)
        if not done:
            stats.tasks_without_results += 1
            continue
        group = _group(task, done, targets, stats)
        if group is None:
            stats.groups_too_small += 1
            continue
        groups.append(group)
        pairs.extend(trl_pairs(group, max_pairs=max_pairs))
    stats.groups, stats.pairs = len(groups), len(pairs)
    return groups, pairs, stats


def _group(task: AnnotationTask, done: list[AnnotationResult], targets: dict, stats: ImportStats) -> dict | None:
    contents = {r.response_id: (r.content, r.model) for r in task.responses}
    ranks: dict[str, list[float]] = defaultdict(list)
    spans: dict[str, list[dict]] = defaultdict(list)
    for res in done:
        for e in res.edits:
            contents[e.new_response_id] = (e.content, "human-edit")
            stats.edits += 1
        if res.ranking is not None:
            given = ranks_of(res.ranking)
            for rid, rank in given.items():
                ranks[rid].append(float(rank))
            for e in res.edits:  # an edit sits just above the response it started from
                ranks[e.new_response_id].append(given[e.response_id] - 0.5)
        for s in res.spans:
            spans[s.response_id].append(s.model_dump() | {"annotator": res.annotator})
            stats.spans += 1
    responses = []
    for rid, (content, model) in contents.items():
        scored = [targets[(task.task_id, rid, res.annotator)] for res in done if (task.task_id, rid, res.annotator) in targets]
        if not scored:
            stats.responses_without_score += 1
            continue
        item = {"content": content, "score": sum(scored) / len(scored), "model": model, "annotators": len(scored),
                "response_id": rid}
        if spans.get(rid):
            item["spans"] = spans[rid]
        responses.append(item)
    if len(responses) < 2:
        return None
    if all(ranks.get(r["response_id"]) for r in responses):
        dense = _dense({r["response_id"]: sum(ranks[r["response_id"]]) / len(ranks[r["response_id"]]) for r in responses})
        for r in responses:
            r["rank"] = dense[r["response_id"]]
    return {"prompt": task.messages(), "labels": dict(task.labels), "task_id": task.task_id, "responses": responses}
