"""Rule-based checks of a PAS complement, run beside the LLM self-correction (report sections 2.3, 4.6).

Section 4.6 asks of a complement: supplement the prompt, do not answer it, about 30 words, not more.
These are the deterministic parts of that check -- plain functions, no model involved:

* :func:`word_count` -- whitespace words, each CJK character counted as one word;
* :func:`answer_signals` -- surface signs that a text answers the prompt instead of steering the answer;
* :func:`rule_problems` -- the problems of one complement (``empty``, ``too_short``, ``too_long``,
  ``answers_prompt``), which the self-correction step combines with the LLM's verdict.
"""

from __future__ import annotations

import re

__all__ = ["ANSWER_OPENERS", "GUIDANCE_CUES", "answer_signals", "rule_problems", "word_count"]

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")

# An answer tends to open like this; a complement is addressed to the answerer and never does.
ANSWER_OPENERS = (
    "sure", "certainly", "of course", "here is", "here's", "here are", "the answer is", "answer:", "yes,", "no,",
    "absolutely", "i'd be happy", "i would be happy", "as an ai", "好的", "当然", "答案是",
)
# Words that steer an answer (instructions to the main model). A complement with none of them is not guidance.
GUIDANCE_CUES = (
    "should", "must", "ensure", "make sure", "include", "explain", "describe", "clarify", "consider", "mention",
    "cover", "focus", "highlight", "use", "provide", "give", "list", "structure", "organize", "format", "keep",
    "avoid", "state", "note", "outline", "emphasize", "address", "respond", "answer in", "reply", "present", "offer",
    "suggest", "tone", "step", "cite", "compare", "define", "show", "check", "specify", "acknowledge", "ask",
    "adopt", "follow", "add", "point out", "walk through", "break down", "stay within", "prioritize", "start",
    "begin", "end with", "validate", "propose", "recommend", "return", "write", "translate", "summarize", "请", "应",
    "需要", "注意",
)
_RESULT = re.compile(r"=\s*-?\d")  # "... = 72": a worked result, not a method
_CODE_LINE = re.compile(r"^\s*(def |class |import |#include|function |public static )", re.MULTILINE)


def word_count(text: str) -> int:
    """Whitespace-separated words, with every CJK character counted as one word (30 words ~ 30 characters).

    >>> word_count("Keep it short."), word_count("保持简洁 please")
    (3, 5)
    """
    cjk = len(_CJK.findall(text))
    return len(_CJK.sub(" ", text).split()) + cjk


def _has_cue(lowered: str, cue: str) -> bool:
    if not cue.isascii():
        return cue in lowered
    return re.search(r"\b" + re.escape(cue), lowered) is not None  # "use" matches "use"/"used", not "because"


def answer_signals(complement: str) -> list[str]:
    """Why ``complement`` looks like an answer rather than a complement (empty list: it does not).

    Signals: ``opener`` (starts like a reply: "Sure, ...", "The answer is ..."), ``code`` (a code fence or
    code line), ``worked_result`` (an ``= number`` result), ``no_guidance`` (none of :data:`GUIDANCE_CUES`).
    Based on the report's rule "only supplement user prompts, do not directly answer them" (section 4.6).
    """
    lowered = complement.strip().lower()
    signals = []
    if lowered.startswith(ANSWER_OPENERS):
        signals.append("opener")
    if "```" in complement or _CODE_LINE.search(complement):
        signals.append("code")
    if _RESULT.search(complement):
        signals.append("worked_result")
    if not any(_has_cue(lowered, cue) for cue in GUIDANCE_CUES):
        signals.append("no_guidance")
    return signals


def rule_problems(complement: str, *, max_words: int = 40, min_words: int = 3) -> list[str]:
    """The rule-based problems of one complement, in a fixed order.

    ``empty``; ``too_short`` (< ``min_words``); ``too_long`` (> ``max_words``; the report's target is about 30,
    so the default leaves a little room); ``answers_prompt:<signals>`` (see :func:`answer_signals`).
    """
    if not complement.strip():
        return ["empty"]
    problems = []
    words = word_count(complement)
    if words < min_words:
        problems.append("too_short")
    if words > max_words:
        problems.append("too_long")
    signals = answer_signals(complement)
    if signals:
        problems.append("answers_prompt:" + ",".join(signals))
    return problems
