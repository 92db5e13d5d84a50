"""Arena-Hard and MT-Bench pairwise judging *new* answers through novalign.eval.judge (the judge is a scripted
stand-in for an external judge endpoint), scored as the official files are."""

from __future__ import annotations

import json

import pytest

from novalign.eval.arenahard import read_arena_judgments, run_arenahard
from novalign.eval.arenahard_judge import parse_arena_verdict, read_arena_answers
from novalign.eval.judge import JudgeParseError
from novalign.eval.mtbench_pair_judge import parse_pair_verdict
from novalign.eval.mtbench_pairwise import run_mtbench_pairwise
from novalign.eval.suite_api import SuiteContext
from tests.scripted_llm import ScriptedLLM


def test_arena_verdict_parsing():
    assert parse_arena_verdict("My final verdict is: [[B>A]]") == "B>A"
    assert parse_arena_verdict("first [[a>b]], on reflection [[A=B]]") == "A=B"  # upper-cased, the last match
    assert parse_arena_verdict("single brackets [B>>A]") == "B>>A"
    for bad in ("no verdict", "[[A>>>B]]"):
        with pytest.raises(JudgeParseError):
            parse_arena_verdict(bad)


def test_pair_verdict_parsing():
    assert parse_pair_verdict("[[B]] ... [[A]]") == "A"  # FastChat checks [[A]] first
    assert parse_pair_verdict("so [[C]]") == "tie"
    with pytest.raises(JudgeParseError):
        parse_pair_verdict("A is better")


def _chat(answer_of):
    return lambda convs, **k: [answer_of(c[-1]["content"]) for c in convs]


def test_arenahard_judges_new_answers(tmp_path):
    """Q1: the judge prefers the model (game 1, model as B: [[B>>A]] = 3 model wins; game 2, model as A: [[A>B]]
    = 1). Q2: it prefers the baseline (game 1 [[A>B]], game 2 [[B>A]]: 1 + 1 baseline wins), after one malformed
    verdict that is re-asked. Model 4 wins, baseline 2, no ties: Bradley-Terry against the baseline alone has
    the closed form (4 + 0) / 6 = 0.6667."""
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps({"uid": f"q{i}", "category": "arena-hard-v0.1", "prompt": f"Q{i} task"})
                                 + "\n" for i in (1, 2)))
    baseline = tmp_path / "gpt-4-0314.jsonl"  # the v0.1 answer layout
    baseline.write_text("".join(json.dumps({"question_id": f"q{i}", "model_id": "gpt-4-0314",
                                            "choices": [{"index": 0, "turns": [{"content": f"base {i}"}]}]}) + "\n"
                                for i in (1, 2)))
    asked = []

    def judge(route, messages):
        asked.append(messages)
        user = messages[1]["content"]
        mine_first = user.index("mine") < user.index("base")
        if "Q1" in user:
            return "[[A>B]]" if mine_first else "verdict: [[B>>A]]"
        if not mine_first and len(messages) == 2:
            return "[[A>>>B]]"  # malformed: re-asked
        return "[[B>A]]" if mine_first else "[[A>B]]"

    llm = ScriptedLLM(judge)
    written = []
    try:
        ctx = SuiteContext(name="arenahard", data=questions, respond=_chat(lambda q: f"mine {q[:2]}"),
                           judge=llm.client("judge"), write=written.append, options={"baseline_answers": str(baseline)},
                           model_name="m", progress=False)
        summary = run_arenahard(ctx)
    finally:
        llm.close()
    assert summary["metrics"]["score"] == pytest.approx(4 / 6, abs=1e-9)
    assert len(asked) == 5 and asked[0][0]["role"] == "system" and "[[A>>B]]" in asked[0][0]["content"]
    assert [r["scores"] for r in written] == [["B>>A", "A>B"], ["A>B", "B>A"]]
    assert written[0]["games"][0]["user_prompt"].startswith("<|User Prompt|>\nQ1 task")
    assert read_arena_answers(baseline) == {"q1": "base 1", "q2": "base 2"}


def _v2_line(uid, g1, g2, category="hard_prompt"):
    return json.dumps({"uid": uid, "category": category, "judge": "j", "model": "m", "baseline": "b",
                       "games": [None if g1 is None else {"score": g1}, None if g2 is None else {"score": g2}]}) + "\n"


def test_arena_judgments_keyed_by_uid(tmp_path):
    """The current releases write uid, not question_id (read as the question id; it failed before)."""
    path = tmp_path / "m.jsonl"
    path.write_text(_v2_line("u1", "A>B", "B>A"))
    assert read_arena_judgments(path) == [{"question_id": "u1", "model": "m", "scores": ["A>B", "B>A"],
                                           "category": "hard_prompt", "uid": True}]


def test_arena_v2_scoring_of_uid_files(tmp_path):
    """The current show_result.py. u1: game 1 (baseline as A) A>B -> model 0; game 2 (model as A) A>>B -> 1, 1, 1.
    u2: game 1 B=A -> 0.5, game 2 B>A -> 0. u3: a null game -> the whole question dropped. u4 is another
    category, left out by options.category. Battles [0, 1, 1, 1, 0.5, 0] -> 3.5 / 6 = 0.5833."""
    path = tmp_path / "m.jsonl"
    path.write_text(_v2_line("u1", "A>B", "A>>B") + _v2_line("u2", "B=A", "B>A") + _v2_line("u3", None, "A>>B")
                    + _v2_line("u4", "B>>A", "A>>B", category="creative_writing"))
    ctx = SuiteContext(name="arenahard", data=None, respond=None, judge=None, write=lambda r: None,
                       options={"judgments": str(path), "category": "hard_prompt"}, model_name="m", progress=False)
    summary = run_arenahard(ctx)
    assert summary["scoring"] == "v2" and summary["metrics"]["score"] == pytest.approx(3.5 / 6)
    assert summary["metrics"]["lower"] <= summary["metrics"]["score"] <= summary["metrics"]["upper"]


def test_mtbench_pairwise_judges_new_pairs(tmp_path):
    """q1 (writing, 2 turns): turn 1 the judge picks the model in both orders -> a model win; turn 2 it always
    says [[A]] -> the games disagree -> a tie. q2 (math, with a reference): [[C]] -> a tie. Model: 1 win, 2 ties of
    3 -> win rate 1/3, adjusted (1 + 2/2) / 3 = 2/3."""
    questions = tmp_path / "question.jsonl"
    questions.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]})
                         + "\n" + json.dumps({"question_id": 111, "category": "math", "turns": ["6 * 7?"],
                                              "reference": ["42"]}) + "\n")
    seen = []

    def judge(route, messages):
        user = messages[1]["content"]
        seen.append(user)
        if "Reference Answer" in user:
            return "[[C]]"
        if "### User" in user:
            return "[[A]]"
        return "[[A]]" if user.index("mine") < user.index("base") else "[[B]]"

    llm = ScriptedLLM(judge)
    try:
        ctx = SuiteContext(name="mtbench_pairwise", data=questions, respond=_chat(lambda q: f"mine: {q}"),
                           judge=llm.client("judge"), write=lambda r: None,
                           options={"baseline": "base-model"}, peers={"base-model": _chat(lambda q: f"base: {q}")},
                           model_name="m", progress=False)
        summary = run_mtbench_pairwise(ctx)
    finally:
        llm.close()
    assert summary["metrics"] == pytest.approx({"win_rate": 1 / 3, "loss_rate": 0.0, "win_rate_adjusted": 2 / 3})
    assert summary["num_samples"] == 3 and len(seen) == 6
    assert any("[The Start of Reference Answer]\n42" in u for u in seen)
