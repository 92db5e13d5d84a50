"""MT-Bench pairwise grading from a FastChat ``*_pair.jsonl`` written here in the published shape."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.mtbench_pairwise import pairwise_rates, read_pairwise_judgments, run_mtbench_pairwise
from novalign.eval.suite_api import SuiteContext

ROWS = [  # model_1, model_2, g1_winner, g2_winner
    ("m", "gpt-3.5-turbo", "model_1", "model_1"),  # m wins both orders
    ("m", "gpt-3.5-turbo", "model_1", "model_2"),  # the orders disagree: a tie
    ("gpt-3.5-turbo", "m", "tie", "tie"),
    ("m", "gpt-3.5-turbo", "error", "model_1"),  # dropped
    ("gpt-3.5-turbo", "m", "model_1", "model_1"),  # the baseline wins
    ("m", "x", "model_2", "model_2"),  # x wins; no baseline: only in pairwise-all
]


def pair_file(path, rows=ROWS):
    lines = [{"question_id": 81 + i, "model_1": a, "model_2": b, "g1_winner": g1, "g2_winner": g2, "judge":
              ["gpt-4", "pair-v2"], "g1_user_prompt": "...", "g1_judgment": "[[A]]", "g2_user_prompt": "...",
              "g2_judgment": "[[B]]", "turn": 1, "tstamp": 0.0} for i, (a, b, g1, g2) in enumerate(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


def test_rates_against_the_baseline_and_all_pairs(tmp_path):
    """pairwise-baseline: m has win 1, tie 2, loss 1 of 4 -> win_rate .25, loss_rate .25, adjusted
    (1 + 1) / 4 = .5; the baseline is not listed. pairwise-all adds (m, x), which x wins: m has win 1, loss 2,
    tie 2 of 5 -> win_rate 1/5, adjusted 2/5; x: win 1 of 1; the baseline: win 1, tie 2, loss 1 -> adjusted .5."""
    rows = read_pairwise_judgments(pair_file(tmp_path / "gpt-4_pair.jsonl"))
    rates = pairwise_rates(rows)
    assert list(rates) == ["m"]
    assert rates["m"] == {"win": 1, "loss": 1, "tie": 2, "win_rate": 0.25, "loss_rate": 0.25, "win_rate_adjusted": 0.5}
    every = pairwise_rates(rows, baseline=None)
    assert every["m"]["win_rate"] == pytest.approx(1 / 5) and every["m"]["win_rate_adjusted"] == pytest.approx(2 / 5)
    assert every["x"]["win_rate"] == 1.0 and every["gpt-3.5-turbo"]["win_rate_adjusted"] == 0.5


def test_suite_and_bad_winner(tmp_path):
    written = []
    ctx = SuiteContext(name="mtp", data=None, respond=None, judge=None, write=written.append, done={},
                       options={"judgments": str(pair_file(tmp_path / "p.jsonl"))}, peers={}, model_name="m",
                       progress=False)
    summary = run_mtbench_pairwise(ctx)
    assert summary["metrics"] == {"win_rate": 0.25, "loss_rate": 0.25, "win_rate_adjusted": 0.5}
    assert len(written) == 6 and summary["num_failed"] == 1
    bad = pair_file(tmp_path / "bad.jsonl", [("m", "b", "model_1", "A")])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'g2_winner'"):
        read_pairwise_judgments(bad)
