"""Judging new answers for Arena-Hard-Auto (``gen_judgment.py``): two games per question, position swapped.

Questions: ``data/arena-hard-v*/question.jsonl`` -- ``{uid, category, prompt}`` (the v0.1 release wrote
``{question_id, category, turns: [{content}]}``). Answers: ``model_answer/<model>.jsonl`` -- ``{uid, model,
messages: [..., {role: assistant, content: {answer}}]}`` (v0.1: ``{question_id, model_id, choices: [{turns:
[{content}]}]}``). For each question the judge sees the user prompt and two answers: game 1 with the
baseline as assistant A and the model as B, game 2 swapped. Its verdict is read as ``get_score`` does: on
the upper-cased reply, the first of the patterns ``\\[\\[([AB<>=]+)\\]\\]``, ``\\[([AB<>=]+)\\]`` that matches gives
its last match; a verdict outside the five labels (or none) is re-asked, then recorded as ``null``.

The judge's instructions are novalign's wording of the official system prompt (template
``arenahard_system``; the question layout, ``arenahard``, is the official ``<|User Prompt|>`` one); to judge
with the official wording, put it in ``<template_dir>/arenahard_system.en.txt``. Records are the official
judgment lines (``{question_id, model, judge, games: [{user_prompt, judgment, score}]}``), so
:func:`novalign.eval.arenahard.battles_from_judgments` scores them as it scores published files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval import suite_kit as kit
from novalign.eval.judge import JudgeParseError, Judgment, load_template, render
from novalign.eval.official import iter_json_items
from novalign.eval.suite_api import SuiteContext

__all__ = ["FIVE_VERDICTS", "arena_game_prompts", "judge_arena_answers", "parse_arena_verdict",
           "read_arena_answers", "read_arena_questions"]

FIVE_VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))


def read_arena_questions(path: str | Path) -> list[dict[str, Any]]:
    """``{id, category, prompt}`` per question (``uid`` or ``question_id``; ``prompt`` or ``turns[0].content``)."""
    out = []
    for line, rec in iter_json_items(path):
        qid = rec.get("uid", rec.get("question_id"))
        if qid is None:
            raise DataError(path, line, "uid", "missing (nor question_id)")
        prompt = rec.get("prompt")
        if prompt is None and isinstance(rec.get("turns"), list) and rec["turns"]:
            prompt = rec["turns"][0].get("content") if isinstance(rec["turns"][0], dict) else None
        if not isinstance(prompt, str):
            raise DataError(path, line, "prompt", "missing or not a string (nor turns[0].content)")
        out.append({"id": str(qid), "category": str(rec.get("category", "all")), "prompt": prompt})
    return out


def read_arena_answers(path: str | Path) -> dict[str, str]:
    """{question id: answer} from an official ``model_answer`` file (either release's layout)."""
    out = {}
    for line, rec in iter_json_items(path):
        qid = rec.get("uid", rec.get("question_id"))
        if qid is None:
            raise DataError(path, line, "uid", "missing (nor question_id)")
        try:
            if "messages" in rec:
                content = rec["messages"][-1]["content"]
                answer = content["answer"] if isinstance(content, dict) else content
            else:
                answer = rec["choices"][0]["turns"][0]["content"]
        except (KeyError, IndexError, TypeError):
            raise DataError(path, line, "messages[-1].content.answer", "missing (nor choices[0].turns[0].content)") from None
        if not isinstance(answer, str):
            raise DataError(path, line, "answer", "not a string")
        out[str(qid)] = answer
    return out


def parse_arena_verdict(text: str) -> str:
    """The verdict label of a judgment (``get_score``): ``"... [[B>A]]"`` -> ``B>A``; ``"[[a>b]] then [[A=B]]"``
    -> ``A=B`` (the last match, read upper-cased). Raises JudgeParseError when there is none of the five."""
    upper = text.upper()
    for pattern in _PATTERNS:
        found = [m for m in pattern.findall(upper) if m != ""]
        if found:
            verdict = found[-1].strip("\n")
            if verdict not in FIVE_VERDICTS:
                raise JudgeParseError(f"the verdict must be one of {', '.join(FIVE_VERDICTS)}, got [[{verdict}]]")
            return verdict
    raise JudgeParseError("end with the verdict in double brackets, e.g. [[A=B]]")


def arena_game_prompts(system: str, layout: str, question: str, baseline: str, answer: str) -> list[list[dict]]:
    """The two judge conversations: game 1 (A = baseline, B = model) and game 2 (A = model, B = baseline)."""
    games = []
    for a, b in ((baseline, answer), (answer, baseline)):
        games.append([{"role": "system", "content": system},
                      {"role": "user", "content": render(layout, question=question, answer_a=a, answer_b=b)}])
    return games


def _answers(ctx: SuiteContext, questions: list[dict], option: str, peer: str | None, own: bool) -> dict[str, str]:
    """Answers to ``questions``: from a model_answer file (``options[option]``), the model under test or a peer."""
    if ctx.options.get(option):
        found = read_arena_answers(ctx.options[option])
        missing = [q["id"] for q in questions if q["id"] not in found]
        if missing:
            raise ValueError(f"suite {ctx.name!r}: {ctx.options[option]} has no answer for {missing[:5]}")
        return found
    respond = ctx.respond if own else ctx.peers.get(peer or "")
    if respond is None:
        what = "no model to ask" if own else f"options.baseline_answers or a peer model named {peer!r}"
        raise ValueError(f"suite {ctx.name!r}: needs {what}")
    replies = respond([[{"role": "user", "content": q["prompt"]}] for q in questions])
    return {q["id"]: r for q, r in zip(questions, replies, strict=True)}


def judge_arena_answers(ctx: SuiteContext, baseline: str) -> list[dict]:
    """Judge the model's answers against the baseline's for ``data`` (a question file): one record per question
    ``{id, category, question_id, model, scores: [game 1, game 2], games}`` (a failed game scores ``None``).
    Answers come from ``options.responses`` / ``options.baseline_answers`` (model_answer files), or are asked
    of the model under test / the peer model named ``baseline``. Resumed records are kept."""
    kit.require(ctx, "data")
    questions = read_arena_questions(ctx.data)
    system = load_template("arenahard_system", "en", ctx.template_dir)
    layout = load_template("arenahard", "en", ctx.template_dir)
    model = ctx.options.get("model", ctx.model_name)
    fresh = []
    for chunk in kit.chunks([q for q in questions if f"{model}/{q['id']}" not in ctx.done], kit.chunk_size(ctx)):
        mine = _answers(ctx, chunk, "responses", None, own=True)
        theirs = _answers(ctx, chunk, "baseline_answers", baseline, own=False)
        for q in chunk:
            q["games"] = arena_game_prompts(system, layout, q["prompt"], theirs[q["id"]], mine[q["id"]])

        def finish(q: dict, js: list[Judgment]) -> dict:
            games = [{"user_prompt": g[1]["content"], "judgment": j.raw[-1] if j.raw else None,
                      "score": None if j.failed else j.parsed} for g, j in zip(q["games"], js)]
            return {"id": f"{model}/{q['id']}", "category": model, "question_id": q["id"], "model": model,
                    "baseline": baseline, "scores": [g["score"] for g in games], "games": games,
                    "failed": all(j.failed for j in js), "error": next((j.error for j in js if j.failed), None)}

        fresh += kit.judge_all(ctx, chunk, lambda q: [(g, parse_arena_verdict) for g in q["games"]], finish)
    return kit.all_records(ctx, fresh, [f"{model}/{q['id']}" for q in questions])
