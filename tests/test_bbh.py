"""BIG-Bench Hard on a small folder written here in the layout of the official repository (bbh/<task>.json,
cot-prompts/<task>.txt)."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.bbh import bbh_prompt, direct_exemplars, extract_bbh_answer, read_cot_prompt, run_bbh
from novalign.eval.suite_api import SuiteContext

COT = ("CANARY LINE\n-----\nEvaluate a Boolean expression.\n\n"
       "Q: not True is\nA: Let's think step by step.\nnot True = False. So the answer is False.\n\n"
       "Q: True or False is\nA: Let's think step by step. True or False = True. So the answer is True.")


def folder(tmp_path, examples):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "cot-prompts").mkdir()
    (tmp_path / "bbh" / "boolean_expressions.json").write_text(json.dumps({"canary": "x", "examples": examples}))
    (tmp_path / "cot-prompts" / "boolean_expressions.txt").write_text(COT)
    return tmp_path


def test_prompts_and_answers(tmp_path):
    shots = read_cot_prompt(folder(tmp_path, [{"input": "x", "target": "y"}]) / "cot-prompts" / "boolean_expressions.txt")
    assert bbh_prompt(shots, "not False is").endswith("So the answer is True.\n\nQ: not False is\nA: Let's think step by step.")
    assert direct_exemplars(shots) == ("Evaluate a Boolean expression.\n\nQ: not True is\nA: False\n\n"
                                       "Q: True or False is\nA: True")
    assert bbh_prompt(shots, "not False is", "direct").endswith("A: True\n\nQ: not False is\nA:")
    assert extract_bbh_answer("... = (B). So the answer is (B).\n\nQ: more") == "(B)"
    assert extract_bbh_answer("no phrase here ") == "no phrase here"
    assert extract_bbh_answer(" True\n", "direct") == "True"


def test_suite_accuracy_per_task(tmp_path):
    """Three examples; the model is right on two ("So the answer is True." for target True, and False),
    wrong on one: accuracy 2/3 for the task, and the mean over tasks is the same with one task."""
    root = folder(tmp_path, [{"input": "not False is", "target": "True"}, {"input": "not True is", "target": "False"},
                             {"input": "True and False is", "target": "False"}])
    answers = {"not False is": "True", "not True is": "False", "True and False is": "True"}

    def respond(convs):
        return [f"Step. So the answer is {answers[c[-1]['content'].rsplit('Q: ', 1)[1].split(chr(10))[0]]}."
                for c in convs]
    written = []
    ctx = SuiteContext(name="bbh", data=root, respond=respond, judge=None, write=written.append, done={}, options={},
                       peers={}, model_name="m", progress=False)
    summary = run_bbh(ctx)
    assert summary["metrics"]["accuracy"] == pytest.approx(2 / 3) and summary["by_category"] == {
        "boolean_expressions": {"accuracy": pytest.approx(2 / 3)}}
    assert [r["answer"] for r in written] == ["True", "False", "True"]


def test_bad_task_file_names_the_field(tmp_path):
    root = folder(tmp_path, [{"input": "x"}])
    ctx = SuiteContext(name="bbh", data=root, respond=lambda c: [], judge=None, write=lambda r: None, done={},
                       options={}, peers={}, model_name="m", progress=False)
    with pytest.raises(DataError, match=r"boolean_expressions.json: field 'examples\[0\].target'"):
        run_bbh(ctx)
