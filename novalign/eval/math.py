"""Math final answers: extraction from a model's response, and equivalence with the gold answer.

* :func:`extract_answer` -- the final answer of a response: the last ``\\boxed{...}`` (nested braces
  balanced), else what follows the last GSM8K ``####``, else what follows the last "the answer is" /
  "answer:", else the last number in the text.
* :func:`answers_equivalent` -- two answers mean the same thing. Uses the ``math-verify`` package (LaTeX
  parsed to SymPy): ``\\frac{1}{2}`` == ``\\dfrac12`` == ``1/2`` == ``0.5``; ``3.0`` == ``3``; ``2\\sqrt3`` ==
  ``\\sqrt{12}``; intervals (``(1, 2]``) and sets (``\\{1,2,3\\}`` == ``\\{3,2,1\\}``) compared as such.
  When math-verify cannot parse an answer (or is not installed, or times out) a pure-Python path compares
  plain numbers exactly (``1,000`` / ``1000.0`` / ``3/4`` / ``50%``) and otherwise normalized strings.
* :func:`math_accuracy` -- the fraction of responses whose extracted answer is equivalent to the gold one.
* :func:`hendrycks_equivalent` -- the MATH authors' own ``is_equiv`` (hendrycks/math ``math_equivalence.py``):
  both answers normalized by :func:`hendrycks_normalize` and compared as strings. Stricter than
  :func:`answers_equivalent` (``3.0`` is not ``3``, set order matters); it is what MATH's published
  accuracies use, so the MATH suite (:mod:`novalign.eval.hendrycks_math`) scores with it by default.

Percentages (a documented choice, math-verify's own): ``50\\%`` is equivalent to both ``0.5`` and ``50``
-- a percent sign is neither required nor a source of error, since gold answers disagree on writing it.
The pure-Python fallback makes the same choice.

Timeouts: math-verify bounds parsing and comparison with ``signal.alarm`` (``timeout`` seconds each), which
only works in the main thread. Off the main thread (e.g. rewards computed in a worker thread) its timeouts
are switched off; answers longer than :data:`MAX_ANSWER_CHARS` then skip SymPy altogether and use the
pure-Python path, so no pathological answer reaches SymPy unguarded at any length. A timeout counts as
"not equivalent" unless the fallback path says otherwise.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from fractions import Fraction

from novalign.eval.answers import BOXED, clean, math_answer

__all__ = ["MAX_ANSWER_CHARS", "answers_equivalent", "extract_answer", "gold_answer", "hendrycks_equivalent",
           "hendrycks_normalize", "math_accuracy"]

log = logging.getLogger("novalign.eval.math")

MAX_ANSWER_CHARS = 400  # longer answers are not given to SymPy off the main thread (no timeout there)

def extract_answer(text: str | None) -> str | None:
    """The final answer in ``text``, or None when it has none: :func:`novalign.eval.answers.math_answer`.

    In order: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``; nested braces balanced); the
    rest of the line after the last ``####`` (GSM8K); what follows the last "answer is" / "answer:"
    (a ``$...$`` span, else up to the end of the sentence); the last number (``1,234.5``, ``-3``, ``3/4``).

    >>> extract_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$")
    '\\\\frac{1}{2}'
    >>> extract_answer("Natalia sold 48 + 24 = 72 clips.\\n#### 72")
    '72'
    """
    return math_answer(text) if text else None


def gold_answer(gold: str) -> str:
    """A gold answer as given, or -- when it is a full solution with a ``\\boxed{}`` or a GSM8K ``####``
    line (GSM8K's own ``answer`` field) -- the answer extracted from it."""
    gold = str(gold)
    if BOXED.search(gold) or "####" in gold:
        return extract_answer(gold) or gold.strip()
    return clean(gold)


# ------------------------------------------------------------------------------------ pure-Python path

_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _plain_number(s: str) -> Fraction | None:
    """``s`` as an exact number when it is a plain one: ``1,000``, ``-2.50``, ``.5``, ``3/4``,
    ``\\frac{3}{4}``, ``50%`` (-> 1/2, see the module note on percentages); else None."""
    s = s.replace("\\!", "").replace("\\,", "").replace("\\$", "").replace(" ", "").rstrip(".")
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if frac:
        num, den = _plain_number(frac.group(2)), _plain_number(frac.group(3))
        if num is None or den is None or den == 0:
            return None
        return -(num / den) if frac.group(1) else num / den
    if "/" in s:
        num_s, _, den_s = s.partition("/")
        num, den = _plain_number(num_s), _plain_number(den_s)
        return num / den if num is not None and den not in (None, 0) else None
    percent = s.endswith(("\\%", "%"))
    s = s.removesuffix("%").removesuffix("\\")
    if not s or not any(ch.isdigit() for ch in s) or not _PLAIN_NUMBER.fullmatch(s):
        return None
    value = Fraction(s.replace(",", ""))
    return value / 100 if percent else value


def _normalized(s: str) -> str:
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return "".join(clean(s).lower().split())


def _fallback_equivalent(pred: str, gold: str) -> bool:
    """Plain numbers compared exactly (a percentage also equals its bare number), else normalized strings."""
    p, g = _plain_number(pred), _plain_number(gold)
    if p is not None and g is not None:
        if p == g:
            return True
        pct = [s.rstrip(" .").endswith("%") for s in (pred, gold)]
        if pct[0] != pct[1]:  # 50% vs 50: compare the bare numbers too
            return p * (100 if pct[0] else 1) == g * (100 if pct[1] else 1)
        return False
    return bool(_normalized(pred)) and _normalized(pred) == _normalized(gold)


# ------------------------------------------------------------------------------------ math-verify path


def _math_verify_equivalent(pred: str, gold: str, timeout: int | None) -> bool | None:
    """math-verify's verdict, or None when it is unavailable or could not parse one of the answers."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency; keep working without it
        return None
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main and max(len(pred), len(gold)) > MAX_ANSWER_CHARS:
        return None
    seconds = (timeout or None) if in_main else None
    try:
        # wrapped in \boxed{} so that math-verify takes the whole answer as one expression
        parsed_gold = parse("\\boxed{" + gold + "}", parsing_timeout=seconds)
        parsed_pred = parse("\\boxed{" + pred + "}", parsing_timeout=seconds)
        if not parsed_gold or not parsed_pred:
            return None
        return bool(verify(parsed_gold, parsed_pred, timeout_seconds=seconds))
    except Exception as exc:  # noqa: BLE001 -- math-verify swallows most errors; anything left -> fallback
        log.debug("math-verify failed on %r vs %r: %s", pred[:100], gold[:100], exc)
        return None


def answers_equivalent(pred: str | None, gold: str | None, *, timeout: int | None = 5) -> bool:
    """Whether the answer ``pred`` is mathematically the same as the gold answer ``gold``.

    Both are final answers (see :func:`extract_answer`), LaTeX or plain. True when their normalized
    strings are identical, or math-verify judges them equal, or -- only when math-verify could not parse
    them -- the pure-Python path does (plain numbers exactly, else normalized strings). ``None`` / empty
    answers are never equivalent to anything. ``timeout``: seconds for math-verify's parsing and for its
    comparison, each (main thread only; see the module note).
    """
    if pred is None or gold is None:
        return False
    pred, gold = clean(str(pred)), clean(str(gold))
    if not pred or not gold:
        return False
    if _normalized(pred) == _normalized(gold):
        return True
    verdict = _math_verify_equivalent(pred, gold, timeout)
    if verdict:
        return True
    if verdict is None:
        return _fallback_equivalent(pred, gold)
    # math-verify parsed both and said no: trust it, except for two plain numbers (exact comparison)
    p, g = _plain_number(pred), _plain_number(gold)
    return p is not None and g is not None and _fallback_equivalent(pred, gold)


def math_accuracy(preds: Sequence[str | None], golds: Sequence[str], *, extract: bool = True,
                  timeout: int | None = 5) -> float:
    """The fraction of ``preds`` equivalent to their gold answer (:func:`answers_equivalent`).

    ``preds`` are model responses, whose answers are extracted with :func:`extract_answer` (pass
    ``extract=False`` when they are already final answers). ``golds`` go through :func:`gold_answer`, so a
    GSM8K solution ending in ``#### 72`` works as is.

    Raises:
        ValueError: no predictions, or ``preds`` and ``golds`` differ in length.
    """
    if len(preds) != len(golds):
        raise ValueError(f"math_accuracy: {len(preds)} predictions but {len(golds)} gold answers")
    if not preds:
        raise ValueError("math_accuracy needs at least one prediction")
    hits = 0
    for pred, gold in zip(preds, golds):
        answer = extract_answer(pred) if extract else pred
        hits += answers_equivalent(answer, gold_answer(gold), timeout=timeout)
    return hits / len(preds)


# ------------------------------------------------------------------------------- hendrycks/math is_equiv


def _hendrycks_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``, ``\\frac1b`` -> ``\\frac{1}{b}``
    (``_fix_fracs``); a ``\\frac`` followed by fewer than two characters leaves the string as it was."""
    head, *parts = s.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if not part:  # the official code indexes part[0] here and fails; is_equiv then compares raw strings
            raise ValueError("\\frac with nothing after it")
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + b + rest if b == "{" else "{" + a + "}{" + b + "}" + rest
    return out


def _hendrycks_slash(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when both sides are plain integers written canonically (``_fix_a_slash_b``)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def _hendrycks_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (``_fix_sqrt``: one character after ``\\sqrt`` gets braces)."""
    head, *parts = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p.startswith("{") else "{" + p[:1] + "}" + p[1:]) for p in parts)


def hendrycks_normalize(s: str) -> str:
    """``_strip_string`` of hendrycks/math, step by step: drop newlines, ``\\!``; ``\\\\`` -> ``\\``;
    ``tfrac`` / ``dfrac`` -> ``frac``; drop ``\\left`` / ``\\right``, degree marks ``^{\\circ}``, ``\\$``;
    cut units after ``\\text{ ``; drop ``\\%``; a leading ``.`` (or one after a space or ``{``) gets a ``0``;
    ``k = 5`` -> ``5`` (a left side of at most two characters); ``\\sqrt3`` -> ``\\sqrt{3}``; drop spaces;
    ``\\frac12`` -> ``\\frac{1}{2}``; ``0.5`` -> ``\\frac{1}{2}``; ``3/4`` -> ``\\frac{3}{4}``.

    Raises:
        ValueError: where the official code fails (two ``\\text{ `` unit markers, an empty ``\\sqrt`` or
            ``\\frac``); the
            official ``is_equiv`` then compares the raw strings, as :func:`hendrycks_equivalent` does.
    """
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # in MATH, "\\text{ " only ever starts units
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("more than one unit marker")
        s = parts[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    if "\\sqrt" in s:
        if any(not p for p in s.split("\\sqrt")[1:]):
            raise ValueError("\\sqrt with nothing after it")
        s = _hendrycks_sqrt(s)
    s = _hendrycks_fracs(s.replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _hendrycks_slash(s)


def hendrycks_equivalent(pred: str | None, gold: str | None) -> bool:
    """``is_equiv``: both None -> True; one None -> False; else the normalized strings are equal (the raw
    strings when normalizing fails). ``"\\dfrac{1}{2}"`` == ``"0.5"`` == ``"1/2"``; ``"10\\%"`` == ``"10"``;
    ``"x = 3"`` == ``"3"``; ``"3.0"`` != ``"3"``."""
    if pred is None or gold is None:
        return pred is None and gold is None
    try:
        return hendrycks_normalize(pred) == hendrycks_normalize(gold)
    except ValueError:
        return pred == gold
