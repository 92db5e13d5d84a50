"""``novalign data score-quality`` (:func:`run_score_quality`) and the distilled scorer (:func:`distill_scorer`):
files in; scores, labels, the selection per bucket, the judgments and a report out. The algorithms are the
plain functions of :mod:`novalign.flywheel.quality`."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from novalign.flywheel import quality as q

__all__ = ["scorer_digest", "score_with_scorer", "heldout_pairs", "heldout_split", "fit_ridge", "predict_ridge", "heldout_accuracy", "distill_scorer",
           "save_scorer", "apply_scorer", "run_score_quality"]


def heldout_pairs(n_items: int, n_pairs: int, target: Sequence[float], seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct pairs of items whose targets differ, drawn uniformly (seeded)."""
    rng = random.Random(seed)
    candidates = [(i, j) for i in range(n_items) for j in range(i + 1, n_items) if target[i] != target[j]]
    return rng.sample(candidates, min(n_pairs, len(candidates)))


def heldout_split(texts: Sequence[str], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices: a seeded share ``heldout`` of the prompts is the test set, fixed before any
    training; the rest trains, less any prompt whose text is also a test prompt's (a duplicate would be a
    test prompt seen in training)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(len(texts) * (1 - heldout))))
    test = sorted(order[cut:])
    if len(test) < 2:
        raise ValueError(f"distill: {len(test)} held-out prompts; need at least 2")
    seen = {texts[i] for i in test}
    return sorted(i for i in order[:cut] if texts[i] not in seen), test


def fit_ridge(texts: Sequence[str], emb: np.ndarray | None, targets: Sequence[float], *, ngrams: bool = True):
    """``(features or None, head)``: the embedding (+ :class:`~novalign.flywheel.quality.TextFeatures` when
    ``ngrams``) into a ridge head on ``targets``."""
    feats = q.TextFeatures.fit(texts) if ngrams else None
    x = feats.transform(texts, emb) if feats else np.asarray(emb, dtype=np.float64)
    return feats, q.fit_scorer(x, np.asarray(targets, dtype=float))


def predict_ridge(feats, head, texts: Sequence[str], emb: np.ndarray | None) -> np.ndarray:
    return head.predict(feats.transform(texts, emb) if feats else np.asarray(emb, dtype=np.float64))


def heldout_accuracy(pred: Sequence[float], judged: Sequence[float], *, n_pairs: int = 200, seed: int = 0,
                     truth: Sequence[float] | None = None) -> dict[str, Any]:
    """Pairwise accuracy of ``pred`` on the held-out prompts against their judged scores on ``n_pairs`` pairs
    (:func:`heldout_pairs`; the same pairs for every scorer given the same judged scores and seed), and
    against ``truth`` (its own pairs) when given."""
    y = np.asarray(judged, dtype=float)
    pairs = heldout_pairs(len(y), n_pairs, y, seed)
    out = {"pairs": len(pairs), "pairwise_accuracy": q.pairwise_accuracy(pred, y, pairs)}
    if truth is not None:
        t = np.asarray(truth, dtype=float)
        out["pairwise_accuracy_vs_truth"] = q.pairwise_accuracy(pred, t, heldout_pairs(len(t), n_pairs, t, seed))
    return out


def distill_scorer(texts: Sequence[str], emb: np.ndarray | None, overall: Sequence[float], *, heldout: float = 0.3,
                   n_pairs: int = 200, seed: int = 0, truth: Sequence[float] | None = None,
                   ngrams: bool = True) -> dict[str, Any]:
    """Fit the ridge scorer (embedding + n-gram features) on the training prompts of :func:`heldout_split`;
    its pairwise accuracy on ``n_pairs`` pairs of the held-out prompts (:func:`heldout_accuracy`)."""
    train, test = heldout_split(texts, heldout, seed)
    y = np.asarray(overall, dtype=float)
    sub = (lambda idx: None) if emb is None else (lambda idx: emb[idx])
    feats, head = fit_ridge([texts[i] for i in train], sub(train), y[train], ngrams=ngrams)
    pred = predict_ridge(feats, head, [texts[i] for i in test], sub(test))
    found = heldout_accuracy(pred, y[test], n_pairs=n_pairs, seed=seed,
                             truth=None if truth is None else np.asarray(truth, dtype=float)[test])
    return {"train": len(train), "heldout": len(test), "features": feats, "head": head, "pred": pred, **found}


def save_scorer(path: str | Path, feats, head, embedder: str | None, **info: Any) -> Path:
    """The ridge scorer as JSON: the embedder folder, the n-gram vocabularies and idf weights, the head's
    weights, and ``info``."""
    from novalign.data.io import write_json_atomic

    return write_json_atomic(path, {"kind": "ridge", "embedder": embedder,
                                    "ngrams": feats.to_dict() if feats else None,
                                    "coef": [float(x) for x in np.ravel(head.coef_)],
                                    "intercept": float(np.ravel(head.intercept_)[0]),
                                    "alpha": float(getattr(head, "alpha_", getattr(head, "alpha", 0.0))), **info})


def apply_scorer(path: str | Path, texts: Sequence[str]) -> np.ndarray:
    """Overall quality predicted by a saved scorer (no judge call): a ridge scorer.json (features . coef +
    intercept) or a tiny-LM scorer folder (:func:`novalign.flywheel.quality_lm.lm_overall`)."""
    import json

    if Path(path).is_dir():
        from novalign.flywheel.quality_lm import lm_overall

        return lm_overall(path, texts)
    from novalign.flywheel.diversity import embed, load_embedder

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    emb = embed(load_embedder(spec["embedder"]), texts)
    x = q.TextFeatures.from_dict(spec["ngrams"]).transform(texts, emb) if spec.get("ngrams") else emb
    return x @ np.asarray(spec["coef"]) + spec["intercept"]


def distill_into(dest: Path, texts: Sequence[str], judged: dict, cfg) -> dict[str, Any]:
    """``distill``: the scorer trained on the judged scores of the training prompts (:func:`heldout_split`),
    saved in ``dest`` (scorer.json, or the tiny-LM folder scorer_lm/), with its held-out pairwise accuracy."""
    train, test = heldout_split(texts, cfg.distill_heldout, cfg.seed)
    y = np.asarray(judged["overall"], dtype=float)
    if cfg.distill == "lm":
        from novalign.flywheel.quality_lm import lm_overall, train_lm_scorer

        where = train_lm_scorer([texts[i] for i in train], [judged["scores"][i] for i in train], dest / "scorer_lm",
                                steps=cfg.distill_steps, seed=cfg.seed)
        pred = lm_overall(where, [texts[i] for i in test])
    else:
        from novalign.flywheel.diversity import embed, load_embedder

        emb = embed(load_embedder(cfg.embedder, cfg.seed), texts)
        feats, head = fit_ridge([texts[i] for i in train], emb[train], y[train])
        pred = predict_ridge(feats, head, [texts[i] for i in test], emb[test])
    found = heldout_accuracy(pred, y[test], n_pairs=cfg.distill_pairs, seed=cfg.seed)
    info = {"kind": "lm" if cfg.distill == "lm" else "ridge", "pairwise_accuracy": round(found["pairwise_accuracy"], 4),
            "pairs": found["pairs"], "train": len(train), "heldout": len(test)}
    if cfg.distill == "lm":
        from novalign.data.io import write_json_atomic

        write_json_atomic(dest / "scorer_lm" / "heldout.json", info)
    else:
        save_scorer(dest / "scorer.json", feats, head, cfg.embedder, heldout_pairwise_accuracy=
                    found["pairwise_accuracy"], heldout_pairs=found["pairs"], trained_on=len(train))
    return info


def scorer_digest(path: str | Path) -> str:
    """SHA-256 over a scorer's files (a scorer.json, or every file of a tiny-LM folder with its name)."""
    import hashlib

    p, h = Path(path), hashlib.sha256()
    if not p.exists():
        raise FileNotFoundError(f"scorer {p}: no such scorer.json or tiny-LM scorer folder")
    for f in sorted(x for x in ([p] if p.is_file() else p.rglob("*")) if x.is_file()):
        h.update(str(f.relative_to(p if p.is_dir() else p.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def score_with_scorer(path: str | Path, texts: Sequence[str], cfg) -> dict[str, Any]:
    """Scores from a saved scorer instead of judges, in :func:`~novalign.flywheel.quality.score_quality`'s
    shape: per-dimension scores from a tiny-LM scorer (``None`` from a ridge scorer, which predicts the overall
    score only), the overall score, its label; no anchors, verdicts or calls."""
    if Path(path).is_dir():
        from novalign.flywheel.quality_lm import lm_scores

        per_dim = lm_scores(path, texts)
        scores = [dict(zip(q.DIMENSIONS, map(float, row))) for row in per_dim]
        overall = [float(x) for x in per_dim.mean(axis=1)]
    elif Path(path).is_file():
        scores, overall = [None] * len(texts), [float(x) for x in apply_scorer(path, texts)]
    else:
        raise FileNotFoundError(f"scorer {path}: no such scorer.json or tiny-LM scorer folder")
    return {"scores": scores, "overall": overall, "labels": [q.label_of(o, cfg.label_high, cfg.label_low)
                                                             for o in overall],
            "anchors": {}, "verdicts": [], "calls": 0, "failures": []}


def run_score_quality(cfg, console_print: Callable[[str], None] = print) -> dict[str, Any]:
    """Read ``cfg.input``, judge and aggregate, write ``cfg.output_dir``: scored.jsonl (every record with
    ``<output_field>``), selected.jsonl (at or above the bucket's threshold), anchors.jsonl, judgments.jsonl,
    stats.json, report.md."""
    from novalign.config.llm import LLMConfig
    from novalign.data.io import DataError, iter_records, write_json_atomic, write_jsonl
    from novalign.flywheel.step import text_of
    from novalign.llm import LLMClient

    records, texts, buckets, strata = [], [], [], []
    for line, rec in iter_records(cfg.input):
        value = rec.get(cfg.field)
        if not isinstance(value, (str, list)) or not text_of(value).strip():
            raise DataError(cfg.input, line, cfg.field, "missing, empty, or not a string / list of messages")
        for path in [cfg.bucket_field] + ([] if cfg.stratify == "length" else [cfg.stratify]):
            try:
                q.field_value(rec, path)
            except KeyError as exc:
                raise DataError(cfg.input, line, path, f"missing ({exc.args[0]!r} not found)") from None
        records.append({"_id": rec[cfg.id_field] if cfg.id_field else f"line-{line}", **rec})
        texts.append(text_of(value))
        buckets.append(str(q.field_value(rec, cfg.bucket_field)))
        strata.append(None if cfg.stratify == "length" else str(q.field_value(rec, cfg.stratify)))
    if cfg.scorer and cfg.distill:
        raise ValueError("score-quality: distill needs judged scores; give judges instead of scorer")
    if not cfg.judges and not cfg.scorer:
        raise ValueError("score-quality: give judges, e.g. --set 'judges=[{backend: openai, model: a, base_url: ...}]', "
                         "or a distilled scorer (--set scorer=runs/quality/scorer_lm)")
    clients = {}
    if cfg.scorer:
        out = score_with_scorer(cfg.scorer, texts, cfg)
    else:
        try:
            for k, j in enumerate(cfg.judges):
                clients[str(j.get("model") or f"judge{k}")] = LLMClient.from_config(
                    LLMConfig.model_validate({**cfg.llm, **j}), progress=False, print_usage=False)
            out = q.score_quality(texts, buckets, clients, cfg, strata=None if cfg.stratify == "length" else strata)
        finally:
            for c in clients.values():
                c.close()
    keep = q.select_by_threshold(out["overall"], buckets, cfg.thresholds, cfg.threshold)
    anchors = {a for v in out["anchors"].values() for a in v}
    scored = [{**r, cfg.output_field: {"scores": s, "overall": o, "label": lab, "bucket": b, "anchor": i in anchors}}
              for i, (r, s, o, lab, b) in enumerate(zip(records, out["scores"], out["overall"], out["labels"], buckets))]
    dest = Path(cfg.output_dir)
    dest.mkdir(parents=True, exist_ok=True)
    write_jsonl(dest / "scored.jsonl", scored)
    write_jsonl(dest / "selected.jsonl", [r for r, k in zip(scored, keep) if k])
    write_jsonl(dest / "anchors.jsonl", [{"bucket": b, "_id": records[a]["_id"]} for b, v in out["anchors"].items()
                                         for a in v])
    write_jsonl(dest / "judgments.jsonl", [{"_id": records[a]["_id"], "anchor": records[b]["_id"], "judge": j,
                                            "levels": lv} for a, b, j, lv in out["verdicts"]])
    non_anchor = max(1, len(texts) - len(anchors))
    stats = {"records": len(texts), "selected": sum(keep), "buckets": len(set(buckets)), "anchors": len(anchors),
             "judges": len(clients), "judge_calls": out["calls"], "failed_pairs": len(out["failures"]),
             "judge_calls_per_prompt": round(out["calls"] / non_anchor, 2), "method": cfg.method,
             "labels": dict(Counter(out["labels"])), "scorer": cfg.scorer}
    if cfg.distill:
        stats["distilled"] = distill_into(dest, texts, out, cfg)
    write_json_atomic(dest / "stats.json", stats)
    lines = ["# Anchored pairwise prompt quality", "", f"{stats['records']} records in {stats['buckets']} buckets, "
             f"{stats['anchors']} anchors, {stats['judges']} judges, {stats['judge_calls']} judge calls "
             f"({stats['judge_calls_per_prompt']} per non-anchor prompt), {stats['failed_pairs']} failed pairs.", "",
             "| bucket | records | mean overall | selected |", "| --- | --- | --- | --- |"]
    for b in sorted(set(buckets)):
        idx = [i for i, x in enumerate(buckets) if x == b]
        lines.append(f"| {b} | {len(idx)} | {np.mean([out['overall'][i] for i in idx]):.3f} | "
                     f"{sum(keep[i] for i in idx)} |")
    lines += ["", f"Labels: {stats['labels']}", ""]
    (dest / "report.md").write_text("\n".join(lines), encoding="utf-8")
    console_print(f"score-quality: {stats['selected']} of {stats['records']} selected -> {dest / 'selected.jsonl'}")
    return stats
