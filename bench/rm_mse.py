"""Benchmark: Bradley-Terry alone against Bradley-Terry + pointwise MSE (report section 2.1, equation 1).

The report's claim: a BT reward model only fixes the *order* of responses, so the fitted gap
S_perfect - S_bad1 can come out smaller than S_bad1 - S_bad2, a shortcut for reward hacking; adding an MSE to
normalized annotated absolute scores makes the rewards keep the annotated gaps.

What it measures
----------------
A synthetic preference world where the true quality of a response is known. A response is 8 words, each
"good" (apple, river, garden, ...) or "bad" (stone, pencil, copper, ...); with k good words its true score is
s = (k / 8)^2. Every prompt gets three responses, one per tier: *perfect* (k = 7 or 8, s ~ 0.77-1), *bad1*
(k = 3 or 4, s ~ 0.14-0.25) and *bad2* (k = 1 or 2, s ~ 0.02-0.06) -- bad1 and bad2 are close, perfect is
far above both. The training set holds the tier pairs perfect/bad1, bad1/bad2 and perfect/bad2 of each prompt,
each label flipped with probability ``--label-noise`` (0.2: annotators disagree as often on an easy pair as on
a hard one), and every response carries an annotated absolute score 1 + 9 s + N(0, 0.3^2) on a 1-10 scale,
normalized to [0, 1] over that declared range (``scores.normalize: range``).

The same tiny random-init model (novalign init-model, 2 layers, hidden 64), data, seed and steps are trained
twice through ``novalign.train.rm.run_rm``: ``loss.alpha = 0`` (BT alone) and ``loss.alpha = --alpha`` (BT + MSE).
Both reward models then score held-out prompts with one response per tier (``score_conversations``).

Reported (one JSON line on stdout; progress on stderr), for ``bt_`` and ``bt_mse_``:

* ``*_accuracy``: held-out pairwise accuracy against the *true* order (the three tier pairs per prompt);
* ``*_eval_accuracy_noisy``: the trainer's own held-out accuracy against the noisy labels;
* ``*_spearman``: Spearman rank correlation of reward and true score over all held-out responses (ranks
  computed with numpy, ties averaged);
* ``*_gap_ratio``: mean(S_perfect - S_bad1) / mean(S_bad1 - S_bad2), next to ``true_gap_ratio`` from the true
  scores -- scale-free, so BT's arbitrary reward scale does not matter;
* ``*_gap_inversions``: the fraction of held-out prompts with S_perfect - S_bad1 < S_bad1 - S_bad2, the report's
  failure case (the true scores never invert);
* ``*_train_eval_gap_accuracy``: train-vs-eval accuracy gap at the end (the overfitting the report mentions).

Usage::

    python bench/rm_mse.py            # full run, ~3-4 minutes on 2 CPU cores
    python bench/rm_mse.py --quick    # smoke run, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import log  # bench/common.py (the script's folder is on sys.path)

GOOD = ("apple", "river", "garden", "window", "meadow", "candle", "forest", "harbor")
BAD = ("stone", "pencil", "copper", "ladder", "pepper", "saddle", "mirror", "kettle")
TIERS = {"perfect": (7, 8), "bad1": (3, 4), "bad2": (1, 2)}
PROMPTS = ("Describe your favourite place in eight words.", "List eight things you like.",
           "Give me eight words about your day.", "Write eight words about home.")


def true_score(k: int) -> float:
    return (k / 8) ** 2


def response(k: int, rng: random.Random) -> str:
    words = rng.sample(GOOD, k) + rng.sample(BAD, 8 - k)
    rng.shuffle(words)
    return " ".join(words)


def triplet(rng: random.Random) -> tuple[str, dict[str, tuple[str, float]]]:
    """A prompt and one response per tier: tier -> (text, true score)."""
    out = {}
    for tier, ks in TIERS.items():
        k = rng.choice(ks)
        out[tier] = (response(k, rng), true_score(k))
    return rng.choice(PROMPTS), out


def annotated(s: float, rng: random.Random) -> float:
    return round(min(10.0, max(1.0, 1 + 9 * s + rng.gauss(0, 0.3))), 1)


def make_pairs(num_prompts: int, noise: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(num_prompts):
        prompt, resp = triplet(rng)
        scores = {tier: annotated(s, rng) for tier, (_, s) in resp.items()}
        for better, worse in (("perfect", "bad1"), ("bad1", "bad2"), ("perfect", "bad2")):
            if rng.random() < noise:
                better, worse = worse, better
            records.append({"prompt": prompt, "chosen": resp[better][0], "rejected": resp[worse][0],
                            "chosen_score": scores[better], "rejected_score": scores[worse]})
    return records


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the ranks (ties get their average rank)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average the ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def evaluate(model_dir: Path, held: list[tuple[str, dict]]) -> dict:
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model, score_conversations

    tok, model = load_tokenizer(model_dir), load_reward_model(model_dir)
    convs = [([{"role": "user", "content": p}], {"role": "assistant", "content": resp[t][0]}) for p, resp in held for t in TIERS]
    rewards = np.array(score_conversations(model, tok, convs, max_length=128, batch_size=64)).reshape(len(held), 3)
    truth = np.array([[resp[t][1] for t in TIERS] for _, resp in held])
    correct = [(rewards[:, a] > rewards[:, b]).mean() for a, b in ((0, 1), (1, 2), (0, 2))]  # tiers are in true order
    gap_top, gap_low = rewards[:, 0] - rewards[:, 1], rewards[:, 1] - rewards[:, 2]
    return {
        "accuracy": float(np.mean(correct)),
        "spearman": spearman(rewards.reshape(-1), truth.reshape(-1)),
        "gap_ratio": float(gap_top.mean() / gap_low.mean()),
        "gap_inversions": float((gap_top < gap_low).mean()),
        "mean_gap_perfect_bad1": float(gap_top.mean()),
        "mean_gap_bad1_bad2": float(gap_low.mean()),
    }


def train_rm(work: Path, model_dir: Path, train: Path, held: Path, alpha: float, args) -> dict:
    from novalign.config import RMConfig
    from novalign.train.rm import run_rm

    out = work / f"rm-alpha{alpha:g}"
    cfg = RMConfig(
        output_dir=str(out),
        model={"path": str(model_dir)},
        data={"train_files": [str(train)], "eval_files": [str(held)], "max_length": 128, "train_eval_pairs": 256},
        scores={"range": (1.0, 10.0), "normalize": "range"},
        loss={"alpha": alpha},
        packing={"row_len": 512},
        optim={"lr": args.lr, "warmup_ratio": 0.05},
        train={"epochs": args.epochs, "grad_accum": 2, "seed": args.seed, "progress": False, "tensorboard": False,
               "resume": False},
    )
    t0 = time.perf_counter()
    result = run_rm(cfg, console_print=log)
    summary = json.loads((out / "summary.json").read_text())
    log(f"alpha={alpha:g}: {result.state.step} steps in {time.perf_counter() - t0:.1f} s, eval {summary['eval']}")
    return {"dir": out / "model", "eval": summary["eval"], "steps": result.state.step}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 150 training prompts, 1 epoch")
    p.add_argument("--prompts", type=int, default=500, help="training prompts (3 noisy pairs each)")
    p.add_argument("--held-out", type=int, default=200, help="held-out prompts (one response per tier each)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--alpha", type=float, default=1.0, help="MSE weight of the BT + MSE run")
    p.add_argument("--label-noise", type=float, default=0.2, help="probability that a pairwise label is flipped")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.held_out, args.epochs = 150, 80, 1
    torch.set_num_threads(args.threads)
    from novalign.data.io import write_jsonl
    from novalign.models.tiny import init_tiny_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rm_mse-") as tmp:
        work = Path(tmp)
        model_dir = init_tiny_model(work / "base", seed=args.seed)
        write_jsonl(work / "train.jsonl", make_pairs(args.prompts, args.label_noise, args.seed + 1))
        write_jsonl(work / "eval.jsonl", make_pairs(args.held_out, args.label_noise, args.seed + 2))
        rng = random.Random(args.seed + 3)
        held = [triplet(rng) for _ in range(args.held_out)]
        truth = np.array([[resp[t][1] for t in TIERS] for _, resp in held])
        true_ratio = float((truth[:, 0] - truth[:, 1]).mean() / (truth[:, 1] - truth[:, 2]).mean())
        out: dict = {"bench": "rm_mse"}
        runs = {}
        for name, alpha in (("bt", 0.0), ("bt_mse", args.alpha)):
            runs[name] = train_rm(work, Path(model_dir), work / "train.jsonl", work / "eval.jsonl", alpha, args)
            metrics = evaluate(runs[name]["dir"], held)
            log(f"{name}: {metrics}")
            out.update({f"{name}_{k}": round(v, 4) for k, v in metrics.items()})
        for name, run in runs.items():
            out[f"{name}_eval_accuracy_noisy"] = round(run["eval"]["eval_accuracy"], 4)
            out[f"{name}_train_eval_gap_accuracy"] = round(run["eval"].get("gap_accuracy", float("nan")), 4)
        out.update({
            "true_gap_ratio": round(true_ratio, 4),
            "alpha": args.alpha,
            "label_noise": args.label_noise,
            "train_pairs": 3 * args.prompts,
            "held_out_prompts": args.held_out,
            "epochs": args.epochs,
            "steps": runs["bt"]["steps"],
            "quick": args.quick,
            "threads": args.threads,
            "wall_s": round(time.perf_counter() - t0, 1),
            "torch": torch.__version__,
        })
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
