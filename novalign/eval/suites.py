"""The suite registry of ``novalign eval``, and the suites that need no judge: IFEval, math and code.

Every suite is a plain function ``run(ctx: SuiteContext) -> summary`` (the contract is
:mod:`novalign.eval.suite_api`). :data:`SUITES` maps a config's ``type`` to ``"module:function"``; modules are
imported only when a suite of theirs runs, so a suite plugs in by name, and a config may also name any
``"package.module:function"`` of the user's own.

The three suites here score with plain functions that RL rewards reuse: the IFEval verifiers
(:mod:`novalign.eval.ifeval`), math answer equivalence (:mod:`novalign.eval.math`) and unit tests run in the
sandbox with the unbiased pass@k (:mod:`novalign.eval.sandbox`, :func:`novalign.eval.metrics.pass_at_k`).
Resumed samples (``ctx.done``) are re-scored from their stored responses, never re-asked.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from novalign.config.eval import SUITE_TYPES
from novalign.data.io import DataError, iter_records
from novalign.eval.ifeval import evaluate_example, read_ifeval_inputs
from novalign.eval.metrics import ifeval_accuracy, pass_at_k
from novalign.eval.suite_api import Conversation, Suite, SuiteContext

__all__ = ["SUITES", "extract_code", "read_code_data", "read_math_data", "resolve_suite", "run_code", "run_ifeval",
           "run_math"]

log = logging.getLogger("novalign.eval")

SUITES = SUITE_TYPES
"""Suite type (the config's ``type``) -> ``"module:function"``, imported on first use (the table lives in
:mod:`novalign.config.eval`, below this layer, so that configs validate without importing suites)."""


def resolve_suite(kind: str) -> Suite:
    """The suite function for a registry type or a ``"module:function"`` string.

    Raises:
        ValueError: an unknown type, or a target that does not import or is not callable.
    """
    target = SUITES.get(kind, kind if ":" in kind else None)
    if target is None:
        raise ValueError(f"unknown suite type {kind!r}; known: {', '.join(SUITES)} (or 'package.module:function')")
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"suite {kind!r}: cannot import {module_name} ({exc})") from exc
    suite = getattr(module, function, None)
    if not callable(suite):
        raise ValueError(f"suite {kind!r}: {module_name} has no function {function!r}")  # noqa: TRY004 - a config error
    return suite


# ------------------------------------------------------------------------------------------ shared helpers


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _need_respond(ctx: SuiteContext) -> Callable[[list[Conversation]], list[str]]:
    if ctx.respond is None:
        raise ValueError(f"suite {ctx.name!r} needs the model's responses: give model {ctx.model_name!r} a path, an "
                         "llm endpoint or a responses file")
    return ctx.respond


def _need_data(ctx: SuiteContext):
    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r} needs a data file (suites[].data)")
    return ctx.data


def _user(prompt: str) -> Conversation:
    return [{"role": "user", "content": prompt}]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _warn_unknown_done(ctx: SuiteContext, known: set[str]) -> None:
    stale = sorted(set(ctx.done) - known)
    if stale:
        log.warning("%s/%s: %d stored records have ids not in %s (ignored), e.g. %s", ctx.model_name, ctx.name,
                    len(stale), ctx.data, stale[:3])


def _stored_response(ctx: SuiteContext, sample_id: str, field: str = "response") -> Any:
    """The reply a resumed record holds; a record without one is from another suite writing under this name."""
    record = ctx.done[sample_id]
    if field not in record:
        raise ValueError(f"{ctx.model_name}/{ctx.name}.jsonl: the stored record {sample_id!r} has no {field!r}; it "
                         "was written by a different suite (use another suite name or output_dir)")
    return record[field]


def _accuracy_summary(records: list[dict], metric: str, value: Callable[[dict], float]) -> dict[str, Any]:
    """``metric`` as the mean of ``value(record)``, overall and per record category."""
    by_category: dict[str, list[float]] = defaultdict(list)
    for record in records:
        by_category[record["category"]].append(value(record))
    return {
        "metrics": {metric: _mean([value(r) for r in records])},
        "by_category": {c: {metric: _mean(v)} for c, v in sorted(by_category.items())},
        "num_samples": len(records),
        "num_failed": sum(bool(r.get("failed")) for r in records),
    }


# ------------------------------------------------------------------------------------------------- IFEval


def _ifeval_record(example, response: str) -> dict[str, Any]:
    result = evaluate_example(example, response).to_dict()
    return {"id": str(example.key), "category": example.instruction_id_list[0].split(":")[0], "failed": False,
            **result}


def run_ifeval(ctx: SuiteContext) -> dict[str, Any]:
    """IFEval (Zhou et al. 2023): the official input JSONL (``key``, ``prompt``, ``instruction_id_list``,
    ``kwargs``) answered by the model, checked by the 25 verifiers in strict and loose mode.

    Summary metrics: prompt- and instruction-level accuracy in both modes; ``by_category`` is per instruction
    id (instruction-level, strict and loose); ``by_group`` per id prefix (``keywords``, ...). A record is
    ``PromptResult.to_dict()`` plus ``id`` (the key), ``category`` (the first instruction's group), ``failed``.
    """
    examples = read_ifeval_inputs(_need_data(ctx))
    ids = [str(e.key) for e in examples]
    if len(set(ids)) != len(ids):
        twice = next(e for e in examples if ids.count(str(e.key)) > 1)
        raise DataError(ctx.data, twice.line, "key", f"key {twice.key!r} appears more than once", reason="duplicate key")
    _warn_unknown_done(ctx, set(ids))
    records: dict[str, dict] = {}
    for example in examples:
        if str(example.key) in ctx.done:
            records[str(example.key)] = _ifeval_record(example, _stored_response(ctx, str(example.key)))
    pending = [e for e in examples if str(e.key) not in records]
    if pending:
        respond = _need_respond(ctx)
        for batch in _batches(pending, int(ctx.options.get("batch_size", 64))):
            for example, response in zip(batch, respond([_user(e.prompt) for e in batch]), strict=True):
                record = _ifeval_record(example, response)
                ctx.write(record)
                records[record["id"]] = record
    ordered = [records[i] for i in ids]
    accuracy = ifeval_accuracy(ordered)
    strict, loose = accuracy["strict"], accuracy["loose"]
    return {
        "metrics": {"prompt_level_strict": strict["prompt_level"], "instruction_level_strict": strict["instruction_level"],
                    "prompt_level_loose": loose["prompt_level"], "instruction_level_loose": loose["instruction_level"]},
        "by_category": {k: {"strict": strict["per_instruction"][k], "loose": loose["per_instruction"][k]}
                        for k in strict["per_instruction"]},
        "by_group": {k: {"strict": strict["per_category"][k], "loose": loose["per_category"][k]}
                     for k in strict["per_category"]},
        "num_samples": len(ordered), "num_failed": 0, "num_instructions": accuracy["num_instructions"],
    }


# --------------------------------------------------------------------------------------------------- math


@dataclass(frozen=True)
class Problem:
    """One line of a math or code data file: a conversation to answer and what checks the reply."""

    id: str
    messages: Conversation
    category: str
    target: str  # the gold answer (math) or the test code (code)
    line: int


def _messages(path, line: int, record: dict) -> Conversation:
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(path, line, "messages", "must be a non-empty list of {role, content}", reason="bad messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(path, line, f"messages[{i}]", "needs string role and content", reason="bad messages")
        if messages[-1]["role"] != "user":
            raise DataError(path, line, f"messages[{len(messages) - 1}].role", "the last message must be the user's",
                            reason="bad messages")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise DataError(path, line, "prompt", "missing or not a non-empty string (or give messages)", reason="bad prompt")
    return _user(record["prompt"])


def _read_problems(path, target_field: str) -> list[Problem]:
    problems, seen = [], {}
    for line, record in iter_records(path):
        raw_id = record.get("id", line)
        if not isinstance(raw_id, (str, int)):
            raise DataError(path, line, "id", "must be a string or an integer", reason="bad id")
        if str(raw_id) in seen:
            raise DataError(path, line, "id", f"id {raw_id!r} already used on line {seen[str(raw_id)]}",
                            reason="duplicate id")
        seen[str(raw_id)] = line
        target = record.get(target_field)
        if isinstance(target, (int, float)) and target_field == "answer" and not isinstance(target, bool):
            target = str(target)
        if not isinstance(target, str) or not target.strip():
            raise DataError(path, line, target_field, "missing or not a non-empty string", reason=f"bad {target_field}")
        category = record.get("category", "all")
        if not isinstance(category, str):
            raise DataError(path, line, "category", "must be a string", reason="bad category")
        problems.append(Problem(str(raw_id), _messages(path, line, record), category, target, line))
    return problems


def read_math_data(path) -> list[Problem]:
    """Math JSONL: ``{id?, prompt | messages, answer, category?}`` per line (``id`` defaults to the line number;
    ``answer`` may be a number or a GSM8K solution ending in ``#### 72``).

    Raises:
        DataError: naming file, line and field.
    """
    return _read_problems(path, "answer")


def _math_record(problem: Problem, response: str) -> dict[str, Any]:
    from novalign.eval.math import answers_equivalent, extract_answer, gold_answer

    extracted = extract_answer(response)
    gold = gold_answer(problem.target)
    return {"id": problem.id, "category": problem.category, "failed": False, "prompt": problem.messages[-1]["content"],
            "response": response, "extracted": extracted, "answer": gold,
            "correct": answers_equivalent(extracted, gold)}


def run_math(ctx: SuiteContext) -> dict[str, Any]:
    """Math: the final answer is extracted from each reply (last ``\\boxed{}``, ``####``, "the answer is", last
    number) and compared with the gold answer for equivalence (math-verify). Metric: ``accuracy``."""
    problems = read_math_data(_need_data(ctx))
    _warn_unknown_done(ctx, {p.id for p in problems})
    records = {p.id: _math_record(p, _stored_response(ctx, p.id)) for p in problems if p.id in ctx.done}
    pending = [p for p in problems if p.id not in records]
    if pending:
        respond = _need_respond(ctx)
        for batch in _batches(pending, int(ctx.options.get("batch_size", 64))):
            for problem, response in zip(batch, respond([p.messages for p in batch]), strict=True):
                record = _math_record(problem, response)
                ctx.write(record)
                records[problem.id] = record
    return _accuracy_summary([records[p.id] for p in problems], "accuracy", lambda r: float(r["correct"]))


# --------------------------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str:
    """The program in a reply: the last fenced block tagged ``python``/``py`` (or untagged), else the last fenced
    block of any language, else the whole reply.

        >>> extract_code("Here:\\n```python\\nx = 1\\n```\\nDone.")
        'x = 1\\n'
    """
    blocks = _FENCE.findall(response)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3", "")]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else response


def read_code_data(path) -> list[Problem]:
    """Code JSONL: ``{id?, prompt | messages, tests, category?}`` per line; ``tests`` is Python code that raises
    (e.g. ``assert``) when the solution is wrong, run after the solution in one file (HumanEval style).

    Raises:
        DataError: naming file, line and field.
    """
    return _read_problems(path, "tests")


def _code_options(ctx: SuiteContext) -> tuple[int, list[int], float | None, Any]:
    from novalign.eval.sandbox import SandboxLimits

    n = int(ctx.options.get("n", 1))
    ks = [int(k) for k in ctx.options.get("k", [1])]
    if n < 1 or not ks or any(not 1 <= k <= n for k in ks):
        raise ValueError(f"suite {ctx.name!r}: options need n >= 1 and every k in 1..n (n={n}, k={ks})")
    temperature = ctx.options.get("temperature", 0.8 if n > 1 else None)
    limits = SandboxLimits(wall_seconds=float(ctx.options.get("timeout_s", 10.0)),
                           cpu_seconds=int(ctx.options.get("cpu_seconds", 5)),
                           memory_bytes=int(ctx.options.get("memory_mb", 512)) * 2**20)
    return n, ks, temperature, limits


def _code_record(problem: Problem, responses: list[str], ks: list[int], limits, strict: bool = False) -> dict[str, Any]:
    from novalign.eval.sandbox import run_tests

    runs = [run_tests(extract_code(r), problem.target, limits, strict_results=strict) for r in responses]
    correct = sum(run.passed for run in runs)
    return {"id": problem.id, "category": problem.category, "failed": False, "prompt": problem.messages[-1]["content"],
            "responses": responses, "passed": [run.passed for run in runs], "reasons": [run.reason for run in runs],
            "n": len(responses), "num_correct": correct,
            "pass_at_k": {str(k): pass_at_k(len(responses), correct, k) for k in ks}}


def _sample(ctx: SuiteContext, convs: list[Conversation], n: int, temperature: float | None) -> list[list[str]]:
    respond = _need_respond(ctx)
    if n == 1:
        return [[r] for r in respond(convs)]
    sampler = getattr(respond, "samples", None)
    if sampler is None:
        raise ValueError(f"suite {ctx.name!r}: n={n} needs a model that samples (path or llm), not a responses file")
    return sampler(convs, n=n, temperature=temperature)


def run_code(ctx: SuiteContext) -> dict[str, Any]:
    """Code: n replies per problem (greedy for n = 1; options ``n``, ``k`` (list), ``temperature``), the program of
    each (:func:`extract_code`) run with the problem's tests in the sandbox, and the unbiased pass@k (Chen et al.
    2021) per problem, averaged. Sandbox options: ``timeout_s``, ``cpu_seconds``, ``memory_mb``, and
    ``strict_results`` (default false, as the official harnesses run; true refuses non-plain return values --
    :func:`novalign.eval.sandbox.run_python`)."""
    n, ks, temperature, limits = _code_options(ctx)
    strict = bool(ctx.options.get("strict_results", False))
    problems = read_code_data(_need_data(ctx))
    _warn_unknown_done(ctx, {p.id for p in problems})
    records = {}
    for p in problems:
        if p.id in ctx.done:
            stored = _stored_response(ctx, p.id, "responses")
            if len(stored) != n:
                raise ValueError(f"suite {ctx.name!r}: the stored record {p.id!r} has {len(stored)} samples but "
                                 f"options.n = {n}; use another suite name or output_dir")
            passed = _stored_response(ctx, p.id, "passed")  # the tests already ran: not run again
            records[p.id] = {**ctx.done[p.id], "pass_at_k": {str(k): pass_at_k(n, sum(passed), k) for k in ks}}
    pending = [p for p in problems if p.id not in records]
    for batch in _batches(pending, max(1, int(ctx.options.get("batch_size", 64)) // n)):
        for problem, responses in zip(batch, _sample(ctx, [p.messages for p in batch], n, temperature), strict=True):
            record = _code_record(problem, responses, ks, limits, strict)
            ctx.write(record)
            records[problem.id] = record
    ordered = [records[p.id] for p in problems]
    summary = _accuracy_summary(ordered, f"pass@{ks[0]}", lambda r: r["pass_at_k"][str(ks[0])])
    for k in ks[1:]:
        extra = _accuracy_summary(ordered, f"pass@{k}", lambda r, k=k: r["pass_at_k"][str(k)])
        summary["metrics"].update(extra["metrics"])
        for category, values in extra["by_category"].items():
            summary["by_category"][category].update(values)
    return summary
