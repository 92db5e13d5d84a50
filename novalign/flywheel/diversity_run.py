"""The whole task-aware selection (:func:`select_diverse`) and ``novalign data select-diverse``
(:func:`run_select_diverse`): files in, selected records, cluster paths and a report with cluster-size charts
out. The algorithms are the plain functions of :mod:`novalign.flywheel.diversity`."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from novalign.flywheel import diversity as dv

__all__ = ["DiversityResult", "select_diverse", "split_oversized", "cluster_size_chart", "run_select_diverse"]


@dataclass
class DiversityResult:
    selected: list[int]  # record indices, in pick order
    paths: list[list[str]]  # each record's cluster path
    pairs: list[tuple] = field(default_factory=list)
    n_triplets: int = 0
    tuned: np.ndarray | None = None  # tuned embeddings (unit length)
    base: np.ndarray | None = None  # base embeddings
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        kinds = Counter(p[2] for p in self.pairs)
        levels = list(zip(*self.paths)) if self.paths else []
        return {"records": len(self.paths), "selected": len(self.selected), "hard_positives": kinds["positive"],
                "hard_negatives": kinds["negative"], "triplets": self.n_triplets,
                "clusters_per_level": [len(set(level)) for level in levels],
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "cpu_seconds": {k: round(v, 2) for k, v in self.cpu_seconds.items()}}


def split_oversized(emb: np.ndarray, labels: np.ndarray, max_block: int, seed: int) -> np.ndarray:
    """Coarse labels with every cluster over ``max_block`` records split by k-means into ``ceil(size /
    max_block)`` parts: the linkage of a block costs ``size^2`` memory, so blocks are capped."""
    from sklearn.cluster import KMeans

    out = labels.copy()
    next_id = int(labels.max()) + 1 if len(labels) else 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > max_block:
            parts = KMeans(-(-len(idx) // max_block), n_init=1, random_state=seed).fit_predict(emb[idx])
            for p in range(1, int(parts.max()) + 1):
                out[idx[parts == p]] = next_id
                next_id += 1
    return out


def select_diverse(texts: Sequence[str], cfg, model_dir: str | Path, *, log: Callable[[str], None] = print,
                   max_block: int = 4000, base: np.ndarray | None = None) -> DiversityResult:
    """Steps 1-5 of :mod:`novalign.flywheel.diversity` with the options of a
    :class:`~novalign.config.selection.SelectDiverseConfig`; the tuned embedder is saved to ``model_dir``.
    ``base``: the base embedder's embeddings of ``texts`` when already computed (they depend on no seed)."""
    from sklearn.cluster import KMeans

    if not texts:
        raise ValueError("select-diverse: no records")
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds (all threads): the measure that a loaded machine inflates least
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        t[name], cpu[name], clock, cpu_clock = now - clock, cpu_now - cpu_clock, now, cpu_now

    model = dv.load_embedder(cfg.model, cfg.seed)
    base = dv.embed(model, texts, precision=cfg.precision) if base is None else base
    lap("embed_base")
    coarse, fine = dv.two_level_kmeans(base, cfg.n_coarse, cfg.fine_size, cfg.seed, cfg.n_init)
    rules = dv.MiningRules(cfg.positive_min, cfg.context_max, cfg.negative_max)
    pairs = dv.mine_pairs(texts, base, coarse, fine, neighbors=cfg.neighbors, rules=rules)
    trip = dv.triplets(pairs, per_anchor=cfg.per_anchor)
    if len(trip) > cfg.max_triplets:
        trip = random.Random(cfg.seed).sample(trip, cfg.max_triplets)
    lap("mine")
    log(f"select-diverse: {len(texts)} records, {sum(p[2] == 'positive' for p in pairs)} hard positives, "
        f"{sum(p[2] == 'negative' for p in pairs)} hard negatives, {len(trip)} triplets")
    head = dv.add_head(model) if cfg.train == "head" else None
    lr = cfg.lr or (1e-3 if head is not None else 3e-5)
    dv.finetune(model, [(texts[a], texts[p], texts[n]) for a, p, n in trip], model_dir, epochs=cfg.epochs,
                batch_size=cfg.batch_size, lr=lr, margin=cfg.margin, seed=cfg.seed, max_steps=cfg.max_steps or -1)
    lap("finetune")
    tuned = dv.apply_head(head, base) if head is not None else dv.embed(model, texts, precision=cfg.precision)
    lap("embed_tuned")
    k = max(1, min(cfg.n_coarse, len(texts)))
    coarse2 = (KMeans(k, n_init=cfg.n_init, random_state=cfg.seed).fit_predict(tuned) if k > 1
               else np.zeros(len(texts), int))
    coarse2 = split_oversized(tuned, coarse2, max_block, cfg.seed)
    paths = dv.cluster_paths(tuned, coarse2, cfg.thresholds, cfg.linkage)
    selected = dv.select_budget(paths, tuned, dv.budget_count(cfg.budget, len(texts)))
    lap("cluster_select")
    return DiversityResult(selected, paths, pairs, len(trip), tuned, base, t, cpu)


def cluster_size_chart(paths: Sequence[Sequence[str]], selected: Sequence[int], thresholds: Sequence[float],
                       out: str | Path) -> Path:
    """One panel per level (coarse, then each cut loosest first): cluster sizes in decreasing order (line) and
    the selected records of each cluster that has any (dots), log scale; the title counts the clusters and the
    covered ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = len(paths[0])
    names = ["coarse"] + [f"cut {th:g}" for th in sorted(thresholds, reverse=True)]
    fig, axes = plt.subplots(1, depth, figsize=(4 * depth, 3.2), squeeze=False)
    chosen = set(selected)
    for level, ax in enumerate(axes[0]):
        sizes = Counter(p[level] for p in paths)
        picked = Counter(paths[i][level] for i in chosen)
        order = sorted(sizes, key=lambda c: -sizes[c])
        ax.plot(range(1, len(order) + 1), [sizes[c] for c in order], label="records")
        hit = [(r, picked[c]) for r, c in enumerate(order, 1) if picked[c]]  # clusters with no pick: no dot
        ax.plot([r for r, _ in hit], [v for _, v in hit], ".", ms=3, label="selected")
        ax.set_yscale("log")
        ax.set_title(f"{names[level]}: {len(order)} clusters, {len(hit)} covered")
        ax.set_xlabel("cluster rank")
    axes[0][0].set_ylabel("records")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def run_select_diverse(cfg, console_print: Callable[[str], None] = print) -> dict[str, Any]:
    """``novalign data select-diverse``: read ``cfg.input``, select, write to ``cfg.output_dir``."""
    from novalign.data.io import DataError, iter_records, write_json_atomic, write_jsonl
    from novalign.flywheel.step import text_of

    records, texts = [], []
    for line, rec in iter_records(cfg.input):
        value = rec.get(cfg.field)
        if not isinstance(value, (str, list)) or not text_of(value).strip():
            raise DataError(cfg.input, line, cfg.field, "missing, empty, or not a string / list of messages")
        if cfg.id_field is not None and cfg.id_field not in rec:
            raise DataError(cfg.input, line, cfg.id_field, "missing (the id field)")
        records.append({"_id": rec[cfg.id_field] if cfg.id_field else f"line-{line}", **rec})
        texts.append(text_of(value))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(cfg.model_dir) if cfg.model_dir else out / "embedder"
    result = select_diverse(texts, cfg, model_dir, log=console_print)
    chosen = set(result.selected)
    write_jsonl(out / "selected.jsonl", [{**records[i], "cluster_path": result.paths[i]} for i in sorted(chosen)])
    write_jsonl(out / "clusters.jsonl", [{"_id": r["_id"], "cluster_path": p, "selected": i in chosen}
                                         for i, (r, p) in enumerate(zip(records, result.paths))])
    stats = result.stats() | {"embedder": str(model_dir)}
    write_json_atomic(out / "stats.json", stats)
    cluster_size_chart(result.paths, result.selected, cfg.thresholds, out / "cluster_sizes.png")
    levels = ["coarse"] + [f"cut {th:g}" for th in sorted(cfg.thresholds, reverse=True)]
    lines = ["# Task-aware diversity selection", "",
             f"{stats['records']} records, {stats['selected']} selected (budget {cfg.budget:g}).", "",
             f"Hard pairs among near neighbours: {stats['hard_positives']} positives, {stats['hard_negatives']} "
             f"negatives; {stats['triplets']} triplets trained the embedder saved at `{model_dir}`.", "",
             "| level | clusters | clusters with a selected record |", "| --- | --- | --- |"]
    for level, name in enumerate(levels):
        covered = len({result.paths[i][level] for i in chosen})
        lines.append(f"| {name} | {stats['clusters_per_level'][level]} | {covered} |")
    lines += ["", "![cluster sizes](cluster_sizes.png)", "", f"Seconds: {stats['seconds']}", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    console_print(f"select-diverse: {stats['selected']} of {stats['records']} selected -> {out / 'selected.jsonl'}")
    return stats
