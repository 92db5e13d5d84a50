"""MixEval-Hard on small files written here in the official data and answer layouts."""

from __future__ import annotations

import json
import random

import pytest

from novalign.data.io import DataError
from novalign.eval.mixeval import (
    freeform_correct_rule,
    mixeval_prompt,
    mixeval_scores,
    parse_choice_judge,
    parse_choice_rule,
    parse_freeform_rule,
    parse_score_judge,
    read_mixeval,
    run_mixeval,
)
from novalign.eval.judge import JudgeParseError
from novalign.eval.suite_api import SuiteContext
from tests.scripted_llm import ScriptedLLM

FREE = {"0": {"problem_type": "free-form", "context": None, "prompt": "How many legs has a spider?", "target": ["8"],
              "benchmark_name": "TriviaQA"},
        "1": {"problem_type": "free-form", "context": "Paris is in France.", "prompt": "Where is Paris?",
              "target": ["France", "the French Republic"], "benchmark_name": "DROP"}}
CHOICE = {"0": {"problem_type": "multiple-choice", "context": None, "prompt": "Capital of Italy?",
                "options": ["Paris", "Rome", "Oslo"], "target": [1], "benchmark_name": "MMLU"},
          "1": {"problem_type": "multiple-choice", "context": "", "prompt": "2 + 2?", "options": ["4", "5"],
                "target": [0], "benchmark_name": "MMLU"}}


def files(tmp_path):
    (tmp_path / "free-form.json").write_text(json.dumps(FREE, indent=4))
    (tmp_path / "multiple-choice.json").write_text(json.dumps(CHOICE, indent=4))
    return [str(tmp_path / "free-form.json"), str(tmp_path / "multiple-choice.json")]


def test_prompts_as_the_official_builders():
    entries = {e["id"]: e for e in read_mixeval_dicts()}
    assert mixeval_prompt(entries["freeform/1"]) == ("Question: Paris is in France.\nWhere is Paris?\n"
                                                     "Answer the question shortly.")
    assert mixeval_prompt(entries["multichoice/0"]) == ("Capital of Italy?\nA. Paris\nB. Rome\nC. Oslo\n"
                                                        "Answer with the option letter from the given choices directly.")


def read_mixeval_dicts():
    from novalign.eval.mixeval import _entry

    return [_entry("x", None, k, v) for k, v in FREE.items()] + [_entry("x", None, k, v) for k, v in CHOICE.items()]


def test_choice_rule_parser():
    """Earliest letter form wins: "B. Rome, not (A)" -> B at position 1. No letter form and more than five words:
    the first option text found ("rome" at 14). No letter, five words or fewer: the seeded random letter."""
    rng = random.Random(42)
    options = ["Paris", "Rome", "Oslo"]
    assert parse_choice_rule("B. Rome, not (A)", 3, options, rng) == "B"
    assert parse_choice_rule("The capital is Rome in my view", 3, options, rng) == "B"
    assert parse_choice_rule("C", 3, options, rng) == "C"
    assert parse_choice_rule("no idea", 3, options, random.Random(42)) == random.Random(42).choice("ABC")


def test_freeform_rule_parser():
    """"So the answer is 8 legs." -> tails after the answer words, the shortest "8 legs"; numbers 8 -> 8.0; gold "8"
    -> 8.0 matches. A gold string counts when inside a tail: "france" in "france"."""
    preds = parse_freeform_rule("So the answer is 8 legs.")
    assert "8 legs" in preds and 8.0 in preds and freeform_correct_rule(["8"], preds)
    assert freeform_correct_rule(["France"], parse_freeform_rule("Paris is in France"))
    assert not freeform_correct_rule(["8"], parse_freeform_rule("It has six legs"))


def test_judge_parsers():
    assert parse_choice_judge("... The option chosen by the model: [[C]].") == "C"
    assert parse_choice_judge("picked [B]") == "B"
    assert parse_score_judge("The correctness score: [[0.7]]") == 0.7
    for bad in ("no score", "[[1.5]]"):
        with pytest.raises(JudgeParseError):
            parse_score_judge(bad)


def test_scores_by_hand():
    """Free form 1, 0.5 (TriviaQA) -> 0.75; multiple choice 1, 0, 0 (MMLU) -> 0.333 (3 dp);
    overall 0.75 * 2/5 + 0.333 * 3/5 = 0.4998; per benchmark each split alone."""
    recs = [{"split": "freeform", "benchmark": "TriviaQA", "score": s} for s in (1, 0.5)]
    recs += [{"split": "multichoice", "benchmark": "MMLU", "score": s} for s in (1, 0, 0)]
    scores = mixeval_scores(recs)
    assert scores["metrics"]["score"] == pytest.approx(0.4998)
    assert scores["by_category"] == {"MMLU": {"score": 0.333}, "TriviaQA": {"score": 0.75}}


def test_suite_rule_parser_asks_the_model(tmp_path):
    """Replies: "8" (right), "Italy" (wrong: France), "B" (right), "(B)" (wrong, gold A) -> each split 0.5."""
    replies = {"How many legs": "8", "Where is Paris": "Italy", "Capital of Italy": "B", "2 + 2": "(B)"}

    def respond(convs):
        return [next(v for k, v in replies.items() if k in c[0]["content"]) for c in convs]

    ctx = SuiteContext(name="mixeval", data=None, respond=respond, judge=None, write=lambda r: None,
                       options={"files": files(tmp_path), "parser": "rule"}, model_name="m", progress=False)
    summary = run_mixeval(ctx)
    assert summary["metrics"] == {"score": 0.5, "freeform_score": 0.5, "multichoice_score": 0.5}
    assert summary["by_category"]["MMLU"] == {"score": 0.5}


def test_suite_judge_and_judge_results(tmp_path):
    """The judge (a scripted stand-in for the external grader) gives 0.8 to the free-form replies and picks
    B for both choices: free form 0.8, choice (1 + 0) / 2 = 0.5, overall 0.65. Then the official
    judge_results_ff file re-scored: its judge_score values 1.0 and 0.0 -> free form 0.5."""
    llm = ScriptedLLM(lambda route, msgs: "[[B]]" if "Options:" in msgs[-1]["content"] else "score [[0.8]]")
    try:
        ctx = SuiteContext(name="mixeval", data=None, respond=lambda convs: ["an answer"] * len(convs),
                           judge=llm.client("judge"), write=lambda r: None, options={"files": files(tmp_path)},
                           model_name="m", progress=False)
        summary = run_mixeval(ctx)
    finally:
        llm.close()
    assert summary["metrics"]["freeform_score"] == 0.8 and summary["metrics"]["score"] == pytest.approx(0.65)
    judged = tmp_path / "judge_results_ff_model_judge_gpt-3.5-turbo-0125.jsonl"
    judged.write_text("".join(json.dumps({**v, "id": k, "response": "r", "judge_response": "[[x]]",
                                          "judge_score": float(k == "0")}) + "\n" for k, v in FREE.items()))
    ctx = SuiteContext(name="mixeval", data=judged, respond=None, judge=None, write=lambda r: None,
                       options={}, model_name="m", progress=False)
    assert run_mixeval(ctx)["metrics"]["freeform_score"] == 0.5


def test_bad_target_names_field(tmp_path):
    bad = tmp_path / "multiple-choice.json"
    bad.write_text(json.dumps({"0": {**CHOICE["0"], "target": [7]}}))
    with pytest.raises(DataError, match=r"multiple-choice.json: field 'target': expected \[index"):
        read_mixeval(bad)
