"""Prompt-system steps in pipelines: label filters and balance, coverage reports, the `data label` CLI with
scripted labelers standing in for external LLMs. label -> train -> classify against `novalign serve` is in
test_prompt_serve.py."""

from __future__ import annotations

import json
import re
import warnings

from novalign.data.io import write_jsonl
from novalign.flywheel.coverage import coverage_report, write_coverage
from novalign.flywheel.pipeline import Pipeline
from novalign.flywheel.taxonomy import load_taxonomy, parse_taxonomy


def _labeled(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "labels": {"ability": a, "language": lang, "difficulty": d},
             "label_confidence": {"ability": c, "language": 1.0, "difficulty": 1.0}}
            for i, (a, lang, d, c) in enumerate([("Math", "en", "easy", 0.9), ("Math", "zh-Hans", "difficult", 0.4),
                                                 ("Code", "fr", "difficult", 0.95), ("KQA", "en", "intermediate", 0.99),
                                                 ("Math", "en", "difficult", 0.8), ("Code", "en", "easy", 0.7)])]
    rows.append({"id": "r6", "prompt": "p6", "labels": {"language": "en"}})  # not labeled on ability yet
    write_jsonl(tmp_path / "labeled.jsonl", rows)
    return tmp_path / "labeled.jsonl"


def test_label_filter_and_balance_steps(tmp_path):
    """Filter (report 3.3): drop easy prompts, keep zh/en, confidence >= 0.5 on those dimensions. r0 and r5
    (easy) and r2 (French) are dropped; r6 has no difficulty label and is dropped (counted); r1's low
    confidence is on ability, which this filter does not read: r1, r3, r4 stay. Filtering on ability at
    0.5 drops r1 (0.4) and r6 (no ability). Balance by ability, equal shares over the three present (Math 3,
    Code 2, KQA 1): one of each."""
    p = Pipeline(tmp_path / "run", progress=False).source("s", _labeled(tmp_path), id_field="id")
    p.step("filter", "label_filter", {"drop": {"difficulty": ["easy"]}, "keep": {"language": ["zh-Hans", "en"]},
                                      "min_confidence": 0.5})
    p.step("conf", "label_filter", {"keep": {"ability": ["Math", "KQA", "Code"]}, "min_confidence": 0.5},
           input="s")
    p.step("bal", "label_balance", {"field": "labels.ability"}, input="s")
    res = p.run()
    assert [r["_id"] for r in res.records("filter")] == ["r1", "r3", "r4"]
    stats = {s["name"]: s for s in res.steps}
    assert stats["filter"]["dropped_by_reason"] == {"difficulty easy dropped": 2, "language fr not kept": 1,
                                                    "no difficulty label": 1}
    assert [r["_id"] for r in res.records("conf")] == ["r0", "r2", "r3", "r4", "r5"]  # r1 0.4, r6 no ability
    assert sorted(r["labels"]["ability"] for r in res.records("bal")) == ["Code", "KQA", "Math"]
    assert stats["bal"]["dropped_by_reason"] == {"over the Math quota": 2, "over the Code quota": 1, "no labels.ability": 1}
    assert stats["conf"]["dropped_by_reason"] == {"ability confidence below 0.5": 1, "no ability label": 1}


def test_coverage_counts_thin_empty_and_chinese_charts(tmp_path):
    """Counts by hand over the 7 records: ability Math 3, Code 2, KQA 1, one unlabeled; every other ability
    empty; with min_count 2 KQA is thin. Language fr 1 of 7. A taxonomy with Chinese label names renders
    its charts without missing-glyph warnings (the CJK font of the README's set-up)."""
    from novalign.data.io import iter_records

    records = [r for _, r in iter_records(_labeled(tmp_path))]
    t = load_taxonomy()
    rep = coverage_report(records, t, min_count=2, targets={"language": {"zh-Hans": 1, "en": 1}})
    ab = rep["dimensions"]["ability"]
    assert {k: v for k, v in ab["counts"].items() if v} == {"Math": 3, "KQA": 1, "Code": 2} and ab["missing"] == 1
    assert ab["thin"] == ["KQA"] and "Reason" in ab["empty"] and len(ab["empty"]) == 6
    assert rep["dimensions"]["language"]["balance"]["en"] == {"share": round(5 / 7, 4), "target": 0.5,
                                                             "diff": round(5 / 7 - 0.5, 4)}
    tab = rep["crosstabs"]["ability x language"]
    assert tab["counts"][tab["rows"].index("Math")][tab["cols"].index("en")] == 2
    zh = parse_taxonomy("name: 中文\nversion: '1'\ndimensions:\n  - name: ability\n    description: 能力\n"
                        "    labels:\n      - {name: 数学}\n      - {name: 代码}\n  - name: language\n"
                        "    labels:\n      - {name: 简体中文}\n      - {name: 英文}\n")
    zh_records = [{"labels": {"ability": "数学", "language": "简体中文"}}, {"labels": {"ability": "代码"}}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_coverage(zh_records, zh, tmp_path / "cov", crosstabs=[("ability", "language")])
    assert not [w for w in caught if "missing from" in str(w.message)], [str(w.message) for w in caught]
    assert all((tmp_path / "cov" / n).stat().st_size > 1000 for n in ("coverage_bars.png", "heatmap_ability_x_language.png"))
    assert "| 数学 |" in (tmp_path / "cov" / "coverage.md").read_text() and out["records"] == 2


def test_cli_label_review_import_and_coverage(tmp_path):
    """`novalign data label` with three scripted labelers (stand-ins for external LLMs; one fails every
    reply), the review queue it writes, human corrections that win through `data label-import`, `data
    coverage`; a broken taxonomy stops with its file and line."""
    from typer.testing import CliRunner

    from novalign.cli import app
    from novalign.data.annotation import AnnotationResult, read_tasks, write_results
    from novalign.world.prompt_pool import generate_pool
    from scripted_llm import ScriptedLLM

    pool = generate_pool(12, seed=5)
    truth = {r["prompt"]: r["true_labels"] for r in pool}
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": r["prompt"]} for r in pool])

    def reply(route, messages):
        if route == "broken":
            return "I think it is about maths."
        labels = dict(truth[re.search(r"<<<\n(.*)\n>>>", messages[-1]["content"], re.S).group(1)])
        if route == "lazy":
            labels["constraints"] = "unconstrained"
        return json.dumps(labels)

    ext = ScriptedLLM(reply)
    runner = CliRunner()
    try:
        base = ["data", "label", str(tmp_path / "p.jsonl"), str(tmp_path / "l.jsonl"), "--run-dir", str(tmp_path / "run"),
                "--labeler", f"a=m@{ext.base_url('good')}", "--labeler", f"b=m@{ext.base_url('lazy')}",
                "--labeler", f"c=m@{ext.base_url('broken')}", "--method", "majority", "--review-share", "0.05",
                "--review-out", str(tmp_path / "queue.jsonl")]
        ok = runner.invoke(app, base)
        bad_tax = tmp_path / "bad.yaml"
        bad_tax.write_text("name: x\nversion: '1'\ndimensions:\n  - name: ability\n    labels: []\n")
        bad = runner.invoke(app, base + ["--taxonomy", str(bad_tax)])
    finally:
        ext.close()
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output.strip().splitlines()[-1])
    assert summary["records"] == 12 and summary["votes"] == 36 and summary["votes_failed"] == 12
    assert bad.exit_code != 0 and f"{bad_tax}:5: ability: labels is an empty level" in bad.output
    tasks, _ = read_tasks([tmp_path / "queue.jsonl"])
    assert len(tasks) == summary["review_tasks"] >= 1 and all(t.kind == "labels" for t in tasks)
    first = tasks[0]  # a constraints tie (a and b disagree wherever the truth is not 'unconstrained')
    assert first.meta["review"] and first.confidence[first.meta["review"][0]] == 0.5
    write_results(tmp_path / "res.jsonl", [AnnotationResult(task_id=first.task_id, annotator="ann", kind="labels",
                                                            labels={"constraints": "strong"})])
    imp = runner.invoke(app, ["data", "label-import", str(tmp_path / "l.jsonl"), str(tmp_path / "res.jsonl"),
                              "--out", str(tmp_path / "fixed.jsonl")])
    assert imp.exit_code == 0, imp.output
    fixed = {r["id"]: r for r in map(json.loads, (tmp_path / "fixed.jsonl").read_text().splitlines())}
    assert fixed[first.task_id]["labels"]["constraints"] == "strong"
    assert fixed[first.task_id]["label_source"] == {"constraints": "human:ann"}
    cov = runner.invoke(app, ["data", "coverage", str(tmp_path / "fixed.jsonl"), "--out", str(tmp_path / "cov")])
    assert cov.exit_code == 0, cov.output
    rep = json.loads((tmp_path / "cov" / "coverage.json").read_text())
    assert sum(rep["dimensions"]["ability"]["counts"].values()) == 12
