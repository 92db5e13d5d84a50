"""LLM-as-judge: editable prompt templates, strict answer parsing, and re-asking on a malformed answer.

A judgment goes: render a template (``novalign/assets/eval/templates/<name>.<lang>.txt``, or the same name in
a user's ``template_dir``) -> ask the judge (an :class:`~novalign.llm.LLMClient`, batched) -> parse the reply
with a strict, pure parse function -> on a parse error, ask again in the same conversation with a message
that quotes the error (the ``reask`` template), up to ``attempts`` times. A judgment that still fails is
returned as failed with every raw reply; nothing is guessed from a malformed answer.

Answer formats (one pure parser each):

- checklist (CFBench, SysBench, FB-Bench): a JSON object whose ``results`` (or ``评判结果``) maps each
  criterion number ``"1".."n"`` to yes/no (是/否); exactly the n numbers, no more, no fewer. This is the
  shape of SysBench's official judge prompt (``utils.py`` ``get_eval_pattern``) with English keys allowed.
- rating (MT-Bench, Zheng et al. 2023): ``[[r]]`` with r in 1..10, exactly one distinct rating.
- pairwise (MT-Bench pairwise / Arena-Hard style): ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie), exactly one.
- UX (report section 5.1): a JSON object rating each dimension pass/fail.
- RL judge scores (``train/rl/rewards``' ``llm_judge``): the reply's last ``[[number]]`` (:func:`bracket_score`) or
  its last number (:func:`last_number`), mapped from the judge's scale onto [0, 1] (:func:`scaled_score`). These
  are lenient on purpose -- a judge that reasons "first [[3]], on reflection [[7]]" is scored 7 -- where
  :func:`parse_rating` (a benchmark's fixed protocol) rejects two ratings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from novalign.llm.structured import extract_json
from novalign.llm.types import ChatRequest

__all__ = [
    "JudgeParseError",
    "Judgment",
    "TemplateError",
    "SCORE_PARSERS",
    "ask_judge",
    "bracket_score",
    "last_number",
    "load_template",
    "pairwise_ratings",
    "parse_checklist",
    "parse_pairwise",
    "parse_rating",
    "parse_ux",
    "ratings_to_ux_records",
    "ratings_to_verdicts",
    "read_ratings",
    "render",
    "scaled_score",
    "ux_ratings",
    "write_ratings",
]

LANGS = ("en", "zh")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template that is missing, or a placeholder with no value (those placeholders are in ``missing``)."""

    def __init__(self, message: str, missing: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)


class JudgeParseError(ValueError):
    """The judge's answer does not have the required format; the message says what is wrong."""


# -------------------------------------------------------------------------------------------- templates


def load_template(name: str, lang: str = "en", template_dir: str | Path | None = None) -> str:
    """The text of template ``name`` in ``lang``: ``<template_dir>/<name>.<lang>.txt`` if present, else bundled.

    Raises:
        TemplateError: unknown language, or no such template anywhere.
    """
    if lang not in LANGS:
        raise TemplateError(f"judge template language must be one of {LANGS}, got {lang!r}")
    filename = f"{name}.{lang}.txt"
    if template_dir is not None:
        user_file = Path(template_dir) / filename
        if user_file.is_file():
            try:
                return user_file.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise TemplateError(f"{user_file}: byte {err.start}: judge templates must be UTF-8 text "
                                    f"({err.reason})") from None
    bundled = resources.files("novalign") / "assets" / "eval" / "templates" / filename
    if not bundled.is_file():
        where = f" (nor in {template_dir})" if template_dir is not None else ""
        raise TemplateError(f"no judge template {filename} in novalign/assets/eval/templates{where}")
    return bundled.read_text(encoding="utf-8")


def render(template: str, **values: Any) -> str:
    """Fill every ``{name}`` in ``template``. Other braces (JSON examples) are left alone.

    >>> render('Rate {answer}. Reply {"ok": 1}', answer="x")
    'Rate x. Reply {"ok": 1}'

    Raises:
        TemplateError: the template uses a placeholder that has no value.
    """
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise TemplateError(f"template placeholders without a value: {missing}; available: {sorted(values)}", missing)
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


# ---------------------------------------------------------------------------------------------- parsers

_YES = {"yes": True, "no": False, "是": True, "否": False, "pass": True, "fail": False}


def _verdict(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _YES:
        return _YES[value.strip().lower()]
    raise JudgeParseError(f"{where}: expected yes/no (是/否), got {value!r}")


def _json_object(text: str) -> dict:
    try:
        value = extract_json(text)
    except ValueError:
        raise JudgeParseError("the answer contains no JSON object") from None
    if not isinstance(value, dict):
        raise JudgeParseError(f"expected a JSON object, got a JSON {type(value).__name__}")
    return value


def parse_checklist(text: str, num_criteria: int) -> list[bool]:
    """One verdict per criterion from ``{"results": {"1": "yes", "2": "no", ...}}`` (or ``评判结果``).

    Accepts: ``'{"reasons": "...", "results": {"1": "yes", "2": "否"}}'`` with 2 criteria -> ``[True, False]``.
    Rejects: 3 criteria but keys 1-2 (missing "3"); key "4" of 3 (extra); value "maybe"; no JSON at all.

    Raises:
        JudgeParseError: anything but exactly one yes/no for each criterion 1..n.
    """
    obj = _json_object(text)
    results = obj.get("results", obj.get("评判结果"))
    if not isinstance(results, dict):
        raise JudgeParseError('the JSON object needs a "results" object mapping criterion numbers to yes/no')
    keys = {str(k).strip() for k in results}
    wanted = {str(i) for i in range(1, num_criteria + 1)}
    if keys != wanted or len(results) != num_criteria:
        missing, extra = sorted(wanted - keys, key=int), sorted(keys - wanted)
        raise JudgeParseError(f"expected exactly criteria 1..{num_criteria} in results; missing {missing}, unexpected {extra}")
    by_key = {str(k).strip(): v for k, v in results.items()}
    return [_verdict(by_key[str(i)], f"criterion {i}") for i in range(1, num_criteria + 1)]


_RATING = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str, low: float = 1, high: float = 10) -> float:
    """The ``[[rating]]`` of an MT-Bench single-answer grade (``FastChat`` ``one_score_pattern``).

    Accepts: ``"... Rating: [[7]]"`` -> 7.0;  ``"[[8.5]]"`` -> 8.5;  ``"[[6]] ... [[6]]"`` -> 6.0.
    Rejects: ``"Rating: 7"`` (no brackets), ``"[[11]]"`` (out of range), ``"[[3]] then [[9]]"`` (two ratings).
    """
    found = {float(x) for x in _RATING.findall(text)}
    if not found:
        raise JudgeParseError('no rating in the form "[[rating]]", e.g. "Rating: [[7]]"')
    if len(found) > 1:
        raise JudgeParseError(f"more than one rating given: {sorted(found)}; give exactly one")
    rating = found.pop()
    if not low <= rating <= high:
        raise JudgeParseError(f"rating {rating:g} is outside {low:g}..{high:g}")
    return rating


_CHOICE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_pairwise(text: str) -> str:
    """``"A"``, ``"B"`` or ``"tie"`` from a pairwise verdict ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (MT-Bench pair-v2).

    Accepts: ``"... [[A]]"`` -> "A";  ``"[[C]]"`` -> "tie".
    Rejects: ``"A is better"`` (no brackets), ``"[[A]] or [[B]]"`` (two verdicts).
    """
    found = set(_CHOICE.findall(text))
    if len(found) != 1:
        problem = "no verdict" if not found else f"several verdicts {sorted(found)}"
        raise JudgeParseError(f'{problem}; answer with exactly one of "[[A]]", "[[B]]" or "[[C]]" (tie)')
    choice = found.pop()
    return "tie" if choice == "C" else choice


def parse_ux(text: str, dimensions: Sequence[str]) -> dict[str, bool]:
    """Pass/fail per user-experience dimension from ``{"intent_comprehension": "pass", ...}``.

    Accepts: every dimension with pass/fail (yes/no, 是/否, true/false). Rejects: a missing or an extra
    dimension, or any other value.
    """
    obj = _json_object(text)
    ratings = obj.get("ratings", obj)
    if not isinstance(ratings, dict):
        raise JudgeParseError('"ratings" must be an object of dimension -> pass/fail')
    ratings = {k: v for k, v in ratings.items() if k != "reasons"}
    missing = [d for d in dimensions if d not in ratings]
    extra = sorted(set(ratings) - set(dimensions))
    if missing or extra:
        raise JudgeParseError(f"rate exactly the dimensions {list(dimensions)}; missing {missing}, unexpected {extra}")
    return {d: _verdict(ratings[d], d) for d in dimensions}


_BRACKETED = re.compile(r"\[\[\s*([-+]?\d+(?:\.\d+)?)\s*\]\]")
_ANY_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def bracket_score(text: str) -> float:
    """The last ``[[number]]`` in a judge's reply (MT-Bench's "Rating: [[7]]" convention, Zheng et al. 2023,
    https://arxiv.org/abs/2306.05685).

    Accepts: ``"... [[3]] ... Rating: [[7.5]]"`` -> 7.5 (the last one: a judge may revise itself).
    Rejects: ``"Rating: 7"`` (no brackets).
    """
    found = _BRACKETED.findall(text)
    if not found:
        raise JudgeParseError(f"no [[score]] in the judge's reply: {text[:200]!r}")
    return float(found[-1])


def last_number(text: str) -> float:
    """The last number in a judge's reply; ask the judge to end with its score.

    Accepts: ``"score 250 of 1000? no: 250"`` -> 250.0;  ``"7/10"`` -> 10.0 (hence: end with the score).
    Rejects: a reply with no digit.
    """
    found = _ANY_NUMBER.findall(text)
    if not found:
        raise JudgeParseError(f"no number in the judge's reply: {text[:200]!r}")
    return float(found[-1])


SCORE_PARSERS: dict[str, Callable[[str], float]] = {"brackets": bracket_score, "last_number": last_number}
"""The score parsers by their config name (``parse:`` of an ``llm_judge`` reward)."""


def scaled_score(parse: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    """``parse`` followed by the linear map of the judge's scale ``[low, high]`` onto ``[0, 1]``:
    ``(score - low) / (high - low)`` (scale 1..10: 1 -> 0, 5.5 -> 0.5, 10 -> 1).

    A score outside ``[low, high]`` is not clamped: it raises :class:`JudgeParseError` (a failed judgment,
    re-asked and counted), since a judge that leaves its scale did not follow the prompt.
    """
    if not high > low:
        raise ValueError(f"the judge's scale needs low < high, got [{low}, {high}]")

    def scaled(text: str) -> float:
        score = parse(text)
        if not low <= score <= high:
            raise JudgeParseError(f"score {score:g} outside the judge's scale [{low:g}, {high:g}]")
        return (score - low) / (high - low)

    scaled.__name__ = f"scaled_{getattr(parse, '__name__', 'parse')}"
    return scaled


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class Judgment:
    """One finished judgment: ``parsed`` (``None`` when it failed), every raw reply, and the last error;
    ``failure`` is the client's :class:`~novalign.llm.types.Failure` when the call itself failed (not the parse)."""

    parsed: Any = None
    raw: list[str] = field(default_factory=list)
    error: str | None = None
    failure: Any = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def ask_judge(client: Any, prompts: Sequence[str | list[dict]], parsers: Sequence[Callable[[str], Any]], *,
              attempts: int = 3, lang: str = "en", template_dir: str | Path | None = None,
              max_tokens: int | None = None, progress: bool = False,
              on_done: Callable[[int, Judgment], None] | None = None,
              request_params: Mapping[str, Any] | None = None) -> list[Judgment]:
    """Ask the judge every prompt (batched, greedy), parse each reply, re-ask the malformed ones.

    Args:
        client: A :class:`~novalign.llm.LLMClient`.
        prompts: One user message per judgment, or the judgment's whole conversation (a list of messages).
        parsers: One parse function per prompt; raising :class:`JudgeParseError` (or ``ValueError``) rejects.
        attempts: Tries per judgment (the first ask plus re-asks).
        on_done: Called with ``(index, judgment)`` as soon as a judgment is final (success or given up).
        request_params: Further :class:`~novalign.llm.types.ChatRequest` fields; they override the
            defaults ``temperature=0`` and ``max_tokens``.

    Returns:
        One :class:`Judgment` per prompt, in order.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    if len(prompts) != len(parsers):
        raise ValueError(f"{len(prompts)} prompts but {len(parsers)} parsers")
    reask = load_template("reask", lang, template_dir)
    results = [Judgment() for _ in prompts]
    conversations = {i: [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
                     for i, p in enumerate(prompts)}
    params = {"temperature": 0.0, "max_tokens": max_tokens} | dict(request_params or {})
    for attempt in range(attempts):
        if not conversations:
            break
        order = sorted(conversations)
        requests = [ChatRequest(messages=conversations[i], **params) for i in order]
        next_round: dict[int, list[dict]] = {}
        for result in client.batch(requests, progress=progress):
            i = order[result.index]
            judgment = results[i]
            if not result.ok:  # transport failure after the client's own retries: nothing to re-ask
                if result.last_text:
                    judgment.raw.append(result.last_text)
                judgment.error, judgment.failure = f"judge call failed: {result}", result
                _finish(on_done, i, judgment)
                continue
            reply = result.text
            judgment.raw.append(reply)
            try:
                judgment.parsed, judgment.error = parsers[i](reply), None
            except ValueError as exc:
                judgment.error = str(exc)
                if attempt + 1 < attempts:
                    note = render(reask, error=str(exc))
                    next_round[i] = [*conversations[i], {"role": "assistant", "content": reply},
                                     {"role": "user", "content": note}]
                    continue
            _finish(on_done, i, judgment)
        conversations = next_round
    return results


def _finish(on_done: Callable[[int, Judgment], None] | None, index: int, judgment: Judgment) -> None:
    if on_done is not None:
        on_done(index, judgment)


# --------------------------------------------------------------------------------------- ratings JSONL
# Human or LLM ratings, one JSON object per line, so GSB and pass rates can be computed from people's
# judgments too (report section 5.1):
#   pairwise:  {"id", "model_a", "model_b", "verdict": "good"|"same"|"bad" (A against B), "rater"}
#   dimension: {"id", "model", "dimension", "pass": true|false, "rater"}  (+ optional "category")

PAIRWISE_FIELDS = ("id", "model_a", "model_b", "verdict", "rater")
DIMENSION_FIELDS = ("id", "model", "dimension", "pass", "rater")
_GSB = {"good", "same", "bad", "g", "s", "b"}


def read_ratings(path: str | Path) -> list[dict]:
    """Read a ratings JSONL file (pairwise and/or dimension rows), checking every row.

    Raises:
        DataError: naming file, line and field, for a row of neither shape or with a bad value.
    """
    from novalign.data.io import DataError, iter_records

    rows = []
    for line, row in iter_records(path):
        fields = PAIRWISE_FIELDS if "verdict" in row else DIMENSION_FIELDS
        for name in fields:
            if name not in row:
                raise DataError(path, line, name, f"missing; a {'pairwise' if fields is PAIRWISE_FIELDS else 'dimension'} "
                                f"rating needs {list(fields)}")
            if name not in ("pass",) and not isinstance(row[name], (str, int)):
                raise DataError(path, line, name, f"expected a string, got {row[name]!r}")
        if fields is PAIRWISE_FIELDS and str(row["verdict"]).strip().lower() not in _GSB:
            raise DataError(path, line, "verdict", f"expected good/same/bad, got {row['verdict']!r}")
        if fields is DIMENSION_FIELDS and not isinstance(row["pass"], bool):
            raise DataError(path, line, "pass", f"expected true or false, got {row['pass']!r}")
        rows.append({**row, "id": str(row["id"])})
    return rows


def write_ratings(path: str | Path, rows: Sequence[dict]) -> None:
    """Write ratings as JSONL (atomically: a temporary file renamed into place)."""
    from novalign.data.io import write_jsonl

    write_jsonl(path, rows)


def ux_ratings(records: Sequence[dict], model: str, rater: str) -> list[dict]:
    """Dimension rating rows from UX suite records (``run_ux``), for :func:`write_ratings`; failed ones are skipped."""
    return [{"id": r["id"], "model": model, "dimension": d, "pass": bool(ok), "rater": rater, "category": r["category"]}
            for r in records if not r.get("failed") for d, ok in r["dimensions"].items()]


def pairwise_ratings(records: Sequence[dict], model_a: str, model_b: str, rater: str) -> list[dict]:
    """Pairwise rating rows from pairwise suite records (``run_pairwise``); failed ones are skipped."""
    return [{"id": r["id"], "model_a": model_a, "model_b": model_b, "verdict": r["verdict"], "rater": rater}
            for r in records if not r.get("failed")]


def ratings_to_ux_records(rows: Sequence[dict], model: str) -> list[dict]:
    """Group one model's dimension ratings into ``{"capability", "dimensions"}`` records, one per (id, rater),
    the input of :func:`novalign.eval.benchmarks.ux_pass_rate`."""
    grouped: dict[tuple[str, str], dict] = {}
    for row in rows:
        if "dimension" not in row or row["model"] != model:
            continue
        key = (row["id"], str(row["rater"]))
        record = grouped.setdefault(key, {"id": row["id"], "rater": row["rater"],
                                          "capability": row.get("category", "all"), "dimensions": {}})
        record["dimensions"][row["dimension"]] = row["pass"]
    return list(grouped.values())


def ratings_to_verdicts(rows: Sequence[dict], model_a: str, model_b: str) -> list[dict]:
    """``{"id", "rater", "verdict"}`` of ``model_a`` against ``model_b``, one per pairwise row of that pair
    (rows rated the other way round are flipped: B "good" against A is A "bad" against B)."""
    flip = {"good": "bad", "g": "bad", "bad": "good", "b": "good", "same": "same", "s": "same"}
    out = []
    for row in rows:
        if "verdict" not in row:
            continue
        v = str(row["verdict"]).strip().lower()
        if (row["model_a"], row["model_b"]) == (model_a, model_b):
            out.append({"id": row["id"], "rater": row["rater"], "verdict": v})
        elif (row["model_a"], row["model_b"]) == (model_b, model_a):
            out.append({"id": row["id"], "rater": row["rater"], "verdict": flip[v]})
    return out
