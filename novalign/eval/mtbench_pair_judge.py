"""Judging new MT-Bench pairs as FastChat's ``gen_judgment.py --mode pairwise-baseline`` does.

Questions: ``data/mt_bench/question.jsonl`` (``question_id``, ``category``, ``turns``, optional ``reference``);
answers: FastChat ``model_answer/<model>.jsonl`` files (``choices[0].turns``) or asked of the models. For each
question and turn the judge compares the model (``model_1``) with the baseline (``model_2``) twice: game 1
with the model as assistant A, game 2 swapped (``play_a_match_pair``). Turn 1 shows the first question and
both first answers; turn 2 shows both whole conversations and judges the second answers. Questions of the
categories math, reasoning and coding (``NEED_REF_CATS``) show the reference answer(s) too. The verdict is
read as ``run_judge_pair`` reads ``[[A]]`` output: ``[[A]]`` anywhere -> A, else ``[[B]]`` -> B, else
``[[C]]`` -> tie; none is re-asked, then ``error``. ``g1_winner`` maps A/B to model_1/model_2, ``g2_winner``
to model_2/model_1, and the rows are FastChat's pairwise judgment lines, scored by
:func:`novalign.eval.mtbench_pairwise.pairwise_rates`.

The judge's instructions (template ``mtbench_pair_system``) are novalign's wording of FastChat's
``pair-v2`` prompts; the layouts (``mtbench_pair``, ``mtbench_pair_multi``) follow FastChat's. Put the
official wording in ``<template_dir>/mtbench_pair_system.en.txt`` to judge with it.
"""

from __future__ import annotations

from typing import Any

from novalign.eval import suite_kit as kit
from novalign.eval.judge import JudgeParseError, Judgment, load_template, render
from novalign.eval.official import read_answers, read_prompts
from novalign.eval.suite_api import SuiteContext

__all__ = ["NEED_REFERENCE", "judge_mtbench_pairs", "pair_prompts", "parse_pair_verdict"]

NEED_REFERENCE = ("math", "reasoning", "coding", "arena-hard-200")
_G1 = {"A": "model_1", "B": "model_2", "tie": "tie"}
_G2 = {"A": "model_2", "B": "model_1", "tie": "tie"}


def parse_pair_verdict(text: str) -> str:
    """``[[A]]`` -> A, else ``[[B]]`` -> B, else ``[[C]]`` -> tie (in that order, as FastChat checks)."""
    for mark, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if mark in text:
            return verdict
    raise JudgeParseError('end with your verdict: "[[A]]", "[[B]]" or "[[C]]"')


def _reference_block(refs: list[str] | None, turn: int) -> str:
    if not refs:
        return ""
    if turn == 1:
        return f"[The Start of Reference Answer]\n{refs[0]}\n[The End of Reference Answer]\n\n"
    shown = "".join(f"### User:\nQuestion {k + 1}\n\n### Reference answer:\n{r}\n\n" for k, r in enumerate(refs[:2]))
    return f"<|The Start of Reference Answer|>\n\n{shown}<|The End of Reference Answer|>\n\n\n"


def pair_prompts(templates: dict[str, str], turns: list[str], a: list[str], b: list[str], turn: int,
                 refs: list[str] | None) -> list[dict[str, str]]:
    """The judge conversation for one game: A's and B's answers (lists per turn) at ``turn`` (1 or 2)."""
    note = "" if turn == 1 else ", judging their answers to the second user question"
    ref_note = " A reference answer is given; compare both answers with it and find their mistakes." if refs else ""
    system = render(templates["system"], turn_note=note, reference_note=ref_note)
    ref = _reference_block(refs, turn)
    if turn == 1:
        user = render(templates["single"], reference=ref, question=turns[0], answer_a=a[0], answer_b=b[0])
    else:
        user = render(templates["multi"], reference=ref, question_1=turns[0], question_2=turns[1], answer_a_1=a[0],
                      answer_a_2=a[1], answer_b_1=b[0], answer_b_2=b[1])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _replies(ctx: SuiteContext, samples: list[dict], option: str, respond: Any) -> list[list[str]]:
    from novalign.eval.graded import _ask_turns  # the multi-turn asking of the MT-Bench grading suite

    given = read_answers(ctx.options[option]) if ctx.options.get(option) else None
    return _ask_turns(ctx, None if given is not None else respond, samples, given)


def judge_mtbench_pairs(ctx: SuiteContext, baseline: str) -> list[dict]:
    """FastChat pairwise rows (``{question_id, model_1, model_2, g1_winner, g2_winner, turn}``) for the model
    under test (``model_1``) against ``baseline`` (``model_2``), one per question and turn, judged now.
    Answers: ``options.responses`` / ``options.baseline_answers`` (FastChat model_answer files), or asked of
    the model under test and of the peer model named ``baseline``. Resumed rows are kept."""
    kit.require(ctx, "data")
    model = ctx.options.get("model", ctx.model_name)
    peer = ctx.peers.get(baseline)
    if not ctx.options.get("baseline_answers") and peer is None:
        raise ValueError(f"suite {ctx.name!r}: needs options.baseline_answers or a peer model named {baseline!r}")
    templates = {"system": load_template("mtbench_pair_system", "en", ctx.template_dir),
                 "single": load_template("mtbench_pair", "en", ctx.template_dir),
                 "multi": load_template("mtbench_pair_multi", "en", ctx.template_dir)}
    samples = read_prompts(ctx.data)
    units_of = [(s, t) for s in samples for t in range(1, min(len(s["turns"]), 2) + 1)]
    ids = [f"{model}|{baseline}|{s['id']}|{t}" for s, t in units_of]
    fresh: list[dict] = []
    for chunk in kit.chunks([s for s in samples if any(f"{model}|{baseline}|{s['id']}|{t}" not in ctx.done
                                                      for t in (1, 2)[:len(s["turns"])])], kit.chunk_size(ctx)):
        mine, theirs = _replies(ctx, chunk, "responses", ctx.respond), _replies(ctx, chunk, "baseline_answers", peer)
        games = []
        for s, a, b in zip(chunk, mine, theirs):
            refs = s["references"] if s["category"] in NEED_REFERENCE and any(s["references"]) else None
            for t in range(1, min(len(s["turns"]), 2) + 1):
                games.append({"id": f"{model}|{baseline}|{s['id']}|{t}", "question_id": s["id"], "turn": t,
                              "prompts": [pair_prompts(templates, s["turns"], a, b, t, refs),
                                          pair_prompts(templates, s["turns"], b, a, t, refs)]})
        games = [g for g in games if g["id"] not in ctx.done]

        def finish(g: dict, js: list[Judgment]) -> dict:
            won = ["error" if j.failed else m[j.parsed] for j, m in zip(js, (_G1, _G2))]
            return {"id": g["id"], "category": f"{model} vs {baseline}", "question_id": g["question_id"],
                    "model_1": model, "model_2": baseline, "g1_winner": won[0], "g2_winner": won[1],
                    "turn": g["turn"], "failed": "error" in won}

        fresh += kit.judge_all(ctx, games, lambda g: [(p, parse_pair_verdict) for p in g["prompts"]], finish)
    return kit.all_records(ctx, fresh, ids)
