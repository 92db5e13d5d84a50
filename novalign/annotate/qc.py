"""Quality control of annotations: agreement, per-annotator statistics, gold tasks (report 3.2: several
annotators per task are how the report checks human labels).

* Krippendorff's alpha per score dimension and for rank positions (``krippendorff`` package, ordinal level):
  units are (task, response), coders are annotators; alpha is None when fewer than two annotators overlap.
* Kendall's tau-b between two annotators' rankings of one task (``scipy.stats.kendalltau``; ties allowed),
  averaged over every annotator pair of every task; a pair where either side ranks everything equal has no tau.
* Gold tasks: a task's ``gold = {"ranking": [[...], ...], "scores": {rid: {dim: v}}}``; an annotator's gold tau is
  their mean tau against the gold ranking, their gold MAE the mean absolute score error.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any, Sequence

import krippendorff
import numpy as np
from scipy.stats import kendalltau

from novalign.data.annotation import SCORE_DIMENSIONS, AnnotationResult, AnnotationTask, ranks_of


def ranking_tau(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> float | None:
    """Kendall's tau-b of two rankings (tiers, best first) over the responses both rank."""
    ra, rb = ranks_of(a), ranks_of(b)
    common = sorted(set(ra) & set(rb))
    if len(common) < 2:
        return None
    x, y = [ra[c] for c in common], [rb[c] for c in common]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(kendalltau(x, y).statistic)


def reliability_matrix(results: Sequence[AnnotationResult], value_of) -> tuple[list[str], np.ndarray]:
    """Annotators x units matrix of ``value_of(result) -> {unit: value}`` (NaN where missing)."""
    coders = sorted({r.annotator for r in results})
    cells: dict[tuple[str, str], float] = {}
    for r in results:
        for unit, value in value_of(r).items():
            cells[(r.annotator, f"{r.task_id}\x1f{unit}")] = float(value)
    units = sorted({u for _, u in cells})
    data = np.full((len(coders), len(units)), np.nan)
    for (coder, unit), value in cells.items():
        data[coders.index(coder), units.index(unit)] = value
    return units, data


def alpha(results: Sequence[AnnotationResult], value_of, level: str = "ordinal") -> float | None:
    units, data = reliability_matrix(results, value_of)
    # a unit counts only when two coders rated it; alpha is undefined without such units or with one value
    paired = data[:, (~np.isnan(data)).sum(axis=0) >= 2] if units else data
    if paired.size == 0 or paired.shape[1] == 0 or len(np.unique(paired[~np.isnan(paired)])) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=paired, level_of_measurement=level))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def project_agreement(results: Sequence[AnnotationResult]) -> dict[str, Any]:
    """Alpha per dimension and for ranks, and the mean pairwise Kendall tau of rankings."""
    out: dict[str, Any] = {}
    for dim in SCORE_DIMENSIONS:
        out[f"alpha_{dim}"] = alpha(results, lambda r, d=dim: {rid: s[d] for rid, s in r.scores.items() if d in s})
    out["alpha_rank"] = alpha(results, lambda r: ranks_of(r.ranking or []))
    by_task: dict[str, list[AnnotationResult]] = defaultdict(list)
    for r in results:
        if r.ranking:
            by_task[r.task_id].append(r)
    taus = [t for rs in by_task.values() for a, b in itertools.combinations(rs, 2)
            if (t := ranking_tau(a.ranking, b.ranking)) is not None]
    out["kendall_tau"] = _mean(taus)
    out["tau_pairs"] = len(taus)
    return out


def annotator_stats(results: Sequence[AnnotationResult], tasks: dict[str, AnnotationTask],
                    reviews: dict[tuple[str, str], str] | None = None) -> dict[str, dict[str, Any]]:
    """Per annotator: submissions, review outcomes, mean score per dimension, mean tau against the other
    annotators of the same tasks, and the gold tau / gold MAE on gold tasks."""
    reviews = reviews or {}
    by_task: dict[str, list[AnnotationResult]] = defaultdict(list)
    for r in results:
        by_task[r.task_id].append(r)
    stats: dict[str, dict[str, Any]] = {}
    for name in sorted({r.annotator for r in results}):
        mine = [r for r in results if r.annotator == name]
        row: dict[str, Any] = {"submissions": len(mine)}
        for status in ("accepted", "rejected", "pending"):
            row[status] = sum(reviews.get((r.task_id, name), "pending") == status for r in mine)
        for dim in SCORE_DIMENSIONS:
            row[f"mean_{dim}"] = _mean([s[dim] for r in mine for s in r.scores.values() if dim in s])
        peer = [t for r in mine if r.ranking for o in by_task[r.task_id] if o.annotator != name and o.ranking
                if (t := ranking_tau(r.ranking, o.ranking)) is not None]
        row["tau_vs_others"] = _mean(peer)
        gold_tau, gold_err = [], []
        for r in mine:
            gold = (tasks.get(r.task_id).gold if r.task_id in tasks else None) or {}
            if gold.get("ranking") and r.ranking and (t := ranking_tau(r.ranking, gold["ranking"])) is not None:
                gold_tau.append(t)
            for rid, dims in (gold.get("scores") or {}).items():
                gold_err.extend(abs(r.scores[rid][d] - v) for d, v in dims.items() if d in r.scores.get(rid, {}))
        row["gold_tasks"] = sum(1 for r in mine if (tasks.get(r.task_id) and tasks[r.task_id].gold))
        row["gold_tau"] = _mean(gold_tau)
        row["gold_mae"] = _mean(gold_err)
        stats[name] = row
    return stats


def fmt(value: Any) -> str:
    """Table cell text: 3 decimals for floats, a dash for undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
