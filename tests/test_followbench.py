"""FollowBench on small files written here in its official layouts (data, api_output, judge output)."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.followbench import (
    followbench_judge_prompt,
    followbench_scores,
    parse_followbench_judgment,
    read_followbench,
    run_followbench,
)
from novalign.eval.followbench_rules import check_example_template, rule_satisfied
from novalign.eval.judge import JudgeParseError
from novalign.eval.suite_api import SuiteContext
from novalign.llm import ChatRequest
from tests.scripted_llm import ScriptedLLM

JUDGED = [f"Write a poem{', ' + ', '.join(f'rule {j}' for j in range(1, k + 1)) if k else ''}." for k in range(6)]
E2E_TARGET = "name[Aromi], eatType[coffee shop]"


def content_file(tmp_path):
    """One judged example (quora, levels 0-5) and one rule-checked E2E example (levels 0-5)."""
    rows = [{"example_id": 1, "category": "content", "source": "quora", "level": k, "instruction": JUDGED[k],
             "target": ""} for k in range(6)]
    rows += [{"example_id": 2, "category": "content", "source": "E2E", "level": k,
              "instruction": f"Parse this sentence, level {k}.", "target": E2E_TARGET} for k in range(6)]
    path = tmp_path / "data" / "content_constraints.json"
    path.parent.mkdir()
    path.write_text(json.dumps(rows, indent=4))
    return path


def outputs(folder, name, key, pairs):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w") as fh:
        for prompt, content in pairs:
            fh.write(json.dumps({key: prompt, "choices": [{"message": {"content": content}}]}) + "\n")
    return folder


def test_parse_judgment_like_the_official_parser():
    assert parse_followbench_judgment("1) ...\n2) ...\n['YES']", 1) == (1, 1.0)
    assert parse_followbench_judgment("analysis\nNO", 1) == (0, 0.0)
    assert parse_followbench_judgment("```\nx\n['YES', 'PARTIAL', 'YES']\n```", 3) == (0, pytest.approx(2 / 3))
    assert parse_followbench_judgment("x\n['YES', 'YES']", 2) == (1, 1.0)
    for text, level in (("no verdict", 1), ("['YES']", 2), ("[YES, NO]", 2), ("['YES', 'OK']", 2),
                        ("['YES', 'NO']\nthanks", 2)):
        with pytest.raises(JudgeParseError):
            parse_followbench_judgment(text, level)


def test_judge_prompt_lists_every_step():
    level2 = followbench_judge_prompt("situation", JUDGED[:3], "A poem.")
    assert level2.startswith("Given an initial instruction, we add one situation constraint (information to "
                             "describe a specific situation/background) per time and obtain the final instruction "
                             "with 2 additional constraints.")
    assert "#Initial Instruction + 2 constraints#\nWrite a poem, rule 1, rule 2." in level2
    assert level2.endswith("only output a Python LIST with 2 elements ('YES' or 'NO') indicating whether the answer "
                           "satisfies each constraint.")
    assert "with 1 element ('YES' or 'NO')" in followbench_judge_prompt("mixed", JUDGED[:2], "A poem.")


def test_scores_by_hand():
    """One judged content example: hard 1, 1, 0, 1, 0 and soft 1, 1, 2/3, 3/4, 3/5 over levels 1-5 -> n_group 1,
    HSR 100, 100, 0, 100, 0; SSR 100, 100, 66.67, 75, 60 (2 dp); CSL 2 (levels 1-2, then level 3 fails);
    aggregator HSR (1*100 + 2*100 + 4*100) / 15 = 46.67, SSR (100 + 200 + 3*66.67 + 4*75 + 5*60) / 15 = 73.33."""
    hard, soft = [1, 1, 0, 1, 0], [1, 1, 2 / 3, 3 / 4, 3 / 5]
    records = [{"category": "content", "example_id": 1, "level": k + 1, "rule": False, "hard": hard[k],
                "soft": soft[k]} for k in range(5)]
    scores = followbench_scores(records)
    row = scores["by_category"]["content"]
    assert [row[f"hsr_level{k}"] for k in range(1, 6)] == [100.0, 100.0, 0.0, 100.0, 0.0]
    assert [row[f"ssr_level{k}"] for k in range(1, 6)] == [100.0, 100.0, 66.67, 75.0, 60.0]
    assert row["csl"] == 2.0
    assert scores["metrics"]["hsr"] == pytest.approx(700 / 15)
    assert scores["metrics"]["ssr"] == pytest.approx((100 + 200 + 3 * 66.67 + 300 + 300) / 15)


def test_rules():
    """xsum: level 1 one sentence; level 2 also under 20 space-split words; level 3 no "Newton Stewart"."""
    xsum = {"type": "mixed", "category": "content", "source": "xsum", "example_id": 3, "target": ""}
    assert rule_satisfied({**xsum, "level": 1}, "Newton Stewart is flooded")
    assert not rule_satisfied({**xsum, "level": 3}, "Newton Stewart is flooded")
    assert not rule_satisfied({**xsum, "level": 1}, "One. Two.")
    assert check_example_template("{{'AI assistant': '{answer}'}}", "{'AI assistant': 'Legal.com'}")
    assert not check_example_template("{{'AI assistant': '{answer}'}}", "AI assistant: Legal.com")
    fmt = {"type": "format", "category": "format", "source": "helpful_base", "example_id": 22, "target": ""}
    assert rule_satisfied({**fmt, "level": 1}, "a\n\nb\n\nc") and not rule_satisfied({**fmt, "level": 1}, "a\n\nb")


def test_suite_rescores_official_files(tmp_path):
    """E2E rule sample: the reply equals the target at levels 1, 2 and 4 only. Judged sample: judge lists as
    below. n_group = 5 // 5 + 5 // 5 = 2, so each level is (judged + rule) / 2: HSR 100, 100, 0, 50, 0; CSL
    (judged 2 + rule 2) / 2 = 2. A malformed judgment at level 5 is failed (not satisfied)."""
    data = content_file(tmp_path)
    rows = read_followbench(data)
    replies = {r["instruction"]: (E2E_TARGET if r["level"] in (1, 2, 4) else "wrong") if r["source"] == "E2E"
               else f"poem {r['level']}" for r in rows if r["level"]}
    answers = outputs(tmp_path / "api_output" / "m", "content_constraint.jsonl", "prompt", replies.items())
    verdicts = {1: "['YES']", 2: "['YES', 'YES']", 3: "['YES', 'NO', 'NO']", 4: "['YES', 'NO', 'YES', 'YES']",
                5: "I cannot tell"}
    judged = [r for r in rows if r["source"] == "quora" and r["level"]]
    judge_out = outputs(tmp_path / "judge" / "m", "content_constraint.jsonl", "prompt_new",
                        [(followbench_judge_prompt("content", r["chain"], f"poem {r['level']}"), verdicts[r["level"]])
                         for r in judged])
    written = []
    ctx = SuiteContext(name="followbench", data=tmp_path / "data", respond=None, judge=None, write=written.append,
                       options={"responses": str(answers), "judgments": str(judge_out)}, model_name="m", progress=False)
    summary = run_followbench(ctx)
    row = summary["by_category"]["content"]
    assert [row[f"hsr_level{k}"] for k in range(1, 6)] == [100.0, 100.0, 0.0, 50.0, 0.0]
    assert row["ssr_level3"] == pytest.approx(round(100 * (1 / 3) / 2, 2)) and row["csl"] == 2.0
    assert summary["num_samples"] == 10 and summary["num_failed"] == 1 and len(written) == 10


def test_suite_asks_model_and_judge(tmp_path):
    """The model (a scripted stand-in for an external endpoint) and the judge (another stand-in) are asked;
    the judge says all YES at levels 1-2 and a malformed reply first at level 3, re-asked and then all NO."""
    data = content_file(tmp_path)
    asked = {"judge": 0}

    def reply(route, messages):
        if route == "model":
            return E2E_TARGET
        asked["judge"] += 1
        level = messages[0]["content"].count("#Initial Instruction +")  # one header per added constraint
        if level >= 3:
            return "['NO']" if len(messages) == 1 else str(["NO"] * level)
        return str(["YES"] * level)

    llm = ScriptedLLM(reply)
    try:
        model = llm.client("model")
        respond = lambda convs, **k: [r.text for r in model.batch([ChatRequest(messages=c) for c in convs])]  # noqa: E731
        ctx = SuiteContext(name="followbench", data=data, respond=respond, judge=llm.client("judge"),
                           write=lambda r: None, options={}, model_name="m", progress=False)
        summary = run_followbench(ctx)
    finally:
        llm.close()
    row = summary["by_category"]["content"]
    assert [row[f"hsr_level{k}"] for k in range(1, 6)] == [100.0, 100.0, 50.0, 50.0, 50.0]
    assert asked["judge"] == 5 + 3 and summary["num_failed"] == 0


def test_reader_error_names_line_and_field(tmp_path):
    path = tmp_path / "style_constraints.json"
    path.write_text(json.dumps([{"example_id": 1, "category": "style", "source": "x", "level": 7, "instruction": "i"}]))
    with pytest.raises(DataError, match=r"style_constraints.json:1: field 'level': expected 0-5"):
        read_followbench(path)
