"""Arena-Hard-Auto v0.1 scoring on judgment files written here in the official shape
(``model_judgment/<judge>/<model>.jsonl``: ``question_id``, ``model``, ``games`` with five-level verdicts)."""

from __future__ import annotations

import json
import math

import pytest

from novalign.data.io import DataError
from novalign.eval.arenahard import (
    arena_hard_score,
    battles_from_judgments,
    bradley_terry,
    read_arena_judgments,
    run_arenahard,
    win_rate,
)
from novalign.eval.suite_api import SuiteContext

B = "gpt-4-0314"


def judgment_file(path, model, games):
    rows = [{"question_id": f"q{i}", "model": model, "judge": "gpt-4-1106-preview",
             "games": [{"user_prompt": "...", "judgment": "...", "score": s} for s in pair]}
            for i, pair in enumerate(games)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_battles_weight_and_position_swap(tmp_path):
    """Game 1: A is the baseline; game 2: A is the model. q0 [A>>B, A>B]: 3 baseline wins (strong, weight 3),
    then 1 model win (game 2's A). q1 [A=B, B>>A]: a tie, then 3 baseline wins (game 2's B). q2 [null, B>A]:
    the unparsed game is dropped, then 1 baseline win."""
    path = judgment_file(tmp_path / "m.jsonl", "m", [["A>>B", "A>B"], ["A=B", "B>>A"], [None, "B>A"]])
    battles = battles_from_judgments(read_arena_judgments(path), B)
    winners = [w for _, _, w in battles]
    assert winners == ["model_a"] * 3 + ["model_b"] + ["tie"] + ["model_a"] * 3 + ["model_a"]
    assert battles_from_judgments(read_arena_judgments(path), B, first_game_only=True) == [(B, "m", "model_a")] * 3 + [(B, "m", "tie")]


def test_bradley_terry_by_hand():
    """Against the baseline only, the MLE win rate is (wins + ties / 2) / battles: m wins 3, ties 2, loses 5 ->
    4 / 10 = 0.4, Elo 1000 + 400 log10(0.4 / 0.6) = 929.56. A cycle a > b > c > a, each 2-1, gives equal
    ratings. A model that never loses rates +inf (win rate 1) and leaves the others' fit unchanged."""
    battles = [(B, "m", "model_b")] * 3 + [(B, "m", "tie")] * 2 + [(B, "m", "model_a")] * 5
    ratings = bradley_terry(battles, B)
    assert ratings[B] == 1000 and ratings["m"] == pytest.approx(1000 + 400 * math.log10(0.4 / 0.6), abs=1e-6)
    assert win_rate(ratings["m"], 1000) == pytest.approx(0.4, abs=1e-9)
    cycle = [("a", "b", "model_a")] * 2 + [("a", "b", "model_b")] + [("b", "c", "model_a")] * 2 + \
        [("b", "c", "model_b")] + [("c", "a", "model_a")] * 2 + [("c", "a", "model_b")]
    assert bradley_terry(cycle, "a") == pytest.approx({"a": 1000, "b": 1000, "c": 1000})
    more = bradley_terry(battles + [(B, "w", "model_b")] * 2, B)
    assert more["w"] == math.inf and more["m"] == pytest.approx(ratings["m"], abs=1e-6)


def test_bootstrap_interval_brackets_the_score():
    """m wins 30 of 100 against the baseline: score 0.30; the 95 % bootstrap interval lies around it (for a
    binomial share sd = sqrt(.3 x .7 / 100) = .046, so roughly .21 .. .39) and is the same for the same seed."""
    battles = [(B, "m", "model_b")] * 30 + [(B, "m", "model_a")] * 70
    first = arena_hard_score(battles, B, rounds=100, seed=1)["m"]
    assert first["score"] == pytest.approx(0.30, abs=1e-9)
    assert 0.19 < first["lower"] < 0.27 and 0.33 < first["upper"] < 0.41
    assert arena_hard_score(battles, B, rounds=100, seed=1)["m"] == first


def test_suite_scores_a_judgment_file(tmp_path):
    """m: q0 [B>A, A>B] = 2 model wins; q1 [A>B, B>A] = 2 baseline wins; q2 [A=B, A=B] = 2 ties -> 0.5."""
    path = judgment_file(tmp_path / "m.jsonl", "m", [["B>A", "A>B"], ["A>B", "B>A"], ["A=B", "A=B"]])
    written = []
    ctx = SuiteContext(name="ah", data=None, respond=None, judge=None, write=written.append, done={},
                       options={"judgments": str(path), "rounds": 20}, peers={}, model_name="m", progress=False)
    summary = run_arenahard(ctx)
    assert summary["metrics"]["score"] == pytest.approx(0.5) and len(written) == 3 and summary["baseline"] == B


def test_bad_verdict_names_line_and_field(tmp_path):
    path = judgment_file(tmp_path / "m.jsonl", "m", [["A>B", "B>A"], ["A>B", "A>>>B"]])
    with pytest.raises(DataError, match=r"m.jsonl:2: field 'games\[1\].score'"):
        read_arena_judgments(path)
