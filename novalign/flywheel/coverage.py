"""Coverage of a labeled prompt set against the taxonomy (report section 3.1.1: "evaluating prompt diversity
and coverage"): counts per leaf, cross-tabs of two dimensions, empty and thin leaves, balance against target
shares; written as coverage.json, coverage.md and PNG charts (bars of each dimension's hierarchy, a heatmap
per cross-tab). Labels outside the taxonomy and records without a label are counted, never dropped.

Charts use the project's CJK-capable font list (:func:`novalign.eval.report._fonts`: DejaVu Sans, then Noto
Sans CJK from the ``noto-cjk-sans-otc`` dependency), so Chinese label names render.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from novalign.flywheel.labels import get_path
from novalign.flywheel.taxonomy import Taxonomy

__all__ = ["leaf_counts", "crosstab", "thin_leaves", "balance", "coverage_report", "write_coverage"]


def leaf_counts(records: Sequence[dict], taxonomy: Taxonomy, dim: str, field: str = "labels") -> dict:
    """``{"counts": {leaf: n} (every leaf, zeros too), "missing": n, "unknown": {value: n}}``."""
    leaves = taxonomy.leaves(dim)
    seen = Counter(get_path(r, f"{field}.{dim}") for r in records)
    return {"counts": {leaf: seen.get(leaf, 0) for leaf in leaves}, "missing": seen.get(None, 0),
            "unknown": {str(v): n for v, n in seen.items() if v is not None and v not in leaves}}


def crosstab(records: Sequence[dict], taxonomy: Taxonomy, a: str, b: str, field: str = "labels") -> dict:
    """``{"rows": leaves of a, "cols": leaves of b, "counts": [[n]]}`` over records labeled on both."""
    rows, cols = taxonomy.leaves(a), taxonomy.leaves(b)
    ri, ci = {x: i for i, x in enumerate(rows)}, {x: i for i, x in enumerate(cols)}
    grid = [[0] * len(cols) for _ in rows]
    for r in records:
        x, y = get_path(r, f"{field}.{a}"), get_path(r, f"{field}.{b}")
        if x in ri and y in ci:
            grid[ri[x]][ci[y]] += 1
    return {"rows": rows, "cols": cols, "counts": grid}


def thin_leaves(counts: dict[str, int], min_count: int) -> tuple[list[str], list[str]]:
    """``(empty, thin)``: leaves with no record, and leaves with fewer than ``min_count`` (but some)."""
    return ([k for k, n in counts.items() if n == 0], [k for k, n in counts.items() if 0 < n < min_count])


def balance(counts: dict[str, int], targets: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per target leaf: its share of the records counted, the target share (targets normalized) and the
    difference (share - target)."""
    total, norm = sum(counts.values()), sum(targets.values())
    out = {}
    for leaf, t in targets.items():
        share = counts.get(leaf, 0) / total if total else 0.0
        out[leaf] = {"share": round(share, 4), "target": round(t / norm, 4), "diff": round(share - t / norm, 4)}
    return out


def coverage_report(records: Sequence[dict], taxonomy: Taxonomy, *, field: str = "labels", min_count: int = 10,
                    crosstabs: Sequence[tuple[str, str]] = (("ability", "language"), ("ability", "difficulty")),
                    targets: dict[str, dict[str, float]] | None = None) -> dict:
    dims = {}
    for d in taxonomy.dimensions:
        c = leaf_counts(records, taxonomy, d, field)
        empty, thin = thin_leaves(c["counts"], min_count)
        dims[d] = {**c, "empty": empty, "thin": thin}
        if targets and d in targets:
            dims[d]["balance"] = balance(c["counts"], targets[d])
    tabs = {f"{a} x {b}": crosstab(records, taxonomy, a, b, field) for a, b in crosstabs}
    return {"records": len(records), "taxonomy": f"{taxonomy.name} v{taxonomy.version} ({taxonomy.digest})",
            "min_count": min_count, "dimensions": dims, "crosstabs": tabs}


def _markdown(rep: dict, taxonomy: Taxonomy) -> str:
    lines = [f"# Prompt coverage: {rep['records']} records", "", f"Taxonomy {rep['taxonomy']}; thin = fewer than "
             f"{rep['min_count']} records.", ""]
    for d, info in rep["dimensions"].items():
        dim = taxonomy.dimensions[d]
        lines += [f"## {d}", "", "| leaf | path | records |", "| --- | --- | ---: |"]
        for leaf, n in info["counts"].items():
            lines.append(f"| {leaf} | {'/'.join(dim.path(leaf)[:-1]) or dim.label(leaf).parent or ''} | {n} |")
        lines += ["", f"Empty: {', '.join(info['empty']) or 'none'}. Thin: {', '.join(info['thin']) or 'none'}. "
                  f"Unlabeled: {info['missing']}. Outside the taxonomy: {info['unknown'] or 'none'}.", ""]
        if "balance" in info:
            lines += ["| leaf | share | target | diff |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {k} | {v['share']:.3f} | {v['target']:.3f} | {v['diff']:+.3f} |" for k, v in info["balance"].items()]
            lines.append("")
    for name, tab in rep["crosstabs"].items():
        lines += [f"## {name}", "", "| | " + " | ".join(tab["cols"]) + " |", "| --- |" + " ---: |" * len(tab["cols"])]
        lines += [f"| {r} | " + " | ".join(map(str, row)) + " |" for r, row in zip(tab["rows"], tab["counts"])]
        lines.append("")
    return "\n".join(lines)


def _plot_bars(path: Path, rep: dict, taxonomy: Taxonomy) -> None:
    import matplotlib.pyplot as plt

    dims = list(rep["dimensions"])
    heights = [max(1.5, 0.28 * len(rep["dimensions"][d]["counts"]) + 0.8) for d in dims]
    fig, axes = plt.subplots(len(dims), 1, figsize=(8, sum(heights)), gridspec_kw={"height_ratios": heights})
    try:
        for ax, d in zip(axes if len(dims) > 1 else [axes], dims):
            dim = taxonomy.dimensions[d]
            counts = rep["dimensions"][d]["counts"]
            names = [("/".join(dim.path(k)[:-1]) or dim.label(k).parent or "") for k in counts]
            labels = [f"{g}/{k}" if g else k for g, k in zip(names, counts)]
            colors = ["#d62728" if n == 0 else "#ff7f0e" if n < rep["min_count"] else "#1f77b4" for n in counts.values()]
            ax.barh(range(len(counts)), list(counts.values()), color=colors)
            ax.set_yticks(range(len(counts)))
            ax.set_yticklabels(labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{d}" + (f" -- {dim.description}" if dim.description else ""), fontsize=9, loc="left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plot_heatmap(path: Path, name: str, tab: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(tab["cols"]), 1.0 + 0.4 * len(tab["rows"])))
    try:
        ax.imshow(tab["counts"], cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(tab["cols"])))
        ax.set_xticklabels(tab["cols"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(tab["rows"])))
        ax.set_yticklabels(tab["rows"], fontsize=8)
        top = max((max(row) for row in tab["counts"]), default=0)
        for i, row in enumerate(tab["counts"]):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > top / 2 else "black")
        ax.set_title(name, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def write_coverage(records: Sequence[dict], taxonomy: Taxonomy, out_dir: str | Path, **options) -> dict:
    """coverage.json, coverage.md, coverage_bars.png and one heatmap_<a>_x_<b>.png per cross-tab in ``out_dir``;
    returns the report (its ``files`` lists what was written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from novalign.eval.report import _fonts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = coverage_report(records, taxonomy, **options)
    files = [out / "coverage.json", out / "coverage.md", out / "coverage_bars.png"]
    with plt.rc_context({"font.family": _fonts()}):
        _plot_bars(files[2], rep, taxonomy)
        for name, tab in rep["crosstabs"].items():
            files.append(out / f"heatmap_{name.replace(' ', '_')}.png")
            _plot_heatmap(files[-1], name, tab)
    rep["files"] = [str(f) for f in files]
    files[0].write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files[1].write_text(_markdown(rep, taxonomy) + "\n", encoding="utf-8")
    return rep
