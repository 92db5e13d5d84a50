"""Rule-based rewards: any plain verifier function as a reward, and gold-answer matches (report section 2.1).

RL rewards reuse the evaluators: :func:`verifier_reward` plugs in the IFEval verifiers of
:mod:`novalign.eval.ifeval` unchanged, the answer extraction is :mod:`novalign.eval.answers`' and
:func:`math_answer_reward` is :mod:`novalign.eval.math`'s own check.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from novalign.eval.answers import free_form_answer
from novalign.train.rl.rewards.base import Messages, RewardError, RewardFn, as_reward, check_fields, reward_name

__all__ = [
    "answer_contained",
    "answer_equal",
    "exact_answer_reward",
    "final_answer",
    "math_answer_reward",
    "normalize_answer",
    "verifier_reward",
]


def verifier_reward(verifier: Callable[..., Any], *, name: str | None = None,
                    fields: Mapping[str, str] | None = None) -> RewardFn:
    """A :class:`RewardFn` from a plain per-sample verifier ``verifier(response, **named_fields)``.

    The verifier's first parameter receives the completion; every further parameter is filled, by name,
    from the sample field of the same name (``fields`` renames: ``{"parameter": "field"}``). A parameter
    called ``prompt`` that no field provides receives the sample's prompt messages. Parameters with
    defaults are passed only when the field is present; a verifier with ``**kwargs`` gets every field.
    ``True`` / ``False`` become 1.0 / 0.0. For example, IFEval's ``ifeval_reward(response,
    instruction_id_list, kwargs)`` plugs in unchanged and reads the fields ``instruction_id_list`` and
    ``kwargs``.

    Raises (when called):
        RewardError: a required field is missing, or the verifier returned a non-number for a sample.
    """
    params = list(inspect.signature(verifier).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ValueError(f"verifier {reward_name(verifier)!r} must take the response as its first positional parameter")
    named = [p for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
    renames = dict(fields or {})
    label = name or reward_name(verifier)

    def reward(prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        check_fields(label, len(completions), sample_fields)
        columns: dict[str, Sequence[Any]] = {}
        for p in named:
            source = renames.get(p.name, p.name)
            if source in sample_fields:
                columns[p.name] = sample_fields[source]
            elif p.name == "prompt":
                columns[p.name] = prompts
            elif p.default is p.empty:
                raise RewardError(f"reward {label!r} needs the per-sample field {source!r} (parameter {p.name!r} of "
                                  f"{reward_name(verifier)}); the batch has {sorted(sample_fields) or 'no fields'}")
        if takes_all:
            columns = {k: v for k, v in sample_fields.items() if k not in columns} | columns
        return [as_reward(verifier(c, **{k: v[i] for k, v in columns.items()}), label, i)
                for i, c in enumerate(completions)]

    reward.__name__ = label
    return reward


_NUMBER = re.compile(r"^[-+]?(?:\d+(?:,\d{3})*|\d*)(?:\.\d+)?$")


def normalize_answer(text: str) -> str:
    """Lower case, whitespace collapsed, ``$`` and surrounding punctuation / quotes stripped, numbers in
    canonical form (``"1,000.50"`` -> ``"1000.5"``, ``"3.0"`` -> ``"3"``)."""
    s = " ".join(str(text).replace("$", "").split()).lower().strip(" \t.,;:!?\"'`*()[]")
    if s and _NUMBER.match(s) and any(ch.isdigit() for ch in s):
        value = float(s.replace(",", ""))
        s = str(int(value)) if value.is_integer() else repr(value)
    return s


def final_answer(response: str) -> str:
    """The response's final answer (:func:`novalign.eval.answers.free_form_answer`): the last ``\\boxed{...}``,
    else the rest of the last line marked ``####`` / ``answer is`` / ``answer:``, else the last non-empty line
    (``""`` for an empty response)."""
    found = free_form_answer(response)
    return found if found is not None else ""


def answer_equal(response: str, answer: str) -> bool:
    """The response's :func:`final_answer` equals the gold ``answer`` after :func:`normalize_answer`."""
    return normalize_answer(final_answer(response)) == normalize_answer(answer)


def answer_contained(response: str, answer: str) -> bool:
    """The normalized gold ``answer`` occurs in the normalized response as a whole token sequence
    (``"12"`` is not found in ``"123"``)."""
    gold = normalize_answer(answer)
    if not gold:
        return False
    words = [normalize_answer(w) for w in response.split()]
    text = " " + " ".join(w for w in words if w) + " "
    return f" {gold} " in text


def exact_answer_reward(mode: str = "final") -> RewardFn:
    """1.0 when the completion gets the per-sample field ``answer`` right, else 0.0.

    ``mode="final"``: the final answer (:func:`final_answer`) equals the gold one; ``mode="contains"``: the
    gold answer appears anywhere in the completion. Both compare :func:`normalize_answer` forms.
    """
    checks = {"final": answer_equal, "contains": answer_contained}
    if mode not in checks:
        raise ValueError(f"exact_answer_reward mode must be one of {sorted(checks)}, got {mode!r}")
    return verifier_reward(checks[mode], name=f"exact_answer_{mode}")


def math_answer_reward(*, timeout: int | None = 5, name: str = "math_answer") -> RewardFn:
    """1.0 when the completion's math answer (:func:`novalign.eval.math.extract_answer`: last ``\\boxed{}``,
    ``####``, "the answer is", last number) is equivalent to the per-sample field ``answer``
    (:func:`~novalign.eval.math.answers_equivalent`: ``\\frac{1}{2}`` == ``0.5``, sets, intervals...), else 0.0.
    A GSM8K-style gold solution ending in ``#### 72`` is reduced to its answer first."""
    from novalign.eval.math import answers_equivalent, extract_answer, gold_answer

    def math_answer(response: str, answer: str) -> bool:
        return answers_equivalent(extract_answer(response), gold_answer(answer), timeout=timeout)

    return verifier_reward(math_answer, name=name)
