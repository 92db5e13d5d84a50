"""The distilled prompt-quality scorers (report 3.1.3): the n-gram features and the ridge scorer's round trip,
scoring new prompts against an earlier run's anchors, and the tiny-LM scorer (the report's Quality-7B
analogue): its samples by hand, its round trip, and that training makes it order planted-quality prompts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from novalign.flywheel import quality as q
from novalign.flywheel import quality_lm as qlm
from novalign.flywheel import quality_run as qr


def test_text_features_by_hand_and_round_trip():
    """Texts "aa bb" and "aa cc", word tf-idf (smooth idf, sublinear tf, l2 rows): idf(aa) = ln(3/3) + 1 = 1,
    idf(bb) = idf(cc) = ln(3/2) + 1 = 1.4055, so in row "aa bb" the weight of bb is 1.4055 times that of aa
    and cc's is 0. (With two texts min_df is 1, so the bigrams "aa bb", "aa cc" stay too and change the norm,
    not the ratio.) The features saved as plain data and loaded give the same rows."""
    feats = q.TextFeatures.fit(["aa bb", "aa cc"])
    word = feats.vectorizers["word"]
    assert word.idf_[word.vocabulary_["aa"]] == pytest.approx(1.0)
    assert word.idf_[word.vocabulary_["bb"]] == pytest.approx(math.log(1.5) + 1)
    row = word.transform(["aa bb"]).toarray()[0]
    ratio = row[word.vocabulary_["bb"]] / row[word.vocabulary_["aa"]]
    assert ratio == pytest.approx(1.4055, abs=1e-4) and row[word.vocabulary_["cc"]] == 0
    x = feats.transform(["aa bb", "bb cc aa"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert x.shape[0] == 2 and np.allclose(x[:, :2], [[1, 0], [0, 1]])
    again = q.TextFeatures.from_dict(json.loads(json.dumps(feats.to_dict())))
    assert np.allclose(again.transform(["aa bb", "bb cc aa"], None), feats.transform(["aa bb", "bb cc aa"], None))


def test_heldout_split_keeps_test_texts_out_of_training():
    """Six prompts, two of them the same text: whichever copy is held out, the other never trains."""
    texts = ["x", "y", "z", "dup", "dup", "w"]
    for seed in range(6):
        train, test = qr.heldout_split(texts, 0.5, seed)
        assert len(test) == 3 and not set(train) & set(test)
        assert not {texts[i] for i in train} & {texts[i] for i in test}
        assert len(train) + len(test) >= 5


def test_judge_against_anchors_equals_score_quality_for_non_anchors():
    """New prompts scored against an earlier run's anchors get exactly the scores they got in that run as
    non-anchor prompts (same anchors, same deterministic simulated judges, mean of levels); 2 x anchors x
    judges calls each."""
    from novalign.config.selection import ScoreQualityConfig
    from novalign.llm import LLMClient
    from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool

    pool = quality_pool(10, seed=4)
    texts = [r["prompt"] for r in pool]
    buckets = ["A" if i % 2 else "B" for i in range(len(pool))]
    truth = {r["prompt"]: r["planted"] for r in pool}
    clients = {"j": LLMClient(SimulatedJudgeBackend("j", truth), progress=False, print_usage=False)}
    cfg = ScoreQualityConfig(anchors=2)
    try:
        run = q.score_quality(texts, buckets, clients, cfg)
        chosen = {a for v in run["anchors"].values() for a in v}
        new = [i for i in range(len(texts)) if i not in chosen]
        again = q.judge_against_anchors([texts[i] for i in new], [buckets[i] for i in new],
                                        {b: [texts[a] for a in v] for b, v in run["anchors"].items()}, clients, cfg)
        with pytest.raises(ValueError, match="no anchors for bucket"):
            q.judge_against_anchors(["p"], ["C"], {"A": ["x"]}, clients, cfg)
    finally:
        clients["j"].close()
    assert again["scores"] == [run["scores"][i] for i in new]
    assert again["calls"] == len(new) * 2 * 2 * 1


def test_lm_samples_by_hand():
    """to_level on [-1, 1]: -1 -> 0, 0 -> round(4.5) = 4, 1 -> 9, 2 -> clipped 9. One prompt with scores
    clarity 1, practicality -1, complexity 0, novelty 0.5 (ranges [-1, 1]) -> reply "9\\n0\\n4\\n7"
    (0.5 -> round(6.75) = 7). A judge pair with clarity 0.5 vs 0.2 (margin 0.1): shown first -> A, shown
    second -> B; a difference of 0.05 -> C."""
    assert [qlm.to_level(s, -1, 1) for s in (-1, 0, 1, 2)] == [0, 4, 9, 9] and qlm.to_level(3, 1, 1) == 0
    rows = qlm.level_rows(["p"], [{"clarity": 1, "practicality": -1, "complexity": 0, "novelty": 0.5}],
                          dict.fromkeys(q.DIMENSIONS, (-1.0, 1.0)))
    assert rows[0][1]["content"] == "9\n0\n4\n7" and rows[0][0]["content"].endswith("\n\np")
    s = [{"clarity": 0.5, "practicality": 0.0, "complexity": 0.0, "novelty": 0.3},
         {"clarity": 0.2, "practicality": 0.0, "complexity": 0.05, "novelty": 0.0}]
    first, second = qlm.judge_rows("[Prompt A]\n{prompt_a}\n[Prompt B]\n{prompt_b}", ["one", "two"], s, [(0, 1)], 0.1)
    assert first[0]["content"] == "[Prompt A]\none\n[Prompt B]\ntwo"
    assert q.parse_dimensions(first[1]["content"]) == {"clarity": "A", "practicality": "tie", "complexity": "tie",
                                                       "novelty": "A"}
    assert q.parse_dimensions(second[1]["content"]) == {"clarity": "B", "practicality": "tie", "complexity": "tie",
                                                        "novelty": "B"}


SMALL = {"hidden_size": 48, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 96,
         "max_position_embeddings": 256, "vocab_size": 512}
TOPICS = ["rivers", "bread", "chess", "owls", "glass", "tides", "jazz", "maps", "wool", "comets"]
EXTRAS = ["Use at most 80 words.", "End with a question.", "Give exactly three bullet points."]
FILLER = ["It is for my sister.", "I read about it yesterday.", "My class meets on Monday."]


def planted_prompts(seed: int, n: int) -> list[tuple[str, float]]:
    """Short prompts whose planted quality is how many of the three constraint sentences they carry (0..3,
    as the quality pool plants complexity), on a random topic, with 0-2 filler sentences of no quality (so
    length alone does not give the order): ``(text, quality in [-1, 1])``."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randrange(4)
        parts = [*rng.sample(EXTRAS, k), *rng.sample(FILLER, rng.randrange(3))]
        rng.shuffle(parts)
        out.append((" ".join([f"Write about {rng.choice(TOPICS)}.", *parts]), 2 * k / 3 - 1))
    return out


def test_tiny_lm_scorer_round_trip_and_learns_planted_quality(tmp_path):
    """Train the tiny-LM scorer on 64 short prompts with planted quality (every dimension's score = the
    planted one, as if judged), and an untrained one (steps=0, the same initialisation): the saved folder is a
    normal model folder with quality_scorer.json, scores come back per dimension inside the training range,
    and on 32 other prompts the trained scorer orders the planted quality far better than the untrained."""
    from scipy.stats import spearmanr

    from novalign.models.load import load_model

    train, test = planted_prompts(1, 64), planted_prompts(2, 32)
    texts = [t for t, _ in train]
    scores = [dict.fromkeys(q.DIMENSIONS, v) for _, v in train]
    trained = qlm.train_lm_scorer(texts, scores, tmp_path / "lm", steps=60, lr=1e-2, batch_size=16, model=SMALL,
                                  threads=1)
    untrained = qlm.train_lm_scorer(texts, scores, tmp_path / "lm0", steps=0, model=SMALL)
    assert (trained / "config.json").is_file() and load_model(trained) is not None
    spec = json.loads((trained / "quality_scorer.json").read_text())
    assert spec["dimensions"] == list(q.DIMENSIONS) and spec["train_prompts"] == 64
    got = qlm.lm_scores(trained, [t for t, _ in test])
    assert got.shape == (32, 4) and got.min() >= -1 - 1e-9 and got.max() <= 1 + 1e-9
    assert np.allclose(qr.apply_scorer(trained, [test[0][0]]), got[:1].mean(axis=1))
    planted = [v for _, v in test]
    rho = spearmanr(got.mean(axis=1), planted).statistic
    rho0 = spearmanr(qlm.lm_overall(untrained, [t for t, _ in test]), planted).statistic
    assert rho > 0.8 and rho > rho0 + 0.3, (rho, rho0)
    with pytest.raises(FileNotFoundError, match="quality_scorer.json"):
        qlm.lm_scores(tmp_path, ["x"])


def test_score_quality_step_with_a_distilled_scorer(tmp_path):
    """The ``score_quality`` step with ``scorer:`` (a tiny-LM scorer folder, here the untrained one: the wiring)
    and no judges: every record gets the scorer's scores; those under the threshold (the median overall
    score) are dropped; a missing scorer path is an error naming it."""
    from novalign.flywheel.pipeline import Pipeline

    prompts = planted_prompts(3, 8)
    folder = qlm.train_lm_scorer([t for t, _ in prompts], [dict.fromkeys(q.DIMENSIONS, v) for _, v in prompts],
                                 tmp_path / "lm0", steps=0, model=SMALL)
    overall = qlm.lm_overall(folder, [t for t, _ in prompts])
    cut = float(np.median(overall))
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": t, "labels": {"ability": "IF"}}) + "\n" for t, _ in prompts))
    p = Pipeline(tmp_path / "run", progress=False).source("p", src)
    kept = p.step("quality", "score_quality", {"scorer": str(folder), "threshold": cut}).run().records("quality")
    assert sorted(r["quality"]["overall"] for r in kept) == pytest.approx(sorted(o for o in overall if o >= cut))
    assert all(set(r["quality"]["scores"]) == set(q.DIMENSIONS) for r in kept)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Pipeline(tmp_path / "run2", progress=False).source("p", src).step(
            "quality", "score_quality", {"scorer": str(tmp_path / "nowhere")}).run()
