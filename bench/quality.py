"""Anchored pairwise prompt quality against absolute scoring, on prompts with planted quality (report 3.1.3).

One run: novalign.world.selection_pool.quality_pool (planted clarity, practicality, complexity, novelty; four
buckets), three simulated judges -- stand-ins for external LLM judges (SimulatedJudgeBackend: they perceive
the planted quality with Gaussian noise sigma, prefer the first-shown prompt 15 % of the time and answer at
random 20 % of the time), through the real LLMClient and novalign.eval.judge.ask_judge:

* anchored: novalign.flywheel.quality.score_quality (anchors per bucket, both orders, mean of levels; the
  Bradley-Terry aggregation of the same verdicts is reported beside it);
* absolute: the same three judges rate each prompt 1-10 per dimension (the prompt_quality_absolute
  template; each judge has its own calibration offset, -1, 0, +1), averaged over judges.

Spearman correlation with the planted quality per dimension and overall; the distilled scorer
(all-MiniLM-L6-v2 embedding + ridge head, trained on the judged scores of half the prompts) and its pairwise
accuracy on 200 pairs of the held-out half, against the judged labels and the planted quality;
judge_calls_per_prompt. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import log  # noqa: E402
from novalign.config.selection import ScoreQualityConfig  # noqa: E402
from novalign.eval.judge import ask_judge, load_template, render  # noqa: E402
from novalign.flywheel import quality as q  # noqa: E402
from novalign.flywheel.quality_run import distill_scorer  # noqa: E402
from novalign.llm import LLMClient  # noqa: E402
from novalign.world.selection_pool import SimulatedJudgeBackend, quality_pool  # noqa: E402


def spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return round(float(spearmanr(x, y).statistic), 4)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--anchors", type=int, default=30)
    ap.add_argument("--sigma", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
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

    emb = embed(load_embedder(seed=args.seed), texts)
    distilled = distill_scorer(emb, anchored["overall"], heldout=0.5, n_pairs=200, seed=args.seed,
                               truth=overall_truth)
    anchors = {a for v in anchored["anchors"].values() for a in v}
    out = {"bench": "quality", "prompts": len(texts), "buckets": len(set(buckets)), "anchors_per_bucket": args.anchors,
           "judges": len(clients), "judge_position_bias": 0.15, "judge_noise": 0.20, "judge_sigma": args.sigma,
           "spearman_anchored": anchored_sp, "spearman_bradley_terry": bt_sp, "spearman_absolute": abs_sp,
           "distilled_pairwise_accuracy": round(distilled["pairwise_accuracy"], 4),
           "distilled_pairwise_accuracy_vs_planted": round(distilled["pairwise_accuracy_vs_truth"], 4),
           "distilled_heldout_pairs": distilled["pairs"],
           "judge_calls": anchored["calls"],
           "judge_calls_per_prompt": round(anchored["calls"] / (len(texts) - len(anchors)), 2),
           "judge_calls_per_prompt_formula": "2 orders x anchors x judges (+ anchors x anchors per bucket, fixed)",
           "wall_s_anchored": round(wall_anchored, 1)}
    out["targets"] = {"spearman_ge_0.85": all(v >= 0.85 for v in anchored_sp.values()),
                      "above_absolute": all(anchored_sp[k] > abs_sp[k] for k in anchored_sp),
                      "distilled_ge_0.85": distilled["pairwise_accuracy"] >= 0.85}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
