"""MATH in its release layout (``test/<subject>/<n>.json``), with the authors' answer reading and ``is_equiv``."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.answers import hendrycks_boxed
from novalign.eval.hendrycks_math import math_level, read_hendrycks_math, run_hendrycks_math, score_math_reply
from novalign.eval.math import hendrycks_equivalent, hendrycks_normalize
from novalign.eval.suite_api import SuiteContext


@pytest.mark.parametrize("a, b, same", [
    ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\\\dfrac{1}{2} +\\frac{1}{72}", True),  # dfrac, \!, \\ and \frac1{72}
    ("\\tfrac{1}{2} + \\frac1{72}", "\\\\frac{1}{2} + 2/3", False),
    ("10, 4, -2", "4, 10, -2", False),  # order matters: a string comparison
    ("10\\text{ units}", "10 ", True),  # units after "\text{ " are cut, spaces dropped
    ("10\\text{ units}", "100 ", False),
    ("10", "\\$10", True),
    ("\\left(x-2\\right)\\left(x+2\\right)", "(x-2)(x+2)", True),
    ("0.1", ".1", True), ("0.1, 4, 2", "4, .1, 2", False),
    ("10\\%", "10", True),
    ("0.5", "\\frac12", True), ("3/4", "\\dfrac{3}{4}", True), ("03/4", "\\frac{3}{4}", False),  # 03/4 not canonical
    ("k = 5", "5", True), ("abc = 5", "5", False),  # only a left side of at most two characters goes
    ("3.0", "3", False), ("\\sqrt3", "\\sqrt{3}", True), ("90^\\circ", "90", True),
])
def test_is_equiv_cases(a, b, same):
    """The authors' own test cases (math_equivalence_test.py) and the steps of _strip_string, one each."""
    assert hendrycks_equivalent(a, b) is same


def test_normalize_failures_compare_raw_strings():
    """Two unit markers or a bare trailing \\sqrt make the official normalizer fail; is_equiv then compares
    the raw strings: equal only when identical."""
    with pytest.raises(ValueError):
        hendrycks_normalize("1\\text{ m} 2\\text{ m}")
    assert hendrycks_equivalent("2\\sqrt", "2\\sqrt") and not hendrycks_equivalent("2\\sqrt", "2\\sqrt ")
    assert hendrycks_equivalent(None, None) and not hendrycks_equivalent(None, "1")


def test_boxed_reading_is_the_authors():
    assert hendrycks_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert hendrycks_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert hendrycks_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # every brace counts, escaped or not
    assert hendrycks_boxed("\\fbox{3}") is None and hendrycks_boxed("\\boxed{3") is None
    assert hendrycks_boxed("no box") is None


def math_folder(tmp_path):
    root = tmp_path / "MATH" / "test"
    problems = {"algebra/1.json": ("What is 1/2 + 1/2?", "Level 1", "Algebra", "It is $\\boxed{1}$."),
                "algebra/2.json": ("Half of 1?", "Level 2", "Algebra", "$\\boxed{\\frac{1}{2}}$"),
                "geometry/7.json": ("Angle?", "Level ?", "Geometry", "It is $\\boxed{90^\\circ}$.")}
    for rel, (problem, level, kind, solution) in problems.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps({"problem": problem, "level": level, "type": kind, "solution": solution}))
    return root


def test_reader_folder_and_errors(tmp_path):
    problems = read_hendrycks_math(math_folder(tmp_path))
    assert [(p["id"], p["answer"], p["level"]) for p in problems] == [
        ("algebra/1.json", "1", 1), ("algebra/2.json", "\\frac{1}{2}", 2), ("geometry/7.json", "90^\\circ", None)]
    assert math_level("Level 5") == 5 and math_level("Level ?") is None and math_level(4) == 4
    math500 = tmp_path / "test.jsonl"  # the MATH-500 layout: the answer given, integer levels, unique_id
    math500.write_text(json.dumps({"problem": "p", "solution": "s", "answer": "\\frac{1}{2}", "subject": "Algebra",
                                   "level": 2, "unique_id": "test/algebra/1.json"}) + "\n")
    assert read_hendrycks_math(math500) == [{"id": "test/algebra/1.json", "problem": "p", "answer": "\\frac{1}{2}",
                                             "level": 2, "subject": "Algebra"}]
    bad = tmp_path / "math500.jsonl"
    bad.write_text(json.dumps({"problem": "p", "solution": "no box", "subject": "Algebra", "level": 1}) + "\n")
    with pytest.raises(DataError, match=r"math500.jsonl:1: field 'solution': has no closed"):
        read_hendrycks_math(bad)


def test_suite_accuracy_per_level_and_subject(tmp_path):
    """Replies: box 1 (right), box 0.5 (right: 0.5 -> \\frac{1}{2}), box 90 (right: degrees dropped). A second
    run where the geometry reply has no box: 2/3; per level: level 1 1.0, level 2 1.0 ("Level ?" overall only)."""
    root = math_folder(tmp_path)
    answers = {"What is 1/2 + 1/2?": "\\boxed{1}", "Half of 1?": "so \\boxed{0.5}", "Angle?": "\\boxed{90}"}
    ctx = SuiteContext(name="math", data=root, write=lambda r: None, judge=None, model_name="m", progress=False,
                       respond=lambda convs: [answers[c[0]["content"].split("\n\n")[0]] for c in convs])
    assert run_hendrycks_math(ctx)["metrics"]["accuracy"] == 1.0
    answers["Angle?"] = "it is 90 degrees"
    summary = run_hendrycks_math(ctx)
    assert summary["metrics"] == {"accuracy": pytest.approx(2 / 3), "accuracy_level1": 1.0, "accuracy_level2": 1.0}
    assert summary["by_category"] == {"Algebra": {"accuracy": 1.0}, "Geometry": {"accuracy": 0.0}}
    assert score_math_reply("it is 90 degrees", "90^\\circ", extract="cascade")["correct"]  # the lenient reading
