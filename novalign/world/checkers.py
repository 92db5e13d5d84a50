"""Checkers of the demo world: every task carries a ``check`` spec, and :func:`score` grades a response by it.

A spec is a small JSON-able dict, so it travels with the prompt into data files, RL prompt sets and
evaluation records:

* ``{"type": "answer", "answer": "7"}`` -- Math, Reason, KQA: the stated answer (the sentence after the first
  "answer is", else the whole reply) equals the gold answer, ignoring case, spaces and end punctuation;
* ``{"type": "ifeval", "instruction_id_list": [...], "kwargs": [...]}`` -- IF: IFEval's own verifiers
  (:mod:`novalign.eval.ifeval`), strict mode; the score is the fraction followed (partial credit for RL);
* ``{"type": "role", "rules": [{"kind": "starts_with", "text": "Arr!"}, ...]}`` -- Role / system message:
  the system prompt's rules, each a prefix / suffix / letter-case check or an IFEval instruction;
* ``{"type": "code", "tests": "assert f(1) == 2\\n..."}`` -- Code: the reply (a function, optionally in a
  markdown fence) followed by the tests runs in the sandbox (:mod:`novalign.eval.sandbox`); pass = exit 0 with
  the tests run to their end (an early ``sys.exit(0)`` fails), and with strict results (``"strict_results":
  true``, the default here): the reply's functions must return plain built-in data, so an object whose
  ``__eq__`` always says yes scores 0.

A response passes when ``score(...) == 1.0``. This is the report's "Golden Answer" AutoRator (section 3.3):
every world task is verifiable, so no judge model is needed.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# the first stated answer, not the last: a base model runs on and repeats itself (see novalign.eval.answers)
from novalign.eval.answers import first_stated_answer as final_answer

__all__ = ["CheckError", "final_answer", "normalize", "passes", "score", "extract_code"]


class CheckError(ValueError):
    """A malformed check spec (unknown type, missing field)."""


_FENCE = re.compile(r"```(?:python)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def normalize(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding spaces, quotes and end punctuation removed."""
    text = " ".join(text.strip().lower().split())
    return text.strip(" .!?\"'")


def extract_code(response: str) -> str:
    """The code in the first markdown fence, or the whole response when it has none."""
    found = _FENCE.search(response)
    return found.group(1) if found else response


def _answer_score(response: str, spec: Mapping[str, Any]) -> float:
    if "answer" not in spec:
        raise CheckError(f"an answer check needs 'answer', got {dict(spec)}")
    return float(normalize(final_answer(response)) == normalize(str(spec["answer"])))


def _ifeval_fraction(response: str, ids: list[str], kwargs: list[Mapping[str, Any]]) -> float:
    from novalign.eval.ifeval import check_instruction

    if not ids:
        raise CheckError("an ifeval check needs a non-empty instruction_id_list")
    if len(ids) != len(kwargs):
        raise CheckError(f"instruction_id_list has {len(ids)} entries but kwargs has {len(kwargs)}")
    return sum(check_instruction(i, response, k) for i, k in zip(ids, kwargs)) / len(ids)


def _rule_holds(response: str, rule: Mapping[str, Any]) -> bool:
    kind = rule.get("kind")
    text = response.strip()
    if kind == "starts_with":
        return text.lower().startswith(str(rule["text"]).lower())
    if kind == "ends_with":
        return text.lower().endswith(str(rule["text"]).lower())
    if kind in ("lowercase", "uppercase"):  # no language test: the world's names are made up
        after = str(rule.get("after", ""))
        if after and text.lower().startswith(after.lower()):
            text = text[len(after):]
        letters = any(ch.isalpha() for ch in text)
        return letters and text == (text.lower() if kind == "lowercase" else text.upper())
    if kind == "ifeval":
        return _ifeval_fraction(response, [rule["id"]], [rule.get("kwargs", {})]) == 1.0
    raise CheckError(f"unknown role rule kind {kind!r} (expected starts_with, ends_with, lowercase, uppercase or ifeval)")


def _code_score(response: str, spec: Mapping[str, Any]) -> float:
    from novalign.eval.sandbox import SandboxLimits, run_tests

    if "tests" not in spec:
        raise CheckError(f"a code check needs 'tests', got {dict(spec)}")
    code = extract_code(response)
    if not code.strip():
        return 0.0
    limits = SandboxLimits(wall_seconds=5.0, cpu_seconds=2)
    # strict by default: this is an RL reward, and a policy can learn the "always equal" object hack
    return float(run_tests(code, spec["tests"], limits, strict_results=spec.get("strict_results", True)).passed)


def score(response: str, spec: Mapping[str, Any]) -> float:
    """Grade ``response`` against one check spec, in [0, 1] (1.0 = passed).

    IF and Role give partial credit (fraction of instructions / rules followed), the others 0 or 1.

    Raises:
        CheckError: the spec is malformed.
    """
    kind = spec.get("type")
    if kind == "answer":
        return _answer_score(response, spec)
    if kind == "ifeval":
        return _ifeval_fraction(response, list(spec.get("instruction_id_list", [])), list(spec.get("kwargs", [])))
    if kind == "role":
        rules = list(spec.get("rules", []))
        if not rules:
            raise CheckError("a role check needs at least one rule")
        return sum(_rule_holds(response, r) for r in rules) / len(rules)
    if kind == "code":
        return _code_score(response, spec)
    raise CheckError(f"unknown check type {kind!r} (expected answer, ifeval, role or code)")


def passes(response: str, spec: Mapping[str, Any]) -> bool:
    """Whether the response meets every part of the spec (score 1.0)."""
    return score(response, spec) >= 1.0 - 1e-9
