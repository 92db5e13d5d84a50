"""Readers of the official CFBench / SysBench / FB-Bench files, on small files in the published shapes
(``tests/data/eval``), and metrics recomputed from official judgment files.

The CFBench judgment file holds four samples shaped as in CFBench's ``output/judge/gpt4o_eval.json``, with the
published ``judge_score`` and ``judge_metric``; the FB-Bench one two rows of FB-Bench's
``model_judgment/gpt-4o-2024-08-06/phi-4.jsonl`` with their published ``score``. Recomputing must give the
published numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from novalign.data.io import DataError
from novalign.eval import benchmarks as bm
from novalign.eval.official import (
    cfbench_judged_record,
    fbbench_judged_record,
    iter_json_items,
    read_cfbench,
    read_fbbench,
    read_responses,
    read_sysbench,
    read_sysbench_judgments,
)

DATA = Path(__file__).parent / "data" / "eval"


def test_json_array_items_carry_the_line_they_start_on(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,\n   "b": 3},\n  {"a": 4}\n]\n', encoding="utf-8")
    assert [(line, rec["a"]) for line, rec in iter_json_items(path)] == [(2, 1), (3, 2), (5, 4)]
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert [line for line, _ in iter_json_items(lines)] == [1, 3]
    broken = tmp_path / "b.json"
    broken.write_text('[\n  {"a": 1},\n  {"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.json:3: malformed JSON"):
        list(iter_json_items(broken))


# ---------------------------------------------------------------------------------------------- CFBench


def test_read_cfbench_data():
    samples = read_cfbench(DATA / "cfbench_data.json")
    assert [s["id"] for s in samples] == ["0", "1", "2", "3"]
    assert samples[0]["category"] == "汽车" and samples[0]["split"] == "easy"  # from the published "doamin"
    assert [c[1] for c in samples[0]["criteria"]] == ["主需", "次需", "次需"]


def test_cfbench_recomputed_from_official_judgments_match_the_published_metrics():
    """Per sample: the published judge_metric. Overall (hand-worked) over the six samples:
    CSR (1 + .75 + .8 + .83 + 1 + 0) / 6 = .73, ISR 2/6, PSR 4/6; hard (first four) CSR 3.38/4 = .845,
    ISR 1/4, PSR 3/4; easy (the salvaged "0" and the failed "-1") CSR .5, ISR .5, PSR .5. Rounded to 2
    decimals as scores.xlsx: .73 .33 .67; hard .84 (numpy: 84.49999... -> 84) .25 .75; unrounded beside."""
    samples = read_cfbench(DATA / "cfbench_eval.json")
    published = [rec["judge_metric"] for _, rec in iter_json_items(DATA / "cfbench_eval.json")]
    records = [cfbench_judged_record(s) for s in samples]
    for record, metric in zip(records, published):
        assert {k: record[k] for k in ("CSR", "ISR", "PSR")} == pytest.approx(metric)
    assert [r["failed"] for r in records] == [False] * 5 + [True]
    m = bm.cfbench_metrics(records)
    official = {split: {k: m[split][k] for k in ("CSR", "ISR", "PSR", "num_samples")} for split in m}
    assert official["full"] == {"CSR": 0.73, "ISR": 0.33, "PSR": 0.67, "num_samples": 6}
    assert official["hard"] == {"CSR": 0.84, "ISR": 0.25, "PSR": 0.75, "num_samples": 4}  # .845 -> .84 as numpy rounds
    assert official["easy"] == {"CSR": 0.5, "ISR": 0.5, "PSR": 0.5, "num_samples": 2}
    assert m["full"]["ISR_unrounded"] == pytest.approx(2 / 6) and m["full"]["PSR_unrounded"] == pytest.approx(4 / 6)
    assert m["hard"]["CSR_unrounded"] == pytest.approx(3.38 / 4)


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["criteria"][1].__setitem__(1, "重要"), "criteria[1][1]"),
    (lambda r: r.pop("prompt"), "prompt"),
    (lambda r: r.__setitem__("criteria", []), "criteria"),
    (lambda r: r.__setitem__("judge_parsing", "2"), "judge_parsing"),
])
def test_bad_cfbench_record_names_file_line_and_field(tmp_path, edit, field):
    rows = json.loads((DATA / "cfbench_eval.json").read_text(encoding="utf-8"))
    edit(rows[1])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=4), encoding="utf-8")
    start = [line for line, _ in iter_json_items(path)][1]
    with pytest.raises(DataError) as err:
        read_cfbench(path)
    assert (err.value.line, err.value.field) == (start, field)
    assert str(err.value).startswith(f"{path}:{start}: field '{field}'")


# --------------------------------------------------------------------------------------------- SysBench


def test_read_sysbench_sessions():
    s1, s2 = read_sysbench(DATA / "sysbench_data.json")
    assert s1["id"] == "1" and s1["system"] == "你是一名数学老师。" and s1["multi_rounds_related"] is True
    assert [t["gold"] for t in s1["turns"]] == ["s1 gold one", "s1 gold two", "s1 gold three"]
    assert [c["type"] for c in s1["turns"][0]["criteria"]] == ["Role", "Format"]  # 角色约束, 格式约束
    assert [t["alignment"] for t in s2["turns"]] == ["align", "align", "misalign"]


def test_sysbench_metrics_from_official_judgments():
    """Session 1 verdicts [是, 否] [是] [是]; session 2's eval_results is null (a failed judging), so its three
    criteria count as unmet. CSR = 3/7; ISR = 2 of 6 turns; SSR = (0/3 + 0/3) / 2 = 0; Role CSR 2/2."""
    records = read_sysbench_judgments(DATA / "sysbench_eval.json")
    assert [r["failed"] for r in records] == [False, True]
    m = bm.sysbench_metrics(records)
    assert m["CSR"] == pytest.approx(3 / 7)
    assert m["ISR"] == pytest.approx(2 / 6)
    assert m["SSR"] == 0.0
    assert m["CSR_per_type"]["Role"] == 1.0 and m["CSR_per_type"]["Format"] == 0.0


def test_sysbench_other_verdicts_fail_no_turn(tmp_path):
    """Session 1's first turn [是, 否] becomes [是, 不适用]: the official 是否可用 rule passes a turn unless a
    verdict is 否, so session 1 now holds all three turns: ISR 3/6 (session 2 failed), SSR (3/3 + 0) / 2 = .5;
    CSR counts only 是, so it stays 3/7. "Every verdict is 是" would leave ISR 2/6 and SSR 0."""
    rows = json.loads((DATA / "sysbench_eval.json").read_text(encoding="utf-8"))
    rows[0]["eval_results"]["s1 question one"]["评判结果"]["2"] = "不适用"
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    m = bm.sysbench_metrics(read_sysbench_judgments(path))
    assert m["ISR"] == pytest.approx(3 / 6) and m["SSR"] == 0.5 and m["CSR"] == pytest.approx(3 / 7)


def test_bad_sysbench_record_names_the_field(tmp_path):
    rows = json.loads((DATA / "sysbench_data.json").read_text(encoding="utf-8"))
    del rows[1]["prompt_infos"]["s2 question two"]["criteria"]["1"]["criteria_type"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    start = [line for line, _ in iter_json_items(path)][1]
    with pytest.raises(DataError, match=rf"bad.json:{start}: field 'prompt_infos\[messages\[3\]\].criteria\[1\].criteria_type'"):
        read_sysbench(path)


# --------------------------------------------------------------------------------------------- FB-Bench


def test_read_fbbench_dataset_normalises_checklists():
    samples = read_fbbench(DATA / "fbbench_data.json")
    assert samples[0]["checklist"] == [["x [ok]", 0.5], ["y [no]", 0.3], ["z [ok]", 0.2]]
    assert samples[2]["checklist"] == [["m [no]", None], ["n [ok]", None]]  # any-of (response maintenance)
    assert len({s["id"] for s in samples}) == 4 and samples[1]["category"] == "Coding"


def test_fbbench_scores_from_official_judgments_match_the_published_ones():
    """Row 1: 是(.3) 否(.4) 是(.3) -> .6 (published .6); row 2: any-of 是 -> 1 (published 1); row 3: the
    official failed-API marker -> 0, marked failed. Type mode: error correction = mean(Text Error Correction
    .6, Reasoning 0) = .3; maintenance 1; overall mean(.6, 0, 1) = 1.6/3 = .53333, stored as .5333."""
    path = DATA / "fbbench_judgment.jsonl"
    records = [fbbench_judged_record(path, s) for s in read_fbbench(path)]
    published = [rec["score"] for _, rec in iter_json_items(path)]
    assert [r["score"] for r in records] == pytest.approx(published)
    assert [r["failed"] for r in records] == [False, False, True]
    m = bm.fbbench_metrics(records)
    assert m["error_correction"] == pytest.approx(0.3) and m["response_maintenance"] == 1.0
    assert m["overall"] == 0.5333 and m["overall_unrounded"] == pytest.approx(1.6 / 3)  # round(x, 4) as get_avg_score


def test_bad_fbbench_rows_name_line_and_field(tmp_path):
    rows = [json.loads(line) for line in (DATA / "fbbench_judgment.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[1]["checklist"] = [["a", 1.5]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'checklist\[0\]'"):
        read_fbbench(path)
    rows[1]["checklist"], rows[1]["bench_type"] = ["a"], "Error Fixing"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'bench_type'"):
        read_fbbench(path)


def test_read_responses_rejects_duplicates(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1, "response": "a"}\n{"id": 2, "response": "b"}\n', encoding="utf-8")
    assert read_responses(path) == {"1": "a", "2": "b"}
    path.write_text('{"id": 1, "response": "a"}\n{"id": 1, "response": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl:2: field 'id'"):
        read_responses(path)
