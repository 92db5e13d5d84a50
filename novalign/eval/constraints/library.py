"""The constraint library: typed, described, deterministically checked constraint types (report section 4.1).

A :class:`ConstraintType` has a ``name`` (``"keywords:existence"``, ``"format:table_shape"``), a ``category``,
several natural-language ``descriptions`` (templates with ``{param}`` placeholders, so one type can be phrased
many ways when prompts are expanded), typed :class:`Param` s, a deterministic ``validator(response, **params)
-> bool`` and ``cues``: regular expressions that say an instruction text states a constraint of this type (used
to measure coverage and to check that a reversed prompt states an attribute).

A constraint *instance* is a plain dict, the shape prompt records carry in ``labels.constraints`` style fields::

    {"type": "length_constraints:number_words", "params": {"num_words": 100, "relation": "less than"},
     "text": "Answer in less than 100 words."}

One registry (:data:`REGISTRY`) serves data synthesis (expansion, reversal), RL rewards
(:func:`constraint_reward`) and evaluation (:func:`check_all`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from novalign.eval.constraints import ifeval_types  # noqa: F401, I001 - fills the registry: IFEval's 25 first
from novalign.eval.constraints import cfbench_types  # noqa: F401 - then the CFBench-style types
from novalign.eval.constraints.base import REGISTRY, ConstraintError, ConstraintType, Param, checked_params, register

__all__ = [
    "ConstraintError", "ConstraintType", "Param", "REGISTRY", "check", "check_all", "constraint_reward", "describe",
    "expressed", "get", "instance", "matching_types", "register", "validate_params",
]

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()


def get(name: str) -> ConstraintType:
    """The registered type ``name``; an unknown name raises with the closest known one."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConstraintError(f"unknown constraint type {name!r}{hint}")
    return REGISTRY[name]


def validate_params(name: str, params: Mapping[str, Any] | None, ctype: ConstraintType | None = None) -> dict:
    """``params`` checked against type ``name`` 's parameters (:func:`~.base.checked_params`)."""
    return checked_params(ctype or get(name), params)


def instance(name: str, params: Mapping[str, Any] | None = None, variant: int = 0) -> dict:
    """A checked constraint instance with its text (description ``variant``)."""
    params = validate_params(name, params)
    return {"type": name, "params": params, "text": describe(name, params, variant)}


def _render_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(f'"{v}"' for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(name: str, params: Mapping[str, Any] | None = None, variant: int = 0) -> str:
    """Description ``variant`` (modulo their number) of type ``name`` with its parameters filled in."""
    ctype = get(name)
    template = ctype.descriptions[variant % len(ctype.descriptions)]
    values = {k: _render_value(v) for k, v in validate_params(name, params, ctype).items()}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def _as_instance(constraint: Mapping[str, Any], where: str) -> tuple[ConstraintType, dict]:
    if not isinstance(constraint, Mapping) or not isinstance(constraint.get("type"), str):
        raise ConstraintError(f"{where}: a constraint must be an object with a string 'type', got {constraint!r}")
    ctype = get(constraint["type"])
    return ctype, validate_params(ctype.name, constraint.get("params") or {}, ctype)


def check(constraint: Mapping[str, Any], response: str) -> bool:
    """Whether ``response`` satisfies one constraint instance. An empty (whitespace) response satisfies none,
    as in IFEval."""
    ctype, params = _as_instance(constraint, "constraint")
    return bool(response.strip()) and bool(ctype.validator(response, **params))


def check_all(response: str, constraints: Sequence[Mapping[str, Any]]) -> list[bool]:
    """One verdict per constraint instance (evaluation)."""
    return [check(c, response) for c in constraints]


def constraint_reward(response: str, constraints: Sequence[Mapping[str, Any]]) -> float:
    """The fraction of ``constraints`` the response satisfies, in [0, 1] (an RL reward; 0 with none), shaped
    as :func:`novalign.eval.ifeval.ifeval_reward` so ``verifier_reward(constraint_reward)`` plugs in."""
    if not constraints:
        return 0.0
    verdicts = check_all(response, constraints)
    return sum(verdicts) / len(verdicts)


def matching_types(text: str, names: Iterable[str] | None = None) -> list[str]:
    """The types whose cues occur in an instruction ``text`` (case-insensitive), in registry order."""
    low = text.lower()
    return [n for n in (names or REGISTRY) if any(re.search(c, low) for c in get(n).cues)]


def _value_stated(value: Any, low: str) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        digits = str(int(value)) if float(value).is_integer() else str(value)
        if re.search(rf"(?<![\d.]){re.escape(digits)}(?![\d])", low):
            return True
        return float(value).is_integer() and 0 <= value < len(NUMBER_WORDS) and \
            re.search(rf"\b{NUMBER_WORDS[int(value)]}\b", low) is not None
    if isinstance(value, list):
        return all(_value_stated(v, low) for v in value)
    return str(value).lower().strip() in low


def expressed(constraint: Mapping[str, Any], text: str) -> bool:
    """Whether an instruction ``text`` states ``constraint``: one of its type's cues occurs and every parameter
    value is written in it (numbers as digits or as words up to twenty; IFEval's ``relation`` wording is not
    required, since "fewer than" / "no more than" / "under" all say it)."""
    ctype, params = _as_instance(constraint, "constraint")
    low = text.lower()
    if not any(re.search(c, low) for c in ctype.cues):
        return False
    return all(_value_stated(v, low) for k, v in params.items() if not k.endswith("relation"))
