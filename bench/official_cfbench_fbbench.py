"""Fidelity check: CFBench and FB-Bench judgments re-scored by novalign against the published score tables.

Usage::

    python bench/official_cfbench_fbbench.py --cfbench <CFBench checkout> --fbbench <FB-Bench checkout>

- CFBench: every ``output/judge/<model>_eval.json`` (per-sample ``judge_metric`` too) against the model's
  latest row of ``output/scores.xlsx`` (CSR / ISR / PSR, easy / hard / full, 2 decimals).
- FB-Bench: every ``data/feedback-benchmark/model_judgment/<judge>/<model>.jsonl`` against
  ``model_analysis/<judge>/overall_score.xlsx`` (error correction, response maintenance, overall; percent,
  2 decimals).

The repositories carry no license, so nothing of them is in novalign: point this at checkouts.
Prints one JSON line: cells compared, cells matched, and the mismatches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from novalign.eval import benchmarks as bm  # noqa: E402
from novalign.eval.official import (  # noqa: E402
    cfbench_judged_record,
    fbbench_judged_record,
    iter_json_items,
    read_cfbench,
    read_fbbench,
)


def _sheet_rows(path: Path, sheet: str | None = None) -> list[tuple]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        return [tuple(r) for r in (book[sheet] if sheet else book.active).iter_rows(values_only=True)]
    finally:
        book.close()


def check_cfbench(root: Path) -> dict:
    rows = _sheet_rows(root / "output" / "scores.xlsx", "score")
    published = {r[1]: dict(zip(rows[0], r)) for r in rows[1:]}  # the latest row of a model wins
    compared, bad = 0, []
    for path in sorted((root / "output" / "judge").glob("*_eval.json")):
        model = path.name[: -len("_eval.json")]
        records = [cfbench_judged_record(s) for s in read_cfbench(path)]
        for (_, rec), r in zip(iter_json_items(path), records):
            stored = rec.get("judge_metric")
            stored = json.loads(stored.replace("'", '"')) if isinstance(stored, str) else stored
            compared += 1
            if stored and {k: float(v) for k, v in stored.items()} != {k: r[k] for k in ("CSR", "ISR", "PSR")}:
                bad.append(f"{model}: sample {r['id']} judge_metric")
        splits = bm.cfbench_metrics(records)
        for split, prefix in (("full", ""), ("easy", "_easy"), ("hard", "_hard")):
            for m in ("CSR", "ISR", "PSR"):
                want = published.get(model, {}).get(f"{m}{prefix}")
                if want is None:
                    continue
                compared += 1
                if split not in splits or abs(splits[split][m] - want) > 1e-9:
                    bad.append(f"{model}: {m}{prefix} published {want}, novalign {splits.get(split, {}).get(m)}")
    return {"compared": compared, "mismatches": bad}


def check_fbbench(root: Path) -> dict:
    base = root / "data" / "feedback-benchmark"
    compared, bad = 0, []
    for judge_dir in sorted((base / "model_judgment").iterdir()):
        analysis = base / "model_analysis" / judge_dir.name
        overall = {r[0]: r[1:4] for r in _sheet_rows(analysis / "overall_score.xlsx")[1:]}
        for path in sorted(judge_dir.glob("*.jsonl")):
            model = path.stem
            m = bm.fbbench_metrics([fbbench_judged_record(path, s) for s in read_fbbench(path)])
            ours = [m["error_correction"], m["response_maintenance"], m["overall"]]
            for name, mine, want in zip(("EC", "RM", "overall"), ours, overall.get(model, ())):
                compared += 1
                if mine is None or abs(mine * 100 - want) > 1e-9:
                    bad.append(f"{judge_dir.name}/{model}: {name} published {want}, novalign {mine}")
    return {"compared": compared, "mismatches": bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfbench", type=Path, help="a CFBench checkout")
    parser.add_argument("--fbbench", type=Path, help="an FB-Bench checkout")
    args = parser.parse_args()
    out = {}
    if args.cfbench:
        out["cfbench"] = check_cfbench(args.cfbench)
    if args.fbbench:
        out["fbbench"] = check_fbbench(args.fbbench)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
