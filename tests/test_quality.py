"""Anchored pairwise prompt quality (novalign.flywheel.quality): parsing, the position swap cancelling a biased
judge, aggregation by hand (mean of levels and Bradley-Terry), anchors, thresholds, and a whole run through
the real LLM client with simulated external judges (novalign.world.selection_pool, documented stand-ins)."""

from __future__ import annotations

import pytest

from novalign.eval.judge import JudgeParseError
from novalign.flywheel import quality as q

ALL_A = "Clarity: [[A]]\nPracticality: [[A]]\nComplexity: [[A]]\nNovelty: [[A]]"


def test_parse_dimensions():
    assert q.parse_dimensions("Clarity: [[A]]\nPracticality: [[C]]\n**Complexity**: [[B]]\nNovelty: [[b]]") == \
        {"clarity": "A", "practicality": "tie", "complexity": "B", "novelty": "B"}
    with pytest.raises(JudgeParseError, match="novelty"):
        q.parse_dimensions("Clarity: [[A]]\nPracticality: [[A]]\nComplexity: [[A]]")
    with pytest.raises(JudgeParseError, match="twice"):
        q.parse_dimensions(ALL_A + "\nClarity: [[B]]")
    with pytest.raises(JudgeParseError, match="outside"):
        q.parse_dimension_scores("Clarity: [[11]]\nPracticality: [[1]]\nComplexity: [[1]]\nNovelty: [[1]]")


def test_anchored_aggregation_by_hand_and_position_bias_cancelled():
    """Prompt 0 against anchors 10 and 11, two judges.

    Judge "fair": prompt first -> clarity A (prompt better), anchor first -> clarity B (prompt better): both
    orders agree -> better (+1) vs anchor 10; vs anchor 11: prompt first B, anchor first A -> worse (-1).
    Judge "biased" always answers A: A then A -> the orders disagree -> same (0), both anchors.
    Clarity of prompt 0 = mean(+1, -1, 0, 0) = 0. Its complexity: fair says A/B (better) vs 10 and C/C
    (same) vs 11 -> mean(+1, 0, 0, 0) = 0.25. Anchor 10 gets the mirror of its comparisons: clarity
    mean(-1, 0) = -0.5; anchor 11: mean(+1, 0) = 0.5.
    """
    fair_10 = q.pair_verdicts(q.parse_dimensions(ALL_A), q.parse_dimensions(ALL_A.replace("A", "B")))
    assert fair_10 == dict.fromkeys(q.DIMENSIONS, "better")
    biased = q.pair_verdicts(q.parse_dimensions(ALL_A), q.parse_dimensions(ALL_A))
    assert biased == dict.fromkeys(q.DIMENSIONS, "same")  # the swap cancels a first-position preference
    fair_11 = q.pair_verdicts({"clarity": "B", "practicality": "tie", "complexity": "tie", "novelty": "tie"},
                              {"clarity": "A", "practicality": "tie", "complexity": "tie", "novelty": "tie"})
    assert fair_11["clarity"] == "worse" and fair_11["complexity"] == "same"
    verdicts = [(0, 10, "fair", fair_10), (0, 11, "fair", fair_11), (0, 10, "biased", biased),
                (0, 11, "biased", biased)]
    agg = q.mean_levels(verdicts, [0, 10, 11])
    assert agg[0]["clarity"] == 0.0 and agg[0]["complexity"] == 0.25
    assert agg[10]["clarity"] == -0.5 and agg[11]["clarity"] == 0.5
    overall, label = q.overall_label(agg[0])
    assert overall == pytest.approx((0 + 0.25 + 0.25 + 0.25) / 4) and label == "medium"
    assert q.select_by_threshold([0.1, 0.1], ["Math", "Code"], {"Math": 0.2}, 0.0) == [False, True]


def test_bradley_terry_orders_by_wins():
    """Three items, item 0 beats 1 and 2 twice each, 1 beats 2 twice, one tie 1~2 (a win each way):
    BT strengths order 0 > 1 > 2 on every dimension."""
    levels = dict.fromkeys(q.DIMENSIONS, "better")
    same = dict.fromkeys(q.DIMENSIONS, "same")
    verdicts = [(0, 1, "j", levels)] * 2 + [(0, 2, "j", levels)] * 2 + [(1, 2, "j", levels)] * 2 + \
        [(1, 2, "j", same)]
    bt = q.bradley_terry(verdicts, [0, 1, 2])
    for d in q.DIMENSIONS:
        assert bt[0][d] > bt[1][d] > bt[2][d]


def test_draw_anchors_stratified():
    """Members 0..7 in strata a x6, b x2, 4 anchors: exact 3 and 1 -> three from a, one from b; seeded."""
    strata = ["a"] * 6 + ["b"] * 2
    got = q.draw_anchors(list(range(8)), strata, 4, seed=1)
    assert len(got) == 4 and sum(g >= 6 for g in got) == 1
    assert got == q.draw_anchors(list(range(8)), strata, 4, seed=1)
    assert q.length_strata([5, 1, 3, 7]) == [2, 0, 1, 3]


def test_score_quality_with_simulated_judges_tracks_planted_quality():
    """12 prompts in 2 buckets, 3 anchors each, 2 simulated judges (position bias 15 %, noise 20 %) through
    the real LLMClient: 2 x 3 x 2 = 12 calls per non-anchor prompt, and the anchored score correlates with the
    planted overall quality."""
    from scipy.stats import spearmanr

    from novalign.config.selection import ScoreQualityConfig
    from novalign.llm import LLMClient
    from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool

    pool = quality_pool(12, seed=3)
    truth = {r["prompt"]: r["planted"] for r in pool}
    for r in pool:  # two buckets of six
        r["labels"]["ability"] = "A" if int(r["_id"][1:]) % 2 else "B"
    clients = {n: LLMClient(SimulatedJudgeBackend(n, truth), progress=False, print_usage=False)
               for n in ("sim-1", "sim-2")}
    cfg = ScoreQualityConfig(anchors=3)
    try:
        out = q.score_quality([r["prompt"] for r in pool], [r["labels"]["ability"] for r in pool], clients, cfg)
    finally:
        for c in clients.values():
            c.close()
    # per bucket: 3 prompts x 3 anchors + 3 anchor pairs = 12 pairs, x 2 orders x 2 judges
    assert out["calls"] == 2 * 12 * 2 * 2 and not out["failures"]
    assert sorted(len(v) for v in out["anchors"].values()) == [3, 3]
    rho = spearmanr(out["overall"], [r["planted_overall"] for r in pool]).statistic
    assert rho > 0.5


def test_score_quality_command_over_http_judges(tmp_path):
    """``novalign data score-quality`` end to end: two judges behind an OpenAI-compatible HTTP stand-in for
    external models (tests/scripted_llm.py answering as SimulatedJudgeBackend), 8 prompts in one bucket with
    2 anchors: 6 x 2 + 1 anchor pair = 13 pairs x 2 orders x 2 judges = 52 calls; a record without the
    bucket field is an error naming file:line:field."""
    import json

    from typer.testing import CliRunner

    from novalign.cli import app
    from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool
    from tests.scripted_llm import ScriptedLLM

    pool = quality_pool(8, seed=5)
    for r in pool:
        r["labels"]["ability"] = "Creation"
    truth = {r["prompt"]: r["planted"] for r in pool}
    judges = {name: SimulatedJudgeBackend(name, truth) for name in ("a", "b")}
    server = ScriptedLLM(lambda route, messages: judges[route].answer(messages[-1]["content"]))
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pool))
    judge_list = json.dumps([{"backend": "openai", "base_url": server.base_url(n), "model": n, "api_key": "k",
                              "cache_path": str(tmp_path / "cache.sqlite")} for n in judges])
    try:
        res = CliRunner().invoke(app, ["data", "score-quality", "--input", str(data), "--output-dir",
                                       str(tmp_path / "out"), "--set", f"judges={judge_list}", "--set", "anchors=2",
                                       "--set", "distill=true", "--set", "distill_heldout=0.5"])
        assert res.exit_code == 0, res.output
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        # the distilled scorer: trained on 4, tested on pairs of the other 4; saved and applied again
        assert stats["distilled"]["train"] == 4 and 0 <= stats["distilled"]["pairwise_accuracy"] <= 1
        from novalign.flywheel.quality_run import apply_scorer

        assert apply_scorer(tmp_path / "out" / "scorer.json", [pool[0]["prompt"]]).shape == (1,)
        assert stats["judge_calls"] == 52 and stats["anchors"] == 2 and stats["failed_pairs"] == 0
        assert sum(len(v) for v in server.bodies.values()) == 52
        scored = [json.loads(x) for x in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
        assert len(scored) == 8 and all(set(r["quality"]["scores"]) == set(q.DIMENSIONS) for r in scored)
        # distill: lm -- the tiny-LM scorer (a few steps: the wiring; its learning is tests/test_quality_scorers.py)
        res = CliRunner().invoke(app, ["data", "score-quality", "--input", str(data), "--output-dir",
                                       str(tmp_path / "out_lm"), "--set", f"judges={judge_list}", "--set", "anchors=2",
                                       "--set", "distill=lm", "--set", "distill_steps=3", "--set", "distill_heldout=0.5"])
        assert res.exit_code == 0, res.output
        stats = json.loads((tmp_path / "out_lm" / "stats.json").read_text())
        assert stats["distilled"]["kind"] == "lm" and stats["distilled"]["train"] == 4
        lm_dir = tmp_path / "out_lm" / "scorer_lm"
        assert (lm_dir / "quality_scorer.json").is_file() and (lm_dir / "config.json").is_file()
        # the saved scorers in place of judges: no judge call, the scorer's own scores
        from novalign.flywheel.quality_lm import lm_scores

        for scorer, tag in ((lm_dir, "s_lm"), (tmp_path / "out" / "scorer.json", "s_ridge")):
            res = CliRunner().invoke(app, ["data", "score-quality", "--input", str(data), "--output-dir",
                                           str(tmp_path / tag), "--set", f"scorer={scorer}", "--set", "threshold=-5"])
            assert res.exit_code == 0, res.output
            got = [json.loads(x)["quality"] for x in (tmp_path / tag / "scored.jsonl").read_text().splitlines()]
            assert json.loads((tmp_path / tag / "stats.json").read_text())["judge_calls"] == 0 and len(got) == 8
            want = apply_scorer(scorer, [r["prompt"] for r in pool])
            assert [g["overall"] for g in got] == pytest.approx(list(want))
        per_dim = lm_scores(lm_dir, [r["prompt"] for r in pool])
        lm_got = [json.loads(x)["quality"] for x in (tmp_path / "s_lm" / "scored.jsonl").read_text().splitlines()]
        assert [g["scores"]["novelty"] for g in lm_got] == pytest.approx(list(per_dim[:, 3]))
        assert got[0]["scores"] is None  # the ridge scorer predicts the overall score only
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(pool[0]) + "\n" + json.dumps({"prompt": "x", "labels": {}}) + "\n")
        res = CliRunner().invoke(app, ["data", "score-quality", "--input", str(bad), "--output-dir",
                                       str(tmp_path / "out2"), "--set", f"judges={judge_list}"])
        assert res.exit_code != 0 and "bad.jsonl:2" in res.output and "labels.ability" in res.output
    finally:
        server.close()


def test_score_quality_step_in_a_pipeline(tmp_path):
    """The ``score_quality`` step: judges are LLM configs over the pipeline's llm (two routes of one HTTP
    stand-in); 6 prompts, one bucket, 2 anchors: 4 x 2 + 1 = 9 pairs x 2 orders x 2 judges = 36 requests,
    reported as the step's requests; records under the threshold are dropped with their scores."""
    import json

    from novalign.config.llm import LLMConfig
    from novalign.flywheel.pipeline import Pipeline
    from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool
    from tests.scripted_llm import ScriptedLLM

    pool = quality_pool(6, seed=2)
    truth = {r["prompt"]: r["planted"] for r in pool}
    judges = {name: SimulatedJudgeBackend(name, truth) for name in ("a", "b")}
    server = ScriptedLLM(lambda route, messages: judges[route].answer(messages[-1]["content"]))
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({**r, "labels": {"ability": "IF"}}) + "\n" for r in pool))
    try:
        llm = LLMConfig(model="x", api_key="k", cache_path=str(tmp_path / "c.sqlite"))
        p = Pipeline(tmp_path / "run", llm=llm, progress=False).source("p", src)
        result = p.step("quality", "score_quality", {"judges": [{"base_url": server.base_url(n), "model": n}
                                                                for n in judges], "anchors": 2,
                                                     "threshold": 0.0}).run()
        kept = result.records("quality")
        assert sum(len(v) for v in server.bodies.values()) == 36
        assert all(r["quality"]["overall"] >= 0.0 for r in kept)
        drops = [json.loads(x) for x in next((tmp_path / "run" / "steps").glob("quality-*")).joinpath(
            "drops.jsonl").read_text().splitlines()]
        assert len(kept) + len(drops) == 6 and all(d["detail"]["quality"]["overall"] < 0 for d in drops)
    finally:
        server.close()
