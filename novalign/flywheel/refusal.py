"""Refusal control (report section 3.2): "responses often include refusals ... Prompts concerning safety,
timeliness, and model functionality can easily lead to excessive refusals ... We address this issue by strictly
controlling the proportion of refusals and incorporating refusal constraints into the system message and prompt."

* :func:`rule_refusal` -- the rule detector: refusal phrases (English and Chinese) near the start of a response,
  where a refusal says what it is; a later "I can't" inside an answer is not a refusal. The optional judge
  (template ``refusal.<lang>.txt``, :func:`parse_refusal`) decides what the rules leave undecided;
* :func:`refusal_quota` / :func:`govern` -- the governor: per category, at most a share ``cap`` of the kept
  responses are refusals; the surplus refusals (a seeded choice) are dropped, with their reason;
* :func:`add_system_constraint` -- a refusal constraint put into the system message.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["REFUSAL_PATTERNS", "CONSTRAINTS", "rule_refusal", "parse_refusal", "refusal_quota", "govern",
           "add_system_constraint"]

_EN_CANT = (r"I(?: can(?:no|')?t| could(?:n't| not)| won't| will not| am unable to|'m unable to| am not able to|"
            r"'m not able to)")
_EN_VERBS = (r"(?:help|assist|provide|comply|do (?:that|this)|answer|fulfil+|share|support|create|write|give|"
             r"generate|engage|participate|discuss|offer|produce|complete|continue)")
REFUSAL_PATTERNS: tuple[str, ...] = (
    rf"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?{_EN_CANT}",
    rf"\b(?:sorry|unfortunately|apologies),? (?:but )?{_EN_CANT}",
    rf"^\s*{_EN_CANT} {_EN_VERBS}",
    rf"\b{_EN_CANT} {_EN_VERBS} (?:with |you with )?(?:that|this|such|your request|requests)",
    r"\bAs an AI(?: language model| assistant)?,? I (?:can(?:no|')?t|don't|do not|am not able|won't)",
    r"\bI (?:must|have to|need to) (?:respectfully )?(?:decline|refuse)",
    r"\bI(?:'m| am) not (?:able|allowed|permitted) to (?:help|assist|provide|answer|share|do|give|offer|discuss|continue)",
    r"\b(?:that's|that is) not something I(?: can|'m able to| am able to) (?:help|assist|do)",
    r"^\s*I'd rather not (?:answer|say|discuss|help|talk|share)",
    r"(?:抱歉|对不起|很遗憾)[，,！!。]?\s*(?:但)?我(?:无法|不能|没法|不可以|不便)",
    r"^\s*我(?:无法|不能|没法|不便)(?:回答|提供|协助|帮助|帮你|满足|完成|参与|讨论|处理|生成)",
    r"(?:这个问题|此问题|这个请求|这类问题)我(?:不便|无法|不能)(?:回答|提供|处理)",
    r"作为(?:一个|一名)?(?:AI|人工智能)(?:语言模型|助手|模型)?[，,]?\s*我(?:无法|不能|没有办法)",
    r"我(?:必须|只能)?(?:拒绝|婉拒)(?:回答|这个|您|你的)",
    r"恕(?:我)?(?:不能|无法)",
)
_COMPILED = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in REFUSAL_PATTERNS]

CONSTRAINTS = {
    "en": "Answer every request you safely can, fully and directly. Refuse only a request that would cause real "
          "harm, and then say briefly why. For questions about recent events or your own abilities, give what "
          "you know and state its limits instead of refusing.",
    "zh": "凡是能安全回答的请求，都要完整、直接地回答。只有会造成真实伤害的请求才可以拒绝，并简要说明原因。"
          "对于近期事件或关于你自身能力的问题，请给出你所知道的内容并说明其局限，而不是拒绝回答。",
}
"""The refusal constraint of section 3.2, per language (``refusal_constraints`` step; editable in its config)."""


def rule_refusal(text: str, window: int = 200) -> bool:
    """Whether the first ``window`` characters of ``text`` hold a refusal phrase (:data:`REFUSAL_PATTERNS`).

    >>> rule_refusal("I'm sorry, but I can't help with that.")
    True
    >>> rule_refusal("The answer is 12. I can't stress enough how useful factoring is.")
    False
    """
    head = text[:window]
    return any(p.search(head) for p in _COMPILED)


_VERDICT = re.compile(r"\[\[\s*(REFUSAL|ANSWER)\s*\]\]", re.IGNORECASE)


def parse_refusal(text: str) -> bool:
    """The refusal judge's verdict: True for ``[[REFUSAL]]``, False for ``[[ANSWER]]``; exactly one of them.

    Rejects: no verdict, or both.
    """
    from novalign.eval.judge import JudgeParseError

    found = {m.upper() for m in _VERDICT.findall(text)}
    if len(found) != 1:
        raise JudgeParseError('end with exactly one of "[[REFUSAL]]" or "[[ANSWER]]"')
    return found.pop() == "REFUSAL"


def refusal_quota(answers: int, refusals: int, cap: float) -> int:
    """How many of ``refusals`` a category may keep beside its ``answers`` so that the refusal share
    ``k / (answers + k)`` is at most ``cap``: ``k = min(refusals, floor(cap * answers / (1 - cap)))``
    (all of them when ``cap >= 1``).

    >>> refusal_quota(90, 30, 0.1)   # 10 / 100 = 0.10
    10
    >>> refusal_quota(95, 30, 0.1)   # floor(10.55) = 10: 10 / 105 = 0.095
    10
    """
    if cap >= 1:
        return refusals
    if cap <= 0:
        return 0
    return min(refusals, math.floor(cap * answers / (1 - cap) + 1e-9))


def govern(categories: Sequence[Any], refusals: Sequence[bool], cap: float, seed: int = 0
           ) -> tuple[list[bool], dict[str, dict[str, Any]]]:
    """Which records to keep so that each category's refusal share is at most ``cap`` (:func:`refusal_quota`);
    the refusals kept are a seeded choice per category. Returns the keep flags and, per category, answers,
    refusals, refusals kept and the realized share."""
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(str(c), []).append(i)
    keep = [True] * len(refusals)
    report: dict[str, dict[str, Any]] = {}
    for cat, members in sorted(by_cat.items()):
        ref = [i for i in members if refusals[i]]
        answers = len(members) - len(ref)
        k = refusal_quota(answers, len(ref), cap)
        chosen = set(random.Random(f"{seed}:{cat}").sample(ref, k))
        for i in ref:
            keep[i] = i in chosen
        total = answers + k
        report[cat] = {"answers": answers, "refusals": len(ref), "refusals_kept": k,
                       "share": k / total if total else 0.0}
    return keep, report


def add_system_constraint(prompt: Any, text: str) -> list[dict]:
    """The prompt as messages with ``text`` in its system message (appended to an existing one, else a new
    system turn first)."""
    from novalign.flywheel.responses import messages_of

    messages = messages_of(prompt)
    if messages and messages[0].get("role") == "system":
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}".strip()}
        return messages
    return [{"role": "system", "content": text}, *messages]
