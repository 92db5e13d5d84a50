"""MixEval / MixEval-Hard (Ni et al. 2024, arXiv:2406.06565), read and parsed as ``Psycoy/MixEval``.

Files: ``mix_eval/data/mixeval-<version>/mixeval-hard/{free-form,multiple-choice}.json`` (a JSON object keyed
by id: ``{problem_type, context, prompt, options (multiple choice), target, benchmark_name}``; ``target`` a list
of gold answers, or for multiple choice a list holding the gold option's index) and the model's answer files
``<model>_close_{freeform,multichoice}_hard.jsonl`` (the same fields plus ``id`` and ``response``).

The model is asked as ``evaluation_prompts.py`` builds it: multiple choice ``context\\nprompt\\nA. ...\\nB. ...``
and "Answer with the option letter from the given choices directly."; free form ``Question: context\\nprompt``
and "Answer the question shortly." (BBH, GSM8k and MATH: "Answer the question. \\nLet's think step by step.").

Answers are parsed by the judge model (the official default, ``gpt-3.5-turbo-0125``) or by rule
(``--*_parser rule``), as ``utils/metric_utils.py``:

- multiple choice, judge: the option extractor prompt; ``[[X]]`` (else ``[X]``) in its reply is the choice;
  rule: the first position (in the reply padded with spaces) of a letter written `` A ``, ``(A)``, ``A.``,
  ``**A``...; failing those, and for replies of more than five words, the first option text found; failing
  that a random letter (Python's ``random`` seeded 42, drawn in file order, as the official run);
- free form, judge: a 0-1 correctness score ``[[0.7]]`` (else ``[0.7]``) against the gold answers; rule: the
  tails after "so", "is", "therefore", "answer"... of each sentence, and every number in them, lower-cased and
  numbers rounded to 2 decimals; correct when a gold string is in a tail or a gold number equals one.

Scores (``compute_metrics.py``): each split's mean per benchmark and overall, rounded to 3 decimals; the
reported MixEval-Hard score is ``overall`` = the two splits' rounded scores weighted by their sample counts
(the same for each benchmark). A judge that never answers in form after re-asks: the official code then
draws a random option / score; here the sample is counted in ``num_failed`` and scores 0.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval import suite_kit as kit
from novalign.eval.judge import JudgeParseError, Judgment, load_template, render
from novalign.eval.official import iter_json_items
from novalign.eval.suite_api import SuiteContext

__all__ = ["judge_messages", "mixeval_prompt", "mixeval_scores", "parse_choice_rule", "parse_choice_judge",
           "parse_freeform_rule", "parse_score_judge", "read_mixeval", "freeform_correct_rule", "run_mixeval"]

MULTI_CHOICE = "Answer with the option letter from the given choices directly."
FREE_FORM = "Answer the question shortly."
STEP_BY_STEP = "Answer the question. \nLet's think step by step."
_STEP_BENCHMARKS = ("BBH", "GSM8k", "MATH")
_SPLITS = {"free-form": "freeform", "multiple-choice": "multichoice"}


# ------------------------------------------------------------------------------------------------ reading


def _entry(path: Path, line: int | None, key: Any, rec: dict) -> dict[str, Any]:
    kind = rec.get("problem_type")
    if kind not in _SPLITS:
        raise DataError(path, line, "problem_type", f"expected free-form or multiple-choice, got {kind!r}")
    for name in ("prompt", "benchmark_name"):
        if not isinstance(rec.get(name), str):
            raise DataError(path, line, name, "missing or not a string")
    target = rec.get("target")
    if not isinstance(target, list) or not target:
        raise DataError(path, line, "target", "expected a non-empty list")
    if kind == "multiple-choice":
        options = rec.get("options")
        if not isinstance(options, list) or not options:
            raise DataError(path, line, "options", "expected a non-empty list of options")
        if len(target) != 1 or not isinstance(target[0], int) or not 0 <= target[0] < len(options):
            raise DataError(path, line, "target", f"expected [index of the gold option], got {target!r}")
    if "response" in rec and not isinstance(rec["response"], str):
        raise DataError(path, line, "response", "not a string")
    judged = rec.get("judge_score", rec.get("judge_option"))  # the official judge_results_* files
    if judged is not None and not isinstance(judged, (float, int, str)):
        raise DataError(path, line, "judge_score" if "judge_score" in rec else "judge_option", "not a score or letter")
    return {"id": f"{_SPLITS[kind]}/{key}", "split": _SPLITS[kind], "context": rec.get("context"),
            "prompt": rec["prompt"], "options": rec.get("options"), "target": target,
            "benchmark": rec["benchmark_name"], "response": rec.get("response"), "judged": judged}


def read_mixeval(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a MixEval data file (a JSON object keyed by id) or answer file (JSON lines with ``id``), in
    file order: ``{id: "<split>/<id>", split, context, prompt, options, target, benchmark, response}``.

    Raises:
        DataError: naming the file (and line) and the field at fault.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("{") and "\n{" not in text.strip():
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, exc.lineno, None, f"malformed JSON: {exc.msg}") from None
        if isinstance(data, dict) and "problem_type" not in data:
            return [_entry(path, None, key, rec) for key, rec in data.items()]
    out = []
    for line, rec in iter_json_items(path):
        if "id" not in rec:
            raise DataError(path, line, "id", "missing")
        out.append(_entry(path, line, rec["id"], rec))
    return out


def _has_context(entry: dict) -> bool:
    context = entry.get("context")
    return str(context).lower() not in ("none", "null") and str(context).replace(" ", "") != ""


def mixeval_prompt(entry: dict) -> str:
    """The question as the official ``construct_prompt_*`` builds it for a chat model."""
    if entry["split"] == "multichoice":
        letters = [chr(ord("A") + i) for i in range(len(entry["options"]))]
        options = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, entry["options"]))
        head = f"{entry['context']}\n" if _has_context(entry) else ""
        return f"{head}{entry['prompt']}\n{options}\n{MULTI_CHOICE}"
    if entry["benchmark"] == "QuAc":
        raise ValueError("MixEval has no free-form prompt for QuAc (the official code raises too)")
    prompt = f"{entry['prompt']}\n{STEP_BY_STEP if entry['benchmark'] in _STEP_BENCHMARKS else FREE_FORM}"
    return f"Question: {entry['context']}\n{prompt}" if _has_context(entry) else f"Question: {prompt}"


# ------------------------------------------------------------------------------------------- rule parsers

_CHOICE_FORMS = (" {} ", " {}\n", "\n{} ", "\n{}\n", " {}. ", " {}.\n", "\n{}. ", "\n{}.\n", "({})", "**{} ",
                 " {}**", "**{}. ", " {}.**")


def parse_choice_rule(response: str, n_options: int, options: Sequence[str], rng: random.Random) -> str:
    """``parse_multi_choice_response_rule``: the chosen letter. The reply is stripped of ``,.!?;:'`` at both
    ends and padded with a space; the earliest occurrence of any letter form wins (``"I think (B)"`` -> B).
    With none, a reply of more than five words is searched for the option texts (case-insensitive, earliest
    wins); with none still, ``rng.choice`` picks a letter."""
    letters = [chr(ord("A") + i) for i in range(n_options)]
    for char in ",.!?;:'":
        response = response.strip(char)
    padded = f" {response} "
    found = [(m.start(), letter) for letter in letters for form in _CHOICE_FORMS
             for m in re.finditer(re.escape(form.format(letter)), padded)]
    if not found and len(padded.split()) > 5:
        found = [(m.start(), letter) for letter, text in zip(letters, options)
                 for m in re.finditer(re.escape(str(text).lower()), padded.lower())]
    if not found:
        return rng.choice(letters)
    # the official argmin over candidates in (letter, form, position) order: the first listed at the minimum
    first = min(pos for pos, _ in found)
    return next(letter for pos, letter in found if pos == first)


_NUMBER_PATTERNS = (r"-?\b\d{1,3}(?:,\d{3})+\b", r"-?\d+(?:\.\d+)?[eE][+-]?\d+",
                    r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_KEYS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def _normalize(text: str) -> list:
    """``normalize_str``: a number (commas removed) -> [float rounded to 2 dp]; else lower case, a single
    character padded (``" x"``, ``"x "``) so that it does not match inside words."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_tails(response: str) -> list[str]:
    """``get_key_subresponses``: per sentence (split at ``. `` before a capital, or a newline; the reply
    lower-cased first, so only newlines split), the shortest tail after an answer word ("=" too in the last)."""
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    tails = []
    for index, part in enumerate(parts):
        keys = _KEYS + (("=",) if index == len(parts) - 1 else ())
        shortest = None
        for key in keys:
            if key in part:
                tail = part.split(key)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            tails.append(shortest)
    return tails or [response]


def parse_freeform_rule(response: str) -> list:
    """``parse_freeform_response_rule``: the normalized tails and the numbers in them, without duplicates."""
    tails = _key_tails(response)
    predictions = list(tails)
    for tail in tails:
        for pattern in _NUMBER_PATTERNS:
            predictions += re.findall(pattern, tail)
    normalized = [n for p in predictions for n in _normalize(p)]
    return list(dict.fromkeys(normalized))


def freeform_correct_rule(target: Sequence[str], predictions: Sequence) -> bool:
    """``eval_freeform_rule``: a gold string inside a predicted string, or a gold number equal to a predicted one."""
    gold = [n for answer in target for n in _normalize(str(answer))]
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in gold):
                return True
        elif pred in gold:
            return True
    return False


# ----------------------------------------------------------------------------------------------- judges

def judge_messages(entry: dict, response: str, template_dir: str | Path | None = None) -> list[dict[str, str]]:
    """The judge's question for one reply: the free-form grader (template ``mixeval_freeform``, gold answers
    written ``<answer 1> x; <answer 2> y`` as the official prompt lists them) or the option extractor
    (``mixeval_choice``, options as ``A. option`` lines). The bundled templates are novalign's own wording of
    the official tasks with the official answer formats (``[[score]]``, ``[[X]]``); to judge with the official
    wording, put it in ``<template_dir>/mixeval_freeform.en.txt`` / ``mixeval_choice.en.txt`` (placeholders
    ``{prompt}``, ``{gold_ans}`` / ``{options}``, ``{response}``)."""
    if entry["split"] == "freeform":
        gold = "; ".join(f"<answer {i + 1}> {a}" for i, a in enumerate(entry["target"]))
        text = render(load_template("mixeval_freeform", "en", template_dir), prompt=entry["prompt"], gold_ans=gold,
                      response=response)
    else:
        letters = [chr(ord("A") + i) for i in range(len(entry["options"]))]
        options = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, entry["options"]))
        text = render(load_template("mixeval_choice", "en", template_dir), prompt=entry["prompt"], options=options,
                      response=response)
    return [{"role": "user", "content": text}]


def parse_choice_judge(text: str) -> str:
    """``get_option_from_judge`` + ``is_option``: the letter in the first ``[[X]]`` (else ``[X]``)."""
    found = re.search(r"\[\[([A-Z])\]\]", text) or re.search(r"\[([A-Z])\]", text)
    if not found:
        raise JudgeParseError("give the chosen option as [[X]]")
    return found.group(1)


def parse_score_judge(text: str) -> float:
    """``get_score_from_judge``: the number in the first ``[[s]]`` (else ``[s]``), which must lie in [0, 1]."""
    found = re.search(r"\[\[(\d+\.?\d*)\]\]", text) or re.search(r"\[(\d+\.?\d*)\]", text)
    if not found:
        raise JudgeParseError("give the correctness score as [[score]]")
    score = float(ast.literal_eval(found.group(1)))
    if not 0 <= score <= 1:
        raise JudgeParseError(f"the correctness score must be in [0, 1], got {score}")
    return score


# ------------------------------------------------------------------------------------------------ scores


def mixeval_scores(records: Sequence[dict]) -> dict[str, Any]:
    """``compute_metric``: per split the mean ``score`` per benchmark and overall, rounded to 3 dp; then each
    key's two rounded split scores weighted by their counts. Example: free form 2 samples (1, 0.5 -> 0.75),
    multiple choice 3 (1, 0, 0 -> 0.333): overall 0.75 * 2/5 + 0.333 * 3/5 = 0.4998."""
    sums: dict[str, dict[str, list[float]]] = {"freeform": defaultdict(list), "multichoice": defaultdict(list)}
    for r in records:
        for key in ("overall", r["benchmark"]):
            sums[r["split"]][key].append(float(r["score"] or 0))
    rounded = {split: {k: round(sum(v) / len(v), 3) for k, v in groups.items()} for split, groups in sums.items()}
    combined = {}
    for key in set(sums["freeform"]) | set(sums["multichoice"]):
        n_ff, n_mc = len(sums["freeform"].get(key, [])), len(sums["multichoice"].get(key, []))
        combined[key] = (rounded["freeform"].get(key, 0) * n_ff + rounded["multichoice"].get(key, 0) * n_mc) / (n_ff + n_mc)
    metrics = {"score": combined.get("overall", 0.0)}
    metrics |= {f"{split}_score": rounded[split]["overall"] for split in rounded if "overall" in rounded[split]}
    by_benchmark = {k: {"score": v} for k, v in sorted(combined.items()) if k != "overall"}
    return {"metrics": metrics, "by_category": by_benchmark}


# --------------------------------------------------------------------------------------------- the suite


def _record(e: dict, response: str, parsed: Any, score: float | None, error: str | None = None) -> dict:
    return {"id": e["id"], "category": e["benchmark"], "benchmark": e["benchmark"], "split": e["split"],
            "response": response, "parsed": parsed, "score": score, "failed": error is not None, "error": error}


def _rule_record(e: dict, response: str, rng: random.Random) -> dict:
    if e["split"] == "multichoice":
        letter = parse_choice_rule(response, len(e["options"]), e["options"], rng)
        return _record(e, response, letter, float(letter == chr(ord("A") + e["target"][0])))
    predictions = parse_freeform_rule(response)
    return _record(e, response, predictions, float(freeform_correct_rule(e["target"], predictions)))


def _judged_record(e: dict, response: str, judgment: Judgment) -> dict:
    if judgment.failed:
        return _record(e, response, None, None, judgment.error)
    if e["split"] == "multichoice":
        return _record(e, response, judgment.parsed, float(judgment.parsed == chr(ord("A") + e["target"][0])))
    return _record(e, response, judgment.parsed, judgment.parsed)


def run_mixeval(ctx: SuiteContext) -> dict[str, Any]:
    """MixEval(-Hard): ``data`` one data or answer file, or a list in ``options.files`` (the free-form and the
    multiple-choice split); answers in the files are scored as given, else the model is asked; the official
    ``judge_results_{ff,mp}_model_judge_*.jsonl`` files (their ``judge_score`` / ``judge_option``) are re-scored.
    ``options.parser``: ``judge`` (default: the config's judge, the official model parser) or ``rule``;
    ``options.seed`` (42) for the rule parser's random fallback. Metric ``score`` (the overall MixEval score),
    ``freeform_score``, ``multichoice_score``; per benchmark in ``by_category``."""
    files = ctx.options.get("files") or ([str(ctx.data)] if ctx.data is not None else [])
    if not files:
        raise ValueError(f"suite {ctx.name!r}: needs data or options.files (MixEval data or answer files)")
    entries = [e for f in ([files] if isinstance(files, str) else files) for e in read_mixeval(f)]
    parser = ctx.options.get("parser", "judge")
    if parser not in ("judge", "rule"):
        raise ValueError(f"suite {ctx.name!r}: options.parser must be judge or rule, got {parser!r}")
    rng = random.Random(int(ctx.options.get("seed", 42)))
    fresh: dict[str, dict] = {}
    for chunk in kit.chunks(kit.pending(ctx, entries), kit.chunk_size(ctx)):
        unanswered = [e for e in chunk if e["response"] is None]
        if unanswered:
            if ctx.respond is None:
                raise ValueError(f"suite {ctx.name!r}: entries without a response and no model to ask")
            for e, reply in zip(unanswered, ctx.respond([[{"role": "user", "content": mixeval_prompt(e)}]
                                                         for e in unanswered]), strict=True):
                e["response"] = reply
        if parser == "rule":
            for e in chunk:
                fresh[e["id"]] = _rule_record(e, e["response"], rng)
                ctx.write(fresh[e["id"]])
            continue

        given = [e for e in chunk if e["judged"] is not None]  # re-scored from a judge_results file
        for e in given:
            fresh[e["id"]] = _judged_record(e, e["response"], Judgment(parsed=e["judged"]))
            ctx.write(fresh[e["id"]])
        chunk = [e for e in chunk if e["judged"] is None]
        if not chunk:
            continue

        def units(e: dict) -> list[kit.Unit]:
            parse = parse_choice_judge if e["split"] == "multichoice" else parse_score_judge
            return [(judge_messages(e, e["response"], ctx.template_dir), parse)]

        for r in kit.judge_all(ctx, chunk, units, lambda e, js: _judged_record(e, e["response"], js[0])):
            fresh[r["id"]] = r
    records = kit.all_records(ctx, list(fresh.values()), [e["id"] for e in entries])
    scores = mixeval_scores(records)
    return kit.summary(records, scores["metrics"], scores["by_category"], parser=parser,
                       decimals={k: 3 for k in scores["metrics"]})
