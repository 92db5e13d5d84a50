"""Voted prompt labels (report section 3.1.1: "refined through methods such as voting and manual verification
of low-confidence samples"): aggregation of k labelers' votes per dimension, a confidence per label, the
review queue of the least confident records, and human corrections that win over the votes.

A record's votes (written by the ``llm_label`` step)::

    "label_votes": [{"labeler": "m1/0", "labels": {"ability": "Math", "domain": "finance", ...}, "error": null},
                    {"labeler": "m2/0", "labels": null, "error": "parse: the reply contains no valid JSON value"}]

A failed vote (``labels`` null) or a value that is no leaf of the taxonomy (recorded as null) is missing
for that dimension: it is counted, never guessed. A dimension with no valid vote gets label ``None``.

The aggregation rules are plain functions over a vote matrix ``V`` (items x labelers, class indices, -1 for
missing):

* :func:`majority_vote` -- the most frequent class; confidence = its share of the valid votes; a tie goes to
  the class first in taxonomy order (so the result is deterministic) at the tied share;
* :func:`dawid_skene` -- Dawid & Skene (1979), "Maximum likelihood estimation of observer error-rates using
  the EM algorithm": each labeler ``w`` has a confusion matrix ``pi[w, true, said]``; EM alternates the
  class priors and confusions (M-step, from soft counts) with the posterior of each item's true class
  (E-step: ``p(k | votes) ~ prior_k * prod_w pi[w, k, v_w]``), starting from the majority-vote shares (as
  crowd-kit's ``DawidSkene`` does). Confidence = the posterior of the chosen class. ``smoothing`` adds a
  pseudo-count to every confusion cell, so a labeler never seen saying a class is not certain never to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from novalign.data.annotation import AnnotationResult, AnnotationTask
from novalign.data.io import DataError
from novalign.flywheel.taxonomy import Taxonomy
from novalign.data.fields import get_path  # noqa: F401 - re-exported: steps import it from here

__all__ = ["vote_matrix", "majority_vote", "dawid_skene", "DawidSkeneResult", "aggregate_records",
           "review_queue", "review_tasks", "apply_corrections", "get_path", "record_confidence",
           "parse_vote"]

def vote_matrix(votes: Sequence[Sequence[str | None]], classes: Sequence[str]) -> np.ndarray:
    """Class indices of ``votes`` (one row per item, one column per labeler; ``None`` or a value not in
    ``classes`` -> -1). Rows may differ in length (padded with -1)."""
    index = {c: i for i, c in enumerate(classes)}
    width = max((len(row) for row in votes), default=0)
    out = np.full((len(votes), width), -1, dtype=np.int64)
    for i, row in enumerate(votes):
        for j, v in enumerate(row):
            out[i, j] = index.get(v, -1) if v is not None else -1
    return out


def _counts(V: np.ndarray, k: int) -> np.ndarray:
    """``counts[i, c]``: how many valid votes item ``i`` got for class ``c``."""
    counts = np.zeros((V.shape[0], k))
    for j in range(V.shape[1]):
        ok = V[:, j] >= 0
        np.add.at(counts, (np.nonzero(ok)[0], V[ok, j]), 1.0)
    return counts


def majority_vote(V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, confidence)``: per item the most voted class (ties: lowest index) and its vote share;
    ``-1`` and ``0.0`` for an item without a valid vote."""
    counts = _counts(V, k)
    total = counts.sum(1)
    labels = np.where(total > 0, counts.argmax(1), -1)  # argmax returns the first maximum: lowest index
    conf = np.where(total > 0, counts.max(1) / np.maximum(total, 1), 0.0)
    return labels, conf


@dataclass
class DawidSkeneResult:
    posteriors: np.ndarray  # items x classes
    priors: np.ndarray  # classes
    confusion: np.ndarray  # labelers x true class x said class
    iterations: int
    voted: np.ndarray  # items: has at least one valid vote

    @property
    def labels(self) -> np.ndarray:
        """The most probable class per item; -1 for an item without a valid vote."""
        return np.where(self.voted, self.posteriors.argmax(1), -1)

    @property
    def confidence(self) -> np.ndarray:
        return np.where(self.voted, self.posteriors.max(1), 0.0)


def _m_step(V: np.ndarray, T: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    n, k = T.shape
    priors = T.mean(0)
    conf = np.full((V.shape[1], k, k), smoothing)
    for w in range(V.shape[1]):
        ok = V[:, w] >= 0
        for said in range(k):
            conf[w, :, said] += T[ok & (V[:, w] == said)].sum(0)
    conf /= np.maximum(conf.sum(2, keepdims=True), 1e-300)
    return priors, conf


def _e_step(V: np.ndarray, priors: np.ndarray, conf: np.ndarray, eps: float) -> np.ndarray:
    logp = np.tile(np.log(np.maximum(priors, eps)), (V.shape[0], 1))
    for w in range(V.shape[1]):
        ok = V[:, w] >= 0
        logp[ok] += np.log(np.maximum(conf[w][:, V[ok, w]].T, eps))
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def dawid_skene(V: np.ndarray, k: int, *, n_iter: int = 100, tol: float = 1e-6, smoothing: float = 0.01,
                eps: float = 1e-10) -> DawidSkeneResult:
    """Dawid-Skene EM over vote matrix ``V`` (see the module docstring). Items without a valid vote take no
    part in the estimates (their label is -1). ``n_iter`` bounds the EM rounds; it stops earlier when no
    posterior moves by more than ``tol``."""
    voted = (V >= 0).any(1)
    Vv = V[voted]
    counts = _counts(Vv, k)
    T = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    priors, conf = np.full(k, 1.0 / k), np.full((V.shape[1], k, k), 1.0 / k)
    it = 0
    for it in range(1, n_iter + 1):
        if len(Vv) == 0:
            break
        priors, conf = _m_step(Vv, T, smoothing)
        new = _e_step(Vv, priors, conf, eps)
        moved = float(np.abs(new - T).max())
        T = new
        if moved < tol:
            break
    post = np.tile(priors, (V.shape[0], 1))
    post[voted] = T
    return DawidSkeneResult(post, priors, conf, it, voted)


# ------------------------------------------------------------------------------------------ on records


def aggregate_records(records: Sequence[dict], taxonomy: Taxonomy, *, votes_field: str = "label_votes",
                      method: str = "dawid_skene", dimensions: Iterable[str] | None = None,
                      smoothing: float = 0.01) -> list[dict]:
    """Per record: ``{"labels": {dim: leaf or None}, "label_confidence": {dim: float}, "label_votes_valid":
    {dim: n}, "label_votes_failed": n}`` -- aggregated over all ``records`` together (Dawid-Skene estimates
    each labeler's reliability from every record's votes). Labelers are the ``labeler`` names of the votes."""
    if method not in ("majority", "dawid_skene"):
        raise ValueError(f"unknown vote method {method!r} (majority, dawid_skene)")
    dims = list(dimensions) if dimensions is not None else list(taxonomy.dimensions)
    labelers: dict[str, int] = {}
    for r in records:
        for v in r.get(votes_field) or []:
            labelers.setdefault(str(v.get("labeler")), len(labelers))
    out = [{"labels": {}, "label_confidence": {}, "label_votes_valid": {},
            "label_votes_failed": sum(1 for v in r.get(votes_field) or [] if v.get("labels") is None)}
           for r in records]
    for dim in dims:
        leaves = taxonomy.leaves(dim)
        rows = []
        for r in records:
            row: list[str | None] = [None] * len(labelers)
            for v in r.get(votes_field) or []:
                row[labelers[str(v.get("labeler"))]] = (v.get("labels") or {}).get(dim)
            rows.append(row)
        V = vote_matrix(rows, leaves)
        if method == "majority":
            lab, conf = majority_vote(V, len(leaves))
        else:
            res = dawid_skene(V, len(leaves), smoothing=smoothing)
            lab, conf = res.labels, res.confidence
        for o, li, ci, row in zip(out, lab, conf, V):
            o["labels"][dim] = leaves[li] if li >= 0 else None
            o["label_confidence"][dim] = round(float(ci), 6)
            o["label_votes_valid"][dim] = int((row >= 0).sum())
    for o in out:
        problems = taxonomy.check({d: v for d, v in o["labels"].items() if v is not None})
        if problems:  # e.g. an attribute voted under another ability than the one voted: a human decides
            o["label_problems"] = problems
    return out


def record_confidence(record: dict, field: str = "label_confidence") -> float:
    """A record's confidence, the review queue's sort key: ``1 - sum_d (1 - confidence_d)``, one minus the
    expected number of wrong labels on the record if the confidences are calibrated (so ranking by it puts
    the records expected to hold the most errors first). A record with inconsistent labels
    (``label_problems``) or without any confidence gets the lowest possible value: ``-len(dims)``."""
    values = list((record.get(field) or {}).values())
    if record.get("label_problems") or not values:
        return -float(max(1, len(values)))
    return 1.0 - sum(1.0 - v for v in values)


def review_queue(records: Sequence[dict], share: float, unit: str = "label",
                 confidence_field: str = "label_confidence") -> dict[int, list[str]]:
    """Which records (by position) go to review, with the dimensions to check, least confident first.

    ``unit="label"``: the ``share`` of all (record, dimension) labels with the lowest confidence (a dimension
    without a label counts as confidence 0); ``unit="record"``: the ``share`` of records lowest by
    :func:`record_confidence`, every dimension to check. At least one item when ``share > 0``; ties go by
    input order. Records with inconsistent labels come first either way."""
    if not 0 <= share <= 1:
        raise ValueError(f"review share {share} must be in [0, 1]")
    if unit not in ("label", "record"):
        raise ValueError(f"review unit {unit!r}: label or record")
    if unit == "record":
        n = min(len(records), max(1 if share > 0 else 0, round(share * len(records))))
        order = sorted(range(len(records)), key=lambda i: (record_confidence(records[i], confidence_field), i))
        return {i: sorted((records[i].get(confidence_field) or {})) for i in order[:n]}
    items = [(-1.0 if r.get("label_problems") and d in r["label_problems"] else c, i, d)
             for i, r in enumerate(records) for d, c in (r.get(confidence_field) or {}).items()]
    n = min(len(items), max(1 if share > 0 else 0, round(share * len(items))))
    queue: dict[int, list[str]] = {}
    for _, i, d in sorted(items)[:n]:
        queue.setdefault(i, []).append(d)
    return queue


def review_tasks(records: Sequence[dict], share: float, *, unit: str = "label", prompt_field: str = "prompt",
                 labels_field: str = "labels", confidence_field: str = "label_confidence") -> list[AnnotationTask]:
    """The review queue (:func:`review_queue`) as ``labels`` annotation tasks (:mod:`novalign.data.annotation`),
    one per record, least confident first; ``meta.review`` names the dimensions to check."""
    tasks = []
    for i, dims in review_queue(records, share, unit, confidence_field).items():
        r = records[i]
        labels = {d: v for d, v in (r.get(labels_field) or {}).items() if v is not None}
        meta: dict[str, Any] = {"review": dims, "votes_failed": r.get("label_votes_failed", 0)}
        if r.get("label_problems"):
            meta["problems"] = r["label_problems"]
        tasks.append(AnnotationTask(task_id=str(r["_id"]), kind="labels", prompt=r[prompt_field], labels=labels,
                                    confidence=dict(r.get(confidence_field) or {}), meta=meta))
    return tasks


def apply_corrections(records: Sequence[dict], results: Sequence[AnnotationResult], taxonomy: Taxonomy, *,
                      path: str = "<results>", labels_field: str = "labels") -> tuple[list[dict], int]:
    """``records`` with human-corrected labels over the voted ones (confidence 1.0, ``label_source`` says
    which dimensions a human set); returns them and how many records changed. The last result of a task
    wins. A result for an unknown record or with a label that is no leaf is a :class:`DataError` naming
    ``path``, the result's position (1-based line) and the field."""
    by_id = {str(r["_id"]): i for i, r in enumerate(records)}
    chosen: dict[str, AnnotationResult] = {}
    for line, res in enumerate(results, 1):
        if res.kind != "labels" or res.labels is None:
            continue
        if res.task_id not in by_id:
            raise DataError(path, line, "task_id", f"no record {res.task_id!r} among the labeled records",
                            reason="unknown task_id")
        problems = taxonomy.check(res.labels)
        if problems:
            dim, msg = next(iter(problems.items()))
            raise DataError(path, line, f"labels.{dim}", msg, reason="invalid label")
        chosen[res.task_id] = res
    out = [dict(r) for r in records]
    for tid, res in chosen.items():
        r = out[by_id[tid]]
        r[labels_field] = {**(r.get(labels_field) or {}), **res.labels}
        r["label_confidence"] = {**(r.get("label_confidence") or {}), **{d: 1.0 for d in res.labels}}
        r["label_source"] = {**(r.get("label_source") or {}), **{d: f"human:{res.annotator}" for d in res.labels}}
        r.pop("label_problems", None)
        remaining = taxonomy.check({d: v for d, v in r[labels_field].items() if v is not None})
        if remaining:
            r["label_problems"] = remaining
    return out, len(chosen)


def parse_vote(value: Any, taxonomy, dims: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """A parsed JSON reply -> ``({dim: leaf or None}, problems)``: a missing dimension, or a value that is no
    leaf, is ``None`` there (and named in ``problems``); nothing is mapped to a near label."""
    if not isinstance(value, dict):
        return {d: None for d in dims}, [f"expected a JSON object, got {type(value).__name__}"]
    labels: dict[str, str | None] = {}
    problems = []
    for d in dims:
        v = value.get(d)
        if isinstance(v, str) and v in taxonomy.leaves(d):
            labels[d] = v
        else:
            labels[d] = None
            problems.append(f"{d}: {'missing' if v is None else repr(v) + ' is no leaf'}")
    return labels, problems
