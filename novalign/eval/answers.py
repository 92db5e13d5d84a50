"""Final answers pulled out of a model's reply: one module of named extraction policies.

Every policy is a pure function ``(text) -> str | None``: the answer it finds, or ``None`` when the reply
has none of the kind it looks for. :func:`first_found` chains policies into a cascade. Which policy fits
depends on how the reply was asked for and how the answer is then compared, so each caller names its own:

=============================  ===========================================================  =======================
cascade                        steps                                                        used by
=============================  ===========================================================  =======================
:func:`math_answer`            last ``\\boxed{}`` -> last ``####`` -> last "answer is" ->     ``eval/math.py``,
                               last number                                                  ``math_answer_reward``
:func:`free_form_answer`       last ``\\boxed{}`` -> last marked line -> last line           ``exact_answer_reward``
:func:`first_stated_answer`    first "answer is" -> the whole reply                         ``world/checkers.py``
:func:`hendrycks_boxed`        the last ``\\boxed{...}``, exactly as hendrycks/math reads it  ``eval/hendrycks_math.py``
=============================  ===========================================================  =======================

Why the cascades differ: math answers are compared by value (``answers_equivalent``), so the last number is a
useful last resort; free-form answers (a word, a name) are compared as normalized strings, where the
last number would be wrong and the last line is the usual place of a bare answer; the demo world's base
model runs on and repeats itself after its first answer, so the *first* stated answer is the one graded
(lm-evaluation-harness's "take first" filter does the same for few-shot evaluation).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "BOXED",
    "Policy",
    "clean",
    "first_answer_is",
    "first_found",
    "first_stated_answer",
    "free_form_answer",
    "gsm8k",
    "hendrycks_boxed",
    "last_answer_is",
    "last_boxed",
    "last_line",
    "last_marked_line",
    "last_number",
    "math_answer",
    "whole_text",
]

Policy = Callable[[str], "str | None"]

BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*([^\n]*)")
_LAST_ANSWER_IS = re.compile(r"(?:\banswer\s+is|\banswer\s*:)\s*:?\s*", re.IGNORECASE)
_FIRST_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.*?)(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE)
_MARKED = re.compile(r"(?:####|\banswer\s*(?:is|:)\s*:?)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+")


def clean(answer: str) -> str:
    """Strip surrounding ``$`` / ``\\(...\\)``, whitespace and a trailing full stop: ``" $x$. "`` -> ``"x"``."""
    s = answer.strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    s = s.strip().strip("$").strip()
    return s[:-1].strip() if s.endswith(".") else s


# ------------------------------------------------------------------------------------ single policies


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` whose braces balance (``\\{`` does not count).

    Why: MATH-style prompts ask for the final answer in a box (Hendrycks et al. 2021), and a model that
    corrects itself boxes again, so the last box is the final word. An unclosed last box falls back to the
    one before it.
    """
    for match in reversed(list(BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def hendrycks_boxed(text: str) -> str | None:
    """The answer as the MATH authors' code reads it: ``remove_boxed(last_boxed_only_string(text))``.

    Why a policy of its own: MATH's published accuracies use it, and it differs from :func:`last_boxed` at
    the edges -- it looks for the last ``\\boxed`` (only then ``\\fbox``), counts every brace (``\\{`` too),
    and keeps only a ``\\boxed{...}`` that closes: ``\\fbox{3}`` and an unclosed box give None, as there.
    ``"so \\boxed{\\frac{1}{2}}."`` -> ``"\\frac{1}{2}"``.
    """
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                boxed = text[start:i + 1]
                return boxed[len("\\boxed{"):-1] if boxed.startswith("\\boxed{") else None
    return None


def gsm8k(text: str) -> str | None:
    """The rest of the line after the last ``####``, cleaned (:func:`clean`); None when there is none or it is empty.

    Why: GSM8K's solutions end with ``#### <answer>`` (Cobbe et al. 2021), and models trained on them copy it.
    """
    found = _GSM8K.findall(text)
    return (clean(found[-1]) or None) if found else None


def _after_answer_is(rest: str) -> str:
    """The answer right after "the answer is": a ``$...$`` span if it starts with one, else up to the end
    of the sentence (a full stop followed by a space or the end) or of the line."""
    rest = rest.lstrip()
    math_span = re.match(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)", rest, re.DOTALL)
    if math_span:
        return next(g for g in math_span.groups() if g is not None).strip()
    line = rest.split("\n", 1)[0]
    return clean(re.split(r"\.(?:\s|$)", line, maxsplit=1)[0])


def last_answer_is(text: str) -> str | None:
    """What follows the last "answer is" / "answer:": a ``$...$`` span, else up to the end of that sentence.

    Why: chain-of-thought prompts end with "The answer is X" (Wei et al. 2022; Minerva's "Final Answer: The
    final answer is $X$"); the last statement is the one reached after the reasoning.
    """
    spots = list(_LAST_ANSWER_IS.finditer(text))
    return (_after_answer_is(text[spots[-1].end():]) or None) if spots else None


def first_answer_is(text: str) -> str | None:
    """The text after the first "answer is", up to the end of that sentence or line (possibly empty);
    None when no "answer is" occurs.

    Why: a base model prompted few-shot runs on and repeats itself ("The answer is 7. The answer is 9...");
    what it stated first is its answer, as lm-evaluation-harness's "take first" filter grades it.
    """
    hit = _FIRST_ANSWER_IS.search(text)
    return hit.group(1).strip() if hit else None


def last_marked_line(text: str) -> str | None:
    """The rest of the line after the first ``####`` / "answer is" / "answer:" marker, on the last line that
    has one; None when no line has one or the rest is blank.

    Why: free-form replies use either marker; taking the whole rest of the line (not just one sentence)
    keeps multi-word answers such as "18 apples" or "New York, USA" whole.
    """
    found = _MARKED.findall(text)
    if not found:
        return None
    rest = found[-1].strip()
    return rest.splitlines()[0] if rest else None


def last_number(text: str) -> str | None:
    """The last number, spaces removed: ``1,234.5``, ``-3``, ``.5``, ``3/4``.

    Why: a reply that states no marked answer usually ends its arithmetic with the result.
    """
    numbers = _NUMBER.findall(text)
    return re.sub(r"\s+", "", numbers[-1]) if numbers else None


def last_line(text: str) -> str | None:
    """The last non-empty line, as written. Why: a short answer with no marker stands on the last line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def whole_text(text: str) -> str:
    """The whole reply, stripped. Why: a reply with no marker at all may be nothing but the answer ("Monday")."""
    return text.strip()


# ------------------------------------------------------------------------------------ cascades


def first_found(*policies: Policy, name: str | None = None) -> Policy:
    """A policy that tries ``policies`` in order and returns the first answer that is not None."""
    if not policies:
        raise ValueError("first_found needs at least one policy")

    def cascade(text: str) -> str | None:
        for policy in policies:
            found = policy(text)
            if found is not None:
                return found
        return None

    cascade.__name__ = name or "first_found(" + ", ".join(p.__name__ for p in policies) + ")"
    return cascade


math_answer = first_found(last_boxed, gsm8k, last_answer_is, last_number, name="math_answer")
math_answer.__doc__ = """A math reply's final answer (eval/math.py's ``extract_answer``): last box, else ``####``,
else the last "answer is", else the last number. Compared by value afterwards, so a bare number is a fair guess."""

free_form_answer = first_found(last_boxed, last_marked_line, last_line, name="free_form_answer")
free_form_answer.__doc__ = """A free-form reply's final answer (the exact-answer RL reward): last box, else the
last marked line, else the last line. Compared as a normalized string, so no number is guessed out of prose."""

first_stated_answer = first_found(first_answer_is, whole_text, name="first_stated_answer")
first_stated_answer.__doc__ = """The demo world's answer: the first "answer is", else the whole reply (never None)."""
