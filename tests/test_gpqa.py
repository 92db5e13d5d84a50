"""GPQA from a small CSV written here with the official columns."""

from __future__ import annotations

import csv

import pytest

from novalign.data.io import DataError
from novalign.eval.gpqa import gpqa_prompt, parse_gpqa_answer, read_gpqa, run_gpqa
from novalign.eval.suite_api import SuiteContext

HEADER = ["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
          "Incorrect Answer 3", "Explanation", "Record ID", "High-level domain"]


def gpqa_csv(path, rows):
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for i, (q, c, w1, w2, w3, domain) in enumerate(rows):
            writer.writerow(["pre", q, c, w1, w2, w3, "because", f"rec{i}", domain])
    return path


ROWS = [("2 + 2?", "4", "3", "5", "22", "Math"), ("H2O is?", "water", "salt", "air", "iron", "Chemistry")]


def test_official_shuffle_and_prompt(tmp_path):
    """Seed 0: Python's Random(0) shuffles [w1, w2, w3, correct] to [w3, w1, w2, correct] for the first row and
    [w1, w2, correct, w3] for the second, so the answers are D and C (the baselines seed the global random
    the same way)."""
    examples = read_gpqa(gpqa_csv(tmp_path / "gpqa_diamond.csv", ROWS), seed=0)
    assert examples[0]["choices"] == ["22", "3", "5", "4"] and examples[0]["answer"] == "D"
    assert examples[1]["choices"] == ["salt", "air", "water", "iron"] and examples[1]["answer"] == "C"
    assert gpqa_prompt(examples[0]) == ("What is the correct answer to this question: 2 + 2?\n\nChoices:\n(A) 22\n"
                                        "(B) 3\n(C) 5\n(D) 4\n\nFormat your response as follows: "
                                        "\"The correct answer is (insert answer here)\"")


def test_answer_parsing():
    assert parse_gpqa_answer("Thinking... The correct answer is (B)") == "B"
    assert parse_gpqa_answer("Answer: (D)") == "D"
    assert parse_gpqa_answer("I pick (C) here") == "C"
    assert parse_gpqa_answer("(E) or (C)") is None and parse_gpqa_answer("no letter") is None


def test_suite_accuracy(tmp_path):
    """The model answers (D) to both: right on the first (D), wrong on the second (C) -> 0.5; Math 1, Chemistry 0."""
    path = gpqa_csv(tmp_path / "g.csv", ROWS)
    ctx = SuiteContext(name="gpqa", data=path, respond=lambda convs: ["The correct answer is (D)"] * len(convs),
                       judge=None, write=lambda r: None, done={}, options={}, peers={}, model_name="m", progress=False)
    summary = run_gpqa(ctx)
    assert summary["metrics"] == {"accuracy": 0.5}
    assert summary["by_category"] == {"Chemistry": {"accuracy": 0.0}, "Math": {"accuracy": 1.0}}


def test_empty_cell_names_row_and_column(tmp_path):
    path = gpqa_csv(tmp_path / "g.csv", [ROWS[0], ("Q", "a", "b", "", "d", "X")])
    with pytest.raises(DataError, match=r"g.csv:3: field 'Incorrect Answer 2': empty"):
        read_gpqa(path)
