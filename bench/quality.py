"""Anchored pairwise prompt quality against absolute scoring, on prompts with planted quality (report 3.1.3).

One run: novalign.world.selection_pool.quality_pool (planted clarity, practicality, complexity, novelty; four
buckets), three simulated judges -- stand-ins for external LLM judges (SimulatedJudgeBackend: they perceive
the planted quality with Gaussian noise sigma, prefer the first-shown prompt 15 % of the time and answer at
random 20 % of the time), through the real LLMClient and novalign.eval.judge.ask_judge:

* anchored: novalign.flywheel.quality.score_quality (anchors per bucket, both orders, mean of levels; the
  Bradley-Terry aggregation of the same verdicts is reported beside it);
* absolute: the same three judges rate each prompt 1-10 per dimension (the prompt_quality_absolute
  template; each judge has its own calibration offset, -1, 0, +1), averaged over judges.

Spearman correlation with the planted quality per dimension and overall; judge_calls_per_prompt.

Distilled scorers. The test set is fixed first: a seeded half of the pool (quality_run.heldout_split) and
200 pairs of it with different judged overall scores (heldout_pairs) -- the same pairs for every scorer.
Training prompts: the other half, plus --train-extra prompts of a second pool (another seed) judged against
the same anchors by the same judges (quality.judge_against_anchors: more judged prompts), less any text
that is also a test prompt's. Scorers, each with its pairwise accuracy against the judged labels and against
the planted quality:

* ridge_embedding_pool: the last session's scorer (all-MiniLM-L6-v2 embedding + ridge), on the pool's half;
* ridge_ngrams_pool: embedding + word/char n-gram TF-IDF (quality.TextFeatures) + ridge, the pool's half;
* ridge_ngrams: the same on all training prompts (the headline ``distilled_pairwise_accuracy``);
* tiny_lm: our own tiny causal LM fine-tuned on the judged levels (quality_lm, the report's Quality-7B);
* planted_oracle: the planted quality itself as the scorer -- the ceiling any scorer can reach against
  these judged labels (their own noise and near-ties).

Served judge: a tiny LM fine-tuned as a pairwise judge (quality_lm.train_lm_judge) on training prompts
against their anchors, started as a real ``novalign serve`` process and used through LLMClient (openai
backend over HTTP) and the same judge path (judge_against_anchors -> judge_pairs -> ask_judge) to score the
held-out prompts against --served-anchors anchors per bucket; its Spearman with the planted quality on those
prompts is reported beside the simulated judges' anchored score on the same prompts. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import log  # noqa: E402
from novalign.config.selection import ScoreQualityConfig  # noqa: E402
from novalign.eval.judge import ask_judge, load_template, render  # noqa: E402
from novalign.flywheel import quality as q  # noqa: E402
from novalign.flywheel import quality_lm as qlm  # noqa: E402
from novalign.flywheel import quality_run as qr  # noqa: E402
from novalign.llm import LLMClient  # noqa: E402
from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool  # noqa: E402


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    return None if np.isnan(rho) else round(rho, 4)  # undefined (null) when one side is constant


def scorer_result(pred, judged, truth, seed) -> dict:
    found = qr.heldout_accuracy(pred, judged, n_pairs=200, seed=seed, truth=truth)
    return {"pairwise_accuracy": round(found["pairwise_accuracy"], 4),
            "pairwise_accuracy_vs_planted": round(found["pairwise_accuracy_vs_truth"], 4), "pairs": found["pairs"]}


def served_judge(work: Path, texts, scores, buckets, anchors, train, test, planted, args) -> dict:
    """Train the tiny pairwise judge on (training prompt, its bucket's anchor) pairs, serve it, score the
    held-out prompts against ``--served-anchors`` anchors per bucket through it."""
    from serve import running_server  # bench/serve.py: `novalign serve` in a subprocess (this folder is on sys.path)

    from novalign.config.llm import LLMConfig

    rng = __import__("random").Random(args.seed)
    anchor_of = {a: b for b, v in anchors.items() for a in v}
    bucket_train = [i for i in train if i not in anchor_of]
    pairs = [(i, rng.choice(anchors[buckets[i]])) for i in bucket_train for _ in range(args.judge_pairs_per_prompt)]
    started = time.perf_counter()
    model_dir = qlm.train_lm_judge(texts, scores, pairs, work / "judge", steps=args.judge_steps, seed=args.seed)
    wall_train = time.perf_counter() - started
    log(f"served judge: trained on {2 * len(pairs)} rows in {wall_train:.0f} s")
    few = {b: v[: args.served_anchors] for b, v in anchors.items()}
    held = [i for i in test if i not in anchor_of]
    with running_server(model_dir, "engine.device=cpu", "engine.max_batch_size=32") as url:
        client = LLMClient.from_config(LLMConfig(backend="openai", base_url=url, model="tiny", api_key="none",
                                                 max_concurrency=32, cache_path=str(work / "llm-cache.sqlite")),
                                       progress=False, print_usage=False)
        started = time.perf_counter()
        try:
            got = q.judge_against_anchors([texts[i] for i in held], [buckets[i] for i in held],
                                          {b: [texts[a] for a in v] for b, v in few.items()}, {"served-tiny": client},
                                          ScoreQualityConfig(anchors=args.served_anchors, seed=args.seed))
        finally:
            client.close()
        wall_judge = time.perf_counter() - started
    sp = {d: spearman([s[d] for s in got["scores"]], [planted[d][i] for i in held]) for d in q.DIMENSIONS}
    sp["overall"] = spearman(got["overall"], [np.mean([planted[d][i] for d in q.DIMENSIONS]) for i in held])
    return {"spearman": sp, "prompts": len(held), "anchors_per_bucket": args.served_anchors,
            "calls": got["calls"], "failed_pairs": len(got["failures"]), "train_rows": 2 * len(pairs),
            "train_steps": args.judge_steps, "wall_s_train": round(wall_train, 1), "wall_s_judge": round(wall_judge, 1),
            "held": held}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--anchors", type=int, default=30)
    ap.add_argument("--sigma", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-extra", type=int, default=800, help="More prompts judged to train the scorers.")
    ap.add_argument("--lm-steps", type=int, default=300, help="Optimizer steps of the tiny-LM scorer.")
    ap.add_argument("--judge-steps", type=int, default=150, help="Optimizer steps of the served tiny judge.")
    ap.add_argument("--judge-pairs-per-prompt", type=int, default=4)
    ap.add_argument("--served-anchors", type=int, default=3, help="Anchors per bucket for the served judge.")
    ap.add_argument("--no-served", action="store_true", help="Skip the served judge.")
    args = ap.parse_args(argv)
    pool = quality_pool(args.prompts, seed=args.seed)
    texts = [r["prompt"] for r in pool]
    buckets = [r["labels"]["ability"] for r in pool]
    truth = {r["prompt"]: r["planted"] for r in pool}
    clients = {f"sim-{k}": LLMClient(SimulatedJudgeBackend(f"sim-{k}", truth, sigma=args.sigma, offset=off),
                                     progress=False, print_usage=False, max_concurrency=64)
               for k, off in enumerate((-1.0, 0.0, 1.0))}
    started = time.perf_counter()
    cfg = ScoreQualityConfig(anchors=args.anchors, seed=args.seed)
    anchored = q.score_quality(texts, buckets, clients, cfg)
    wall_anchored = time.perf_counter() - started
    log(f"anchored: {anchored['calls']} calls, {len(anchored['failures'])} failed pairs, {wall_anchored:.1f} s")
    bt = q.bradley_terry(anchored["verdicts"], list(range(len(texts))))
    template = load_template("prompt_quality_absolute")
    absolute = {d: np.zeros(len(texts)) for d in q.DIMENSIONS}
    for client in clients.values():
        judged = ask_judge(client, [render(template, prompt=t) for t in texts],
                           [q.parse_dimension_scores] * len(texts), attempts=2)
        for i, j in enumerate(judged):
            for d in q.DIMENSIONS:
                absolute[d][i] += j.parsed[d] / len(clients)
    for c in clients.values():
        c.close()
    planted = {d: [r["planted"][d] for r in pool] for d in q.DIMENSIONS}
    overall_truth = [r["planted_overall"] for r in pool]
    anchored_sp = {d: spearman([s[d] for s in anchored["scores"]], planted[d]) for d in q.DIMENSIONS}
    anchored_sp["overall"] = spearman(anchored["overall"], overall_truth)
    bt_sp = {d: spearman([bt[i][d] for i in range(len(texts))], planted[d]) for d in q.DIMENSIONS}
    bt_sp["overall"] = spearman([np.mean([bt[i][d] for d in q.DIMENSIONS]) for i in range(len(texts))], overall_truth)
    abs_sp = {d: spearman(absolute[d], planted[d]) for d in q.DIMENSIONS}
    abs_sp["overall"] = spearman(np.mean([absolute[d] for d in q.DIMENSIONS], axis=0), overall_truth)

    from novalign.flywheel.diversity import embed, load_embedder

    # the test set first: half the pool, 200 pairs of it (fixed by the judged scores and the seed)
    train, test = qr.heldout_split(texts, 0.5, args.seed)
    y = np.asarray(anchored["overall"])
    truth_arr = np.asarray(overall_truth)
    test_texts = [texts[i] for i in test]
    extra = quality_pool(args.train_extra, seed=args.seed + 1) if args.train_extra else []
    seen = set(test_texts)
    extra = [r for r in extra if r["prompt"] not in seen]  # unseen in training: no test prompt's text
    started = time.perf_counter()
    judged_extra = {"scores": [], "overall": [], "calls": 0}
    if extra:
        extra_clients = {name: LLMClient(SimulatedJudgeBackend(name, {**truth, **{r["prompt"]: r["planted"] for r in extra}},
                                                               sigma=args.sigma, offset=off),
                                         progress=False, print_usage=False, max_concurrency=64)
                         for name, off in zip(clients, (-1.0, 0.0, 1.0))}
        try:
            judged_extra = q.judge_against_anchors([r["prompt"] for r in extra], [r["labels"]["ability"] for r in extra],
                                                   {b: [texts[a] for a in v] for b, v in anchored["anchors"].items()},
                                                   extra_clients, cfg)
        finally:
            for c in extra_clients.values():
                c.close()
    log(f"extra training prompts: {len(extra)} judged, {judged_extra['calls']} calls, "
        f"{time.perf_counter() - started:.1f} s")
    embedder = load_embedder(seed=args.seed)
    emb = embed(embedder, texts)
    tr_texts = [texts[i] for i in train] + [r["prompt"] for r in extra]
    tr_scores = [anchored["scores"][i] for i in train] + judged_extra["scores"]
    tr_y = np.concatenate([y[train], np.asarray(judged_extra["overall"], dtype=float)])
    tr_emb = np.vstack([emb[train]] + ([embed(embedder, [r["prompt"] for r in extra])] if extra else []))
    n_pool = len(train)
    scorers = {}
    for name, rows, ngrams in (("ridge_embedding_pool", n_pool, False), ("ridge_ngrams_pool", n_pool, True),
                               ("ridge_ngrams", len(tr_texts), True)):
        feats, head = qr.fit_ridge(tr_texts[:rows], tr_emb[:rows], tr_y[:rows], ngrams=ngrams)
        pred = qr.predict_ridge(feats, head, test_texts, emb[test])
        scorers[name] = {**scorer_result(pred, y[test], truth_arr[test], args.seed), "train_prompts": rows}
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    started = time.perf_counter()
    lm_dir = qlm.train_lm_scorer(tr_texts, tr_scores, work / "scorer_lm", steps=args.lm_steps, seed=args.seed)
    wall_lm = time.perf_counter() - started
    pred = qlm.lm_overall(lm_dir, test_texts)
    scorers["tiny_lm"] = {**scorer_result(pred, y[test], truth_arr[test], args.seed), "train_prompts": len(tr_texts),
                          "steps": args.lm_steps, "wall_s_train": round(wall_lm, 1)}
    log(f"tiny-LM scorer: {scorers['tiny_lm']} ")
    scorers["planted_oracle"] = scorer_result(truth_arr[test], y[test], truth_arr[test], args.seed)
    served = None
    if not args.no_served:
        served = served_judge(work, texts, anchored["scores"], buckets, anchored["anchors"], train, test, planted,
                              args)
        held = served.pop("held")
        sim = {d: spearman([anchored["scores"][i][d] for i in held], [planted[d][i] for i in held])
               for d in q.DIMENSIONS}
        sim["overall"] = spearman([anchored["overall"][i] for i in held], [overall_truth[i] for i in held])
        served["spearman_simulated_same_prompts"] = sim
    anchors = {a for v in anchored["anchors"].values() for a in v}
    out = {"bench": "quality", "prompts": len(texts), "buckets": len(set(buckets)), "anchors_per_bucket": args.anchors,
           "judges": len(clients), "judge_position_bias": 0.15, "judge_noise": 0.20, "judge_sigma": args.sigma,
           "spearman_anchored": anchored_sp, "spearman_bradley_terry": bt_sp, "spearman_absolute": abs_sp,
           "distilled_pairwise_accuracy": scorers["ridge_ngrams"]["pairwise_accuracy"],
           "distilled_heldout_prompts": len(test), "distilled_train_prompts": len(tr_texts),
           "distilled_extra_judged_prompts": len(extra), "scorers": scorers,
           "served_judge": served,
           "judge_calls": anchored["calls"],
           "judge_calls_per_prompt": round(anchored["calls"] / (len(texts) - len(anchors)), 2),
           "judge_calls_per_prompt_formula": "2 orders x anchors x judges (+ anchors x anchors per bucket, fixed)",
           "wall_s_anchored": round(wall_anchored, 1), "load_avg_1m_end": round(os.getloadavg()[0], 2)}
    out["targets"] = {"spearman_ge_0.85": all(v >= 0.85 for v in anchored_sp.values()),
                      "above_absolute": all(anchored_sp[k] > abs_sp[k] for k in anchored_sp),
                      "distilled_ge_0.85": scorers["ridge_ngrams"]["pairwise_accuracy"] >= 0.85,
                      "tiny_lm_ge_0.85": scorers["tiny_lm"]["pairwise_accuracy"] >= 0.85}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
