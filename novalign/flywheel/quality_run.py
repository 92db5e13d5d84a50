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

__all__ = ["heldout_pairs", "distill_scorer", "save_scorer", "apply_scorer", "run_score_quality"]


def heldout_pairs(n_items: int, n_pairs: int, target: Sequence[float], seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct pairs of items whose targets differ, drawn uniformly (seeded)."""
    rng = random.Random(seed)
    candidates = [(i, j) for i in range(n_items) for j in range(i + 1, n_items) if target[i] != target[j]]
    return rng.sample(candidates, min(n_pairs, len(candidates)))


def distill_scorer(emb: np.ndarray, overall: Sequence[float], *, heldout: float = 0.3, n_pairs: int = 200,
                   seed: int = 0, truth: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit the embedding + ridge scorer on a share of the judged prompts; its pairwise accuracy against the
    judged overall scores on ``n_pairs`` pairs of the held-out prompts (and against ``truth`` if given)."""
    n = len(overall)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = max(1, int(round(n * (1 - heldout))))
    train, test = order[:cut], order[cut:]
    if len(test) < 2:
        raise ValueError(f"distill: {len(test)} held-out prompts; need at least 2")
    y = np.asarray(overall, dtype=float)
    head = q.fit_scorer(emb[train], y[train])
    pred = head.predict(emb[test])
    pairs = heldout_pairs(len(test), n_pairs, y[test], seed)
    out = {"train": len(train), "heldout": len(test), "pairs": len(pairs), "head": head,
           "pairwise_accuracy": q.pairwise_accuracy(pred, y[test], pairs)}
    if truth is not None:
        t = np.asarray(truth, dtype=float)[test]
        out["pairwise_accuracy_vs_truth"] = q.pairwise_accuracy(pred, t, heldout_pairs(len(test), n_pairs, t, seed))
    return out


def save_scorer(path: str | Path, head, embedder: str | None, **info: Any) -> Path:
    """The distilled scorer as JSON: the embedder folder, the ridge head's weights, and ``info``."""
    from novalign.data.io import write_json_atomic

    return write_json_atomic(path, {"embedder": embedder, "coef": [float(x) for x in np.ravel(head.coef_)],
                                    "intercept": float(np.ravel(head.intercept_)[0]),
                                    "alpha": float(getattr(head, "alpha_", getattr(head, "alpha", 0.0))), **info})


def apply_scorer(path: str | Path, texts: Sequence[str]) -> np.ndarray:
    """Overall quality predicted by a saved scorer (no judge call): embedding . coef + intercept."""
    import json

    from novalign.flywheel.diversity import embed, load_embedder

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    emb = embed(load_embedder(spec["embedder"]), texts)
    return emb @ np.asarray(spec["coef"]) + spec["intercept"]


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
    if not cfg.judges:
        raise ValueError("score-quality: give judges, e.g. --set 'judges=[{backend: openai, model: a, base_url: ...}]'")
    clients = {}
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
    stats = {"records": len(texts), "selected": sum(keep), "buckets": len(out["anchors"]), "anchors": len(anchors),
             "judges": len(clients), "judge_calls": out["calls"], "failed_pairs": len(out["failures"]),
             "judge_calls_per_prompt": round(out["calls"] / non_anchor, 2), "method": cfg.method,
             "labels": dict(Counter(out["labels"]))}
    if cfg.distill:
        from novalign.flywheel.diversity import embed, load_embedder

        found = distill_scorer(embed(load_embedder(cfg.embedder, cfg.seed), texts), out["overall"],
                               heldout=cfg.distill_heldout, n_pairs=cfg.distill_pairs, seed=cfg.seed)
        save_scorer(dest / "scorer.json", found["head"], cfg.embedder, heldout_pairwise_accuracy=
                    found["pairwise_accuracy"], heldout_pairs=found["pairs"], trained_on=found["train"])
        stats["distilled"] = {"pairwise_accuracy": round(found["pairwise_accuracy"], 4), "pairs": found["pairs"],
                              "train": found["train"], "heldout": found["heldout"]}
    write_json_atomic(dest / "stats.json", stats)
    lines = ["# Anchored pairwise prompt quality", "", f"{stats['records']} records in {stats['buckets']} buckets, "
             f"{stats['anchors']} anchors, {stats['judges']} judges, {stats['judge_calls']} judge calls "
             f"({stats['judge_calls_per_prompt']} per non-anchor prompt), {stats['failed_pairs']} failed pairs.", "",
             "| bucket | records | mean overall | selected |", "| --- | --- | --- | --- |"]
    for b in sorted(out["anchors"]):
        idx = [i for i, x in enumerate(buckets) if x == b]
        lines.append(f"| {b} | {len(idx)} | {np.mean([out['overall'][i] for i in idx]):.3f} | "
                     f"{sum(keep[i] for i in idx)} |")
    lines += ["", f"Labels: {stats['labels']}", ""]
    (dest / "report.md").write_text("\n".join(lines), encoding="utf-8")
    console_print(f"score-quality: {stats['selected']} of {stats['records']} selected -> {dest / 'selected.jsonl'}")
    return stats
