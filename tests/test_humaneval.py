"""HumanEval in its own formats (a problems file and an official samples file, written here in the published
shapes), scored by running prompt + completion + test + check(entry_point) in the sandbox."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.humaneval import (
    HumanEvalProblem,
    completion_from_reply,
    humaneval_program,
    read_humaneval,
    run_humaneval,
)
from novalign.eval.suite_api import SuiteContext

PROBLEMS = [
    {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n",
     "canonical_solution": "    return a + b\n", "entry_point": "add",
     "test": "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "HumanEval/1", "prompt": "import math\n\ndef root(x):\n    \"\"\"Square root.\"\"\"\n",
     "canonical_solution": "    return math.sqrt(x)\n", "entry_point": "root",
     "test": "def check(candidate):\n    assert candidate(9) == 3\n"},
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ctx_for(tmp_path, written, **options):
    return SuiteContext(name="he", data=jsonl(tmp_path / "HumanEval.jsonl", PROBLEMS), respond=None, judge=None,
                        write=written.append, done={}, options=options, peers={}, model_name="m", progress=False)


def test_program_is_the_official_harness():
    p = HumanEvalProblem("t", "def f(x):\n", "def check(candidate):\n    assert candidate(1) == 2\n", "f", 1)
    assert humaneval_program(p, "    return x + 1\n") == (
        "def f(x):\n    return x + 1\n\ndef check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)")


def test_samples_file_pass_at_k(tmp_path):
    """Task 0: samples [right, wrong] -> c = 1 of n = 2; task 1: [right, right] -> 2 of 2.
    pass@1 = mean(1/2, 2/2) = 0.75. Only k = 1 is reported by default: no task has 10 samples (as
    evaluate_functional_correctness). With k = [1, 2]: pass@2 = mean(1, 1) = 1."""
    samples = jsonl(tmp_path / "samples.jsonl", [
        {"task_id": "HumanEval/0", "completion": "    return a + b\n"},
        {"task_id": "HumanEval/0", "completion": "    return a - b\n"},
        {"task_id": "HumanEval/1", "completion": "    return math.sqrt(x)\n"},  # uses the prompt's import
        {"task_id": "HumanEval/1", "completion": "    return x ** 0.5\n"},
    ])
    written = []
    summary = run_humaneval(ctx_for(tmp_path, written, samples=str(samples)))
    assert summary["metrics"] == {"pass@1": 0.75} and summary["num_samples"] == 2
    by_id = {r["id"]: r for r in written}
    assert by_id["HumanEval/0"]["passed"] == [True, False] and by_id["HumanEval/0"]["reasons"][1] != "passed"
    assert run_humaneval(ctx_for(tmp_path, [], samples=str(samples), k=[1, 2]))["metrics"] == {"pass@1": 0.75,
                                                                                            "pass@2": 1.0}


def test_chat_replies_with_the_whole_function():
    """A reply that redefines the entry point goes after the prompt (a newline first); a bare body is the
    continuation; the last fenced block is the code."""
    p = HumanEvalProblem("t", "def f(x):\n", "def check(candidate):\n    pass\n", "f", 1)
    assert completion_from_reply(p, "Sure:\n```python\ndef f(x):\n    return 2\n```\nDone.") == "\ndef f(x):\n    return 2\n"
    assert completion_from_reply(p, "    return x\n") == "    return x\n"


def test_model_replies_are_run(tmp_path):
    """The model answers task 0 with the whole function (passes) and task 1 with a wrong body: pass@1 = 0.5."""
    def respond(convs):
        return ["```python\ndef add(a, b):\n    return a + b\n```" if "add" in c[-1]["content"] else "    return 0\n"
                for c in convs]
    written = []
    ctx = ctx_for(tmp_path, written)
    ctx.respond = respond
    summary = run_humaneval(ctx)
    assert summary["metrics"] == {"pass@1": 0.5} and [r["passed"] for r in written] == [[True], [False]]


def test_bad_files_name_line_and_field(tmp_path):
    bad = [dict(PROBLEMS[0]), dict(PROBLEMS[1], test="assert True\n")]
    with pytest.raises(DataError, match=r"HumanEval.jsonl:2: field 'test': defines no check"):
        read_humaneval(jsonl(tmp_path / "HumanEval.jsonl", bad))
    samples = jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "x"}])
    with pytest.raises(DataError, match=r"s.jsonl: field 'task_id': no sample for 1 problems"):
        run_humaneval(ctx_for(tmp_path, [], samples=str(samples)))
