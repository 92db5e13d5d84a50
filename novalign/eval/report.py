"""The markdown report of ``novalign eval``: per suite, the models side by side, and per-category bar charts.

Input is the runner's ``{model: {suite: summary}}`` (see :mod:`novalign.eval.suite_api` for a summary's
keys). Output: ``report.md`` and ``charts/*.png`` (matplotlib, Agg backend, no display needed):

- per suite, a table of the overall metrics (rows) for every model (columns), with samples and failed
  judgments; a chart of the same numbers;
- per suite with categories, a table of categories (rows) x models for each per-category metric, and one
  grouped bar chart per metric (categories on the x axis, one bar per model).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["bar_chart", "category_table", "metrics_table", "nested_table", "table", "write_report"]


def _fmt(value: Any, decimals: int | None = None) -> str:
    """A cell: floats to ``decimals`` places (a suite's ``decimals``, e.g. the official table's 2 for CFBench),
    3 by default."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{3 if decimals is None else decimals}f}"
    return str(value)


def _places(summary: Mapping[str, Any], metric: str) -> int | None:
    return (summary.get("decimals") or {}).get(metric)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _union(keys_lists) -> list[str]:
    seen: dict[str, None] = {}
    for keys in keys_lists:
        for key in keys:
            seen.setdefault(key, None)
    return list(seen)


def metrics_table(per_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines: overall metrics (rows) x models (columns), then samples and failed judgments."""
    models = list(per_model)
    metrics = _union(s.get("metrics", {}) for s in per_model.values())
    rows = [[m] + [_fmt(per_model[x].get("metrics", {}).get(m), _places(per_model[x], m)) for x in models]
            for m in metrics]
    for key, label in (("num_samples", "samples"), ("num_failed", "failed (not judged)")):
        rows.append([label] + [_fmt(per_model[model].get(key)) for model in models])
    return table(["metric", *models], rows)


def category_table(per_model: Mapping[str, Mapping[str, Any]], metric: str) -> list[str]:
    """Markdown lines: categories (rows) x models (columns) for one per-category metric."""
    models = list(per_model)
    categories = _union(s.get("by_category", {}) for s in per_model.values())
    rows = [[c] + [_fmt(per_model[m].get("by_category", {}).get(c, {}).get(metric), _places(per_model[m], metric))
                   for m in models] for c in categories]
    return table(["category", *models], rows)


def nested_table(per_model: Mapping[str, Mapping[str, Any]], key: str) -> list[str]:
    """Markdown lines for a summary key holding ``{group: {metric: number}}`` (CFBench ``splits``, IFEval
    ``by_group``, ...): one row per (group, metric), one column per model; empty when the key is not of that shape."""
    models = list(per_model)
    tables = [per_model[m].get(key) for m in models]
    if not all(isinstance(t, Mapping) and all(isinstance(v, Mapping) for v in t.values()) for t in tables if t):
        return []
    groups = _union(t for t in tables if t)
    rows = []
    for group in groups:
        metrics = _union(t.get(group, {}) for t in tables if t)
        for metric in metrics:
            cells = [(per_model[m].get(key) or {}).get(group, {}).get(metric) for m in models]
            if all(c is None or _number(c) is not None for c in cells):
                rows.append([f"{group} {metric}"] + [_fmt(c, _places(per_model[m], metric)) for c, m in zip(cells, models)])
    return table([key, *models], rows) if rows else []


def bar_chart(path: Path, title: str, groups: list[str], series: Mapping[str, list[float | None]],
              ylabel: str) -> None:
    """A grouped bar chart: one group per entry of ``groups``, one bar per series (model) in each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(series))
    # font.family must list the families themselves: matplotlib falls back glyph by glyph only across the
    # families named there ("sans-serif" would resolve to its first installed member, DejaVu, alone)
    with plt.rc_context({"font.family": _fonts()}):
        _draw(plt, path, title, groups, series, ylabel, width)


_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
              "SimHei", "Microsoft YaHei", "PingFang SC", "Arial Unicode MS")


def _fonts() -> list[str]:
    """DejaVu Sans, then a CJK font (matplotlib falls back per glyph), so the Chinese category names of CFBench
    and SysBench render. The CJK font is Noto Sans CJK from the ``noto-cjk-sans-otc`` package (a dependency,
    SIL OFL), registered with matplotlib on first use; any other installed CJK font of the list also serves."""
    from matplotlib import font_manager

    _register_packaged_cjk_font()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[name for name in _CJK_FONTS if name in installed]]


@functools.lru_cache(maxsize=1)
def _register_packaged_cjk_font() -> None:
    from matplotlib import font_manager

    try:
        import noto_cjk_sans_otc
    except ImportError:  # not installed: only fonts already on the system are used
        return
    path = str(noto_cjk_sans_otc.FONT_PATH)
    if not any(f.fname == path for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(path)


def _draw(plt, path: Path, title: str, groups: list[str], series: Mapping[str, list[float | None]], ylabel: str,
          width: float) -> None:
    horizontal = len(groups) > 8  # many categories: one row each, labels readable
    bars = max(1, len(series)) * len(groups)
    size = (8.0, min(40.0, 0.25 * bars + 1.5)) if horizontal else (max(6.0, min(16.0, 0.5 * bars + 2)), 4.5)
    fig, ax = plt.subplots(figsize=size)
    try:
        for i, (name, values) in enumerate(series.items()):
            offsets = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            heights = [v if v is not None else float("nan") for v in values]  # missing: no bar
            (ax.barh if horizontal else ax.bar)(offsets, heights, width, label=name)
        if horizontal:
            ax.set_yticks(range(len(groups)))
            ax.set_yticklabels(groups, fontsize=8)
            ax.invert_yaxis()  # first category on top, as in the table
            ax.set_xlabel(ylabel)
        else:
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0,
                               ha="right" if len(groups) > 4 else "center", fontsize=8)
            ax.set_ylabel(ylabel)
        values = [v for vs in series.values() for v in vs if v is not None]
        if values and min(values) >= 0:  # rates start at 0 and end at 1, so charts compare at a glance
            top = 1.0 if max(values) <= 1 else 1.05 * max(values)
            (ax.set_xlim if horizontal else ax.set_ylim)(0, top)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _suite_section(suite: str, per_model: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[str]:
    models = list(per_model)
    lines = [f"## {suite}", "", *metrics_table(per_model), ""]
    metrics = [m for m in _union(s.get("metrics", {}) for s in per_model.values())  # the unrounded twins: table only
               if not m.endswith("_unrounded") and any(_number(per_model[x].get("metrics", {}).get(m)) is not None for x in models)]
    if metrics:
        chart = Path("charts") / f"{_slug(suite)}__overall.png"
        bar_chart(out_dir / chart, f"{suite}: overall", metrics,
                  {x: [_number(per_model[x].get("metrics", {}).get(m)) for m in metrics] for x in models}, "score")
        lines += [f"![{suite} overall]({chart.as_posix()})", ""]
    for key in _union(s for s in per_model.values()):
        if key not in ("metrics", "by_category", "resume", "decimals") and (rows := nested_table(per_model, key)):
            lines += [f"### {suite}: {key}", "", *rows, ""]
    categories = _union(s.get("by_category", {}) for s in per_model.values())
    cat_metrics = _union(v for s in per_model.values() for v in s.get("by_category", {}).values())
    for metric in cat_metrics:
        lines += [f"### {suite}: {metric} per category", "", *category_table(per_model, metric), ""]
        chart = Path("charts") / f"{_slug(suite)}__{_slug(metric)}.png"
        series = {x: [_number(per_model[x].get("by_category", {}).get(c, {}).get(metric)) for c in categories]
                  for x in models}
        bar_chart(out_dir / chart, f"{suite}: {metric} per category", categories, series, metric)
        lines += [f"![{suite} {metric} per category]({chart.as_posix()})", ""]
    return lines


def write_report(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], out_dir: str | Path) -> Path:
    """Write ``report.md`` and its charts under ``out_dir`` from ``{model: {suite: summary}}``; returns the path."""
    out_dir = Path(out_dir)
    models = list(summaries)
    suites = _union(summaries[m] for m in models)
    lines = ["# Evaluation report", "", f"Models: {', '.join(models)}. Suites: {', '.join(suites)}.", "",
             ("Rates are fractions in [0, 1]; `failed` counts judgments that could not be made (counted, "
              "never guessed). Per-sample results: `<model>/<suite>.jsonl`; numbers: `summary.json`."), ""]
    for suite in suites:
        per_model = {m: summaries[m][suite] for m in models if suite in summaries[m]}
        lines += _suite_section(suite, per_model, out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
