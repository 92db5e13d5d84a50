"""Fidelity check: novalign re-scores SysBench's published workbooks and must give the published numbers.

Usage::

    python bench/official_sysbench.py <SysBench checkout>/output [--expected plot_tables.json]

For every ``*_analysis.xlsx`` under the folder (own history and ``with_gt_history_output/``):

- the workbook's own summary sheets (不同约束类型遵循, 不同轮次遵循, 最大连续遵循轮次), as published, against
  :func:`novalign.eval.sysbench_workbook.workbook_sheets` recomputed from sheet 详情 (exact, cell by cell;
  both the older 16-column and the later 19-column layout of 最大连续遵循轮次);
- with ``--expected``: the paper's tables, i.e. the values of ``plot/tab3_align.py``, ``tab4_turn.py`` and
  ``tab6_csr_full.py`` ``get_data`` per workbook (a JSON ``{"output/<model>": {"ssr": [13], "isr": [3],
  "csr": [7]}}`` the user makes by running those official functions), against
  :func:`novalign.eval.benchmarks.sysbench_metrics`.

The SysBench repository carries no license, so nothing of it is in novalign: point this at a checkout.
Prints one JSON line: per workbook CSR / ISR / SSR and the mismatches, and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from novalign.eval import benchmarks as bm  # noqa: E402
from novalign.eval.sysbench_workbook import read_sysbench_workbook, read_workbook_sheets, workbook_sheets  # noqa: E402

TYPES = {"动作约束": "Action", "内容约束": "Content", "背景约束": "Background", "角色约束": "Role",
         "格式约束": "Format", "风格约束": "Style", "total": "total"}
ORDER = ["Action", "Content", "Background", "Role", "Format", "Style"]


def sheet_mismatches(published: dict, mine: dict) -> list[str]:
    """Cells of the published summary sheets that the recomputation does not reproduce."""
    bad = []
    rows = published["不同约束类型遵循"]
    for j, name in enumerate(rows[0][1:], start=1):
        got = mine["不同约束类型遵循"][TYPES.get(name, name)]
        if [got["count"], got["satisfied"], got["rate"]] != [rows[1][j], rows[2][j], rows[3][j]]:
            bad.append(f"不同约束类型遵循[{name}]")
    rows = published["不同轮次遵循"]
    if mine["不同轮次遵循"]["count"] != list(rows[1][1:]) or mine["不同轮次遵循"]["rate"] != list(rows[2][1:]):
        bad.append("不同轮次遵循")
    rows = published["最大连续遵循轮次"]
    width = (len(rows[0]) - 1) // 3  # 5 turns, or 5 turns and a total
    for g, group in enumerate(("dependent", "parallel", "all")):
        s = mine["最大连续遵循轮次"][group]
        counts, rates = rows[1][1 + g * width:1 + (g + 1) * width], rows[2][1 + g * width:1 + (g + 1) * width]
        want_counts, want_rates = s["count"], s["rate"]
        if width == 6:  # the later layout; some workbooks hold the mean streak unrounded (its last digit
            # depends on the summation order, hence the tolerance)
            unrounded = abs(rates[-1] - s["mean_streak_exact"]) < 1e-12
            want_counts = want_counts + [s["count_total"]]
            want_rates = want_rates + [rates[-1] if unrounded else s["mean_streak"]]
        if list(counts) != want_counts or list(rates) != want_rates:
            bad.append(f"最大连续遵循轮次[{group}]")
    return bad


def plot_tables(m: dict) -> dict[str, list[float]]:
    """Our metrics in the order of the official get_data arrays."""
    dep, par = m["SSR_per_mode"]["dependent"], m["SSR_per_mode"]["parallel"]
    return {"ssr": dep["per_turn"] + [dep["SSR"]] + par["per_turn"] + [par["SSR"], m["SSR"]],
            "isr": [m["ISR_per_alignment"]["aligned"], m["ISR_per_alignment"]["misaligned"], m["ISR"]],
            "csr": [m["CSR_per_type"][t] for t in ORDER] + [m["CSR"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="the output/ folder of a SysBench checkout")
    parser.add_argument("--expected", type=Path, help="JSON of the official plot/ get_data values per workbook")
    args = parser.parse_args()
    expected = json.loads(args.expected.read_text(encoding="utf-8")) if args.expected else {}
    results, worst = [], 0.0
    for path in sorted(args.output.rglob("*_analysis.xlsx")):
        key = "output/" + str(path.parent.relative_to(args.output))
        sessions = read_sysbench_workbook(path)
        m = bm.sysbench_metrics(sessions)
        row = {"workbook": key, "CSR": m["CSR"], "ISR": m["ISR"], "SSR": m["SSR"],
               "sheet_mismatches": sheet_mismatches(read_workbook_sheets(path), workbook_sheets(sessions))}
        if key in expected:
            ours = plot_tables(m)
            row["plot_max_abs_diff"] = max(abs(a - b) for name in ours for a, b in zip(ours[name], expected[key][name], strict=True))
            worst = max(worst, row["plot_max_abs_diff"])
        results.append(row)
    print(json.dumps({"workbooks": len(results), "sheet_mismatches": sum(len(r["sheet_mismatches"]) for r in results),
                      "plot_compared": sum("plot_max_abs_diff" in r for r in results), "plot_max_abs_diff": worst,
                      "results": results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
