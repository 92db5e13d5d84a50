"""HumanEval (Chen et al. 2021, arXiv:2107.03374) in its own file formats, scored as ``openai/human-eval`` does.

Problems are ``HumanEval.jsonl`` lines ``{task_id, prompt, canonical_solution, test, entry_point}``: ``prompt``
is a function signature and docstring, ``test`` defines ``check(candidate)``. A completion is judged the way
``human_eval.execution.check_correctness`` builds its program::

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

run in novalign's sandbox (:mod:`novalign.eval.sandbox`); it passes when that program exits cleanly.
``pass@k`` is the unbiased estimator per task, averaged, reported for each k that every task has at least k
samples for (``evaluate_functional_correctness``: ks 1, 10, 100).

Completions come from a samples file in the official format (``{task_id, completion}`` per line, several
lines per task for pass@k: ``options.samples``) or from the model, asked the prompt. A chat model may answer
with the whole function in a fenced block rather than the continuation: a reply whose code defines
``entry_point`` is placed after the prompt (the prompt's imports stay, the new definition wins); any other
reply is taken as the continuation itself.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from novalign.data.io import DataError, iter_records
from novalign.eval.metrics import pass_at_k
from novalign.eval.suite_api import SuiteContext

__all__ = ["HumanEvalProblem", "completion_from_reply", "humaneval_program", "read_humaneval", "read_samples",
           "run_humaneval"]

OFFICIAL_KS = (1, 10, 100)


@dataclass(frozen=True)
class HumanEvalProblem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    line: int


def read_humaneval(path) -> list[HumanEvalProblem]:
    """Problems of a ``HumanEval.jsonl`` (published gzipped as ``HumanEval.jsonl.gz``: unpack it first).

    Raises:
        DataError: naming file, line and field: a missing string field, an ``entry_point`` that is not a
            Python name, a ``test`` without ``def check(``, or a repeated ``task_id``.
    """
    problems, seen = [], {}
    for line, record in iter_records(path):
        for name in ("task_id", "prompt", "test", "entry_point"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise DataError(path, line, name, "missing or not a non-empty string", reason=f"bad {name}")
        if not record["entry_point"].isidentifier():
            raise DataError(path, line, "entry_point", f"not a Python name: {record['entry_point']!r}")
        if "def check(" not in record["test"]:
            raise DataError(path, line, "test", "defines no check(candidate)", reason="bad test")
        if record["task_id"] in seen:
            raise DataError(path, line, "task_id", f"{record['task_id']!r} already on line {seen[record['task_id']]}")
        seen[record["task_id"]] = line
        problems.append(HumanEvalProblem(record["task_id"], record["prompt"], record["test"], record["entry_point"], line))
    return problems


def read_samples(path, problems: list[HumanEvalProblem]) -> dict[str, list[str]]:
    """``{task_id: [completion, ...]}`` from an official samples file (``{task_id, completion}`` lines).

    Raises:
        DataError: a line without string ``task_id``/``completion``, a task not among the problems, or a
            problem without any sample.
    """
    known = {p.task_id for p in problems}
    found: dict[str, list[str]] = defaultdict(list)
    for line, record in iter_records(path):
        for name in ("task_id", "completion"):
            if not isinstance(record.get(name), str):
                raise DataError(path, line, name, "missing or not a string", reason=f"bad {name}")
        if record["task_id"] not in known:
            raise DataError(path, line, "task_id", f"{record['task_id']!r} is not a problem of the data file")
        found[record["task_id"]].append(record["completion"])
    missing = [p.task_id for p in problems if p.task_id not in found]
    if missing:
        raise DataError(path, None, "task_id", f"no sample for {len(missing)} problems, e.g. {missing[:3]}")
    return dict(found)


def humaneval_program(problem: HumanEvalProblem, completion: str) -> str:
    """The program ``check_correctness`` runs: prompt + completion, the tests, and the call of ``check``.

    >>> p = HumanEvalProblem("t/0", "def f(x):\\n", "def check(c):\\n    assert c(1) == 2\\n", "f", 1)
    >>> print(humaneval_program(p, "    return x + 1\\n"))
    def f(x):
        return x + 1
    <BLANKLINE>
    def check(c):
        assert c(1) == 2
    <BLANKLINE>
    check(f)
    """
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[^\n]*\n(.*?)```", re.DOTALL)


def completion_from_reply(problem: HumanEvalProblem, reply: str) -> str:
    """What a model's reply adds after the prompt (see the module docstring): the code of its last fenced
    block (or the reply), after a newline when it defines the entry point itself.

    Examples (entry point ``f``): ``"    return x + 1"`` -> itself; ``"```python\\ndef f(x):\\n    return 2\\n```"``
    -> ``"\\ndef f(x):\\n    return 2\\n"``.
    """
    blocks = _FENCE.findall(reply)
    code = blocks[-1] if blocks else reply
    if re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, flags=re.MULTILINE):
        return "\n" + code
    return code


def _record(problem: HumanEvalProblem, completions: list[str], ks: list[int], limits, replies=None) -> dict:
    from novalign.eval.sandbox import run_python

    runs = [run_python(humaneval_program(problem, c), limits) for c in completions]
    correct = sum(r.passed for r in runs)
    record = {"id": problem.task_id, "category": "all", "failed": False, "completions": completions,
              "passed": [r.passed for r in runs], "reasons": [r.reason for r in runs], "n": len(runs),
              "num_correct": correct, "pass_at_k": {str(k): pass_at_k(len(runs), correct, k) for k in ks
                                                    if k <= len(runs)}}
    if replies is not None:
        record["responses"] = replies
    return record


def _ks(ctx: SuiteContext, samples: dict[str, list[str]] | None, n: int) -> list[int]:
    if "k" in ctx.options:
        return [int(k) for k in ctx.options["k"]]
    fewest = min(len(v) for v in samples.values()) if samples else n
    return [k for k in OFFICIAL_KS if k <= fewest]  # evaluate_functional_correctness: only ks all tasks reach


def run_humaneval(ctx: SuiteContext) -> dict[str, Any]:
    """HumanEval: completions from ``options.samples`` (official samples file) or the model (``options.n``
    replies per task, ``temperature``), each run with ``check(entry_point)`` in the sandbox; ``pass@k``.
    Sandbox options: ``timeout_s`` (default 3, as ``evaluate_functional_correctness``), ``cpu_seconds``,
    ``memory_mb``."""
    from novalign.eval.sandbox import SandboxLimits
    from novalign.eval.suites import _sample

    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r}: needs data (a HumanEval.jsonl)")
    problems = read_humaneval(ctx.data)
    samples = read_samples(ctx.options["samples"], problems) if "samples" in ctx.options else None
    n = int(ctx.options.get("n", 1))
    ks = _ks(ctx, samples, n)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"suite {ctx.name!r}: no k to report (k={ks}); give options.k")
    limits = SandboxLimits(wall_seconds=float(ctx.options.get("timeout_s", 3.0)),
                           cpu_seconds=int(ctx.options.get("cpu_seconds", 5)),
                           memory_bytes=int(ctx.options.get("memory_mb", 512)) * 2**20)
    records = {p.task_id: ctx.done[p.task_id] for p in problems if p.task_id in ctx.done}
    pending = [p for p in problems if p.task_id not in records]
    if samples is not None:
        for p in pending:
            records[p.task_id] = _record(p, samples[p.task_id], ks, limits)
            ctx.write(records[p.task_id])
    elif pending:
        temperature = ctx.options.get("temperature", 0.8 if n > 1 else None)
        replies = _sample(ctx, [[{"role": "user", "content": p.prompt}] for p in pending], n, temperature)
        for p, texts in zip(pending, replies, strict=True):
            records[p.task_id] = _record(p, [completion_from_reply(p, t) for t in texts], ks, limits, replies=texts)
            ctx.write(records[p.task_id])
    ordered = [records[p.task_id] for p in problems]
    metrics = {f"pass@{k}": sum(pass_at_k(r["n"], r["num_correct"], k) for r in ordered) / len(ordered)
               for k in ks if all(r["n"] >= k for r in ordered)}
    return {"metrics": metrics, "by_category": {}, "num_samples": len(ordered),
            "num_failed": sum(bool(r.get("failed")) for r in ordered)}
