"""MATH (Hendrycks et al. 2021, arXiv:2103.03874) in its own file format, scored as ``hendrycks/math``.

Data: the ``MATH/test`` folder of the release (``<subject>/<n>.json``, each ``{problem, level, type,
solution}``, ``level`` written ``"Level 3"``), or a JSON-lines / JSON-array file of such records (MATH-500 and
the PRM800K split add ``answer``, ``subject`` and ``unique_id``). The gold answer is the record's ``answer``
or, as the authors' ``evaluate_gpt3.py`` takes it, ``remove_boxed(last_boxed_only_string(solution))``
(:func:`novalign.eval.answers.hendrycks_boxed`).

The model is asked ``options.prompt`` (default: the problem, then "Please reason step by step, and put your
final answer within \\boxed{}."); its answer is read the same way (the last ``\\boxed{}``), and compared with
the authors' ``is_equiv`` (:func:`novalign.eval.math.hendrycks_equivalent`). ``options.equivalence:
math_verify`` compares with :func:`novalign.eval.math.answers_equivalent` instead, and ``options.extract:
cascade`` reads answers with :func:`novalign.eval.answers.math_answer` (box, ``####``, "answer is", last
number) -- both more lenient, and not what MATH's published numbers use.

Reported as the authors' script prints it: overall accuracy, per level (``accuracy_level<k>``; "Level ?"
problems count overall only) and per subject (``by_category``), fractions printed to 3 decimals.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval.answers import hendrycks_boxed, math_answer
from novalign.eval.math import answers_equivalent, hendrycks_equivalent
from novalign.eval.official import iter_json_items, read_responses
from novalign.eval.suite_api import SuiteContext

__all__ = ["DEFAULT_PROMPT", "math_level", "read_hendrycks_math", "run_hendrycks_math", "score_math_reply"]

DEFAULT_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
_LEVEL = re.compile(r"Level (\d+)")


def math_level(value: Any) -> int | None:
    """``"Level 3"`` -> 3 (the authors' ``int(level.split("Level ")[1])``); ``"Level ?"`` or none -> None; an
    integer level (MATH-500) as is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = _LEVEL.fullmatch(str(value).strip())
    return int(found.group(1)) if found else None


def _problem(path: Path, line: int | None, rec: dict, default_id: str) -> dict[str, Any]:
    for name in ("problem", "solution"):
        if not isinstance(rec.get(name), str) or not rec[name].strip():
            if name == "solution" and isinstance(rec.get("answer"), str):
                continue
            raise DataError(path, line, name, "missing or not a non-empty string")
    gold = rec.get("answer")
    if gold is None:
        gold = hendrycks_boxed(rec["solution"])
        if gold is None:
            raise DataError(path, line, "solution", "has no closed \\boxed{...} to take the answer from")
    elif not isinstance(gold, str):
        raise DataError(path, line, "answer", f"expected a string, got {type(gold).__name__}")
    subject = rec.get("type", rec.get("subject"))
    if not isinstance(subject, str):
        raise DataError(path, line, "type", "missing or not a string (the subject)")
    return {"id": str(rec.get("unique_id", default_id)), "problem": rec["problem"], "answer": gold,
            "level": math_level(rec.get("level")), "subject": subject}


def read_hendrycks_math(path: str | Path) -> list[dict[str, Any]]:
    """Problems ``{id, problem, answer, level, subject}`` from a MATH folder (ids ``<subject>/<n>.json``, in
    sorted order) or a JSON / JSON-lines file (ids ``unique_id``, else the line).

    Raises:
        DataError: naming the file (and line) and the field: a missing problem, a solution with no box.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise DataError(path, None, None, "no <subject>/<n>.json problem files in this folder")
        out = []
        for f in files:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f, None, None, f"not a JSON problem file: {exc}") from None
            if not isinstance(rec, dict):
                raise DataError(f, None, None, "expected one JSON object")
            out.append(_problem(f, None, rec, f.relative_to(path).as_posix()))
        return out
    out = [_problem(path, line, rec, str(line)) for line, rec in iter_json_items(path)]
    if not out:
        raise DataError(path, None, None, "no problems in this file")
    return out


def score_math_reply(reply: str, gold: str, *, extract: str = "hendrycks", equivalence: str = "hendrycks") -> dict:
    """``{extracted, correct}`` for one reply: extracted with :func:`hendrycks_boxed` (``extract="cascade"``:
    :func:`math_answer`), compared with ``is_equiv`` (``equivalence="math_verify"``: :func:`answers_equivalent`).
    A reply with no box is wrong under ``is_equiv`` (None against a gold answer)."""
    if extract not in ("hendrycks", "cascade") or equivalence not in ("hendrycks", "math_verify"):
        raise ValueError(f"extract must be hendrycks/cascade and equivalence hendrycks/math_verify, "
                         f"got {extract!r} / {equivalence!r}")
    found = hendrycks_boxed(reply) if extract == "hendrycks" else math_answer(reply)
    same = hendrycks_equivalent if equivalence == "hendrycks" else answers_equivalent
    return {"extracted": found, "correct": bool(same(found, gold))}


def _summary(records: list[dict]) -> dict[str, Any]:
    by_level: dict[int, list[bool]] = defaultdict(list)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if r["level"] is not None:
            by_level[r["level"]].append(r["correct"])
        by_subject[r["category"]].append(r["correct"])
    metrics = {"accuracy": sum(r["correct"] for r in records) / len(records)}
    metrics |= {f"accuracy_level{k}": sum(v) / len(v) for k, v in sorted(by_level.items())}
    return {"metrics": metrics, "by_category": {s: {"accuracy": sum(v) / len(v)} for s, v in sorted(by_subject.items())},
            "num_samples": len(records), "num_failed": 0, "decimals": {k: 3 for k in metrics}}


def run_hendrycks_math(ctx: SuiteContext) -> dict[str, Any]:
    """MATH: ``data`` a ``MATH/test`` folder or a file of MATH records; options ``prompt`` (a template with
    ``{problem}``), ``responses`` (``{id, response}`` records: score only), ``extract`` (``hendrycks`` |
    ``cascade``), ``equivalence`` (``hendrycks`` | ``math_verify``), ``batch_size``."""
    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r}: needs data (the MATH test folder or a MATH jsonl)")
    problems = read_hendrycks_math(ctx.data)
    how = {"extract": ctx.options.get("extract", "hendrycks"), "equivalence": ctx.options.get("equivalence", "hendrycks")}
    template = ctx.options.get("prompt", DEFAULT_PROMPT)
    if "{problem}" not in template:
        raise ValueError(f"suite {ctx.name!r}: options.prompt must contain {{problem}} (a str.format template)")
    records = {p["id"]: ctx.done[p["id"]] for p in problems if p["id"] in ctx.done}
    pending = [p for p in problems if p["id"] not in records]
    given = read_responses(ctx.options["responses"]) if ctx.options.get("responses") else None
    size = max(1, int(ctx.options.get("batch_size", 64)))
    for start in range(0, len(pending), size):
        batch = pending[start:start + size]
        if given is not None:
            missing = [p["id"] for p in batch if p["id"] not in given]
            if missing:
                raise ValueError(f"suite {ctx.name!r}: the responses file has no response for ids {missing[:5]}")
            replies = [str(given[p["id"]]) for p in batch]
        elif ctx.respond is not None:
            replies = ctx.respond([[{"role": "user", "content": template.format(problem=p["problem"])}] for p in batch])
        else:
            raise ValueError(f"suite {ctx.name!r}: no model to ask and no options.responses file")
        for p, reply in zip(batch, replies, strict=True):
            record = {"id": p["id"], "category": p["subject"], "level": p["level"], "failed": False, "response": reply,
                      "answer": p["answer"], **score_math_reply(reply, p["answer"], **how)}
            ctx.write(record)
            records[p["id"]] = record
    return _summary([records[p["id"]] for p in problems])
