"""GRPO on the demo world, from a finished run's SFT model: does RL beat SFT on the held-out prompts?

    python bench/rl_world.py --run runs/demo --seed 2 --set train.max_steps=60 --set optim.lr=5e-5

Draws a fresh GRPO prompt pool (``--per-capability`` prompts of each of ``--capabilities``, never an eval prompt;
``--seed`` picks the pool), runs ``novalign grpo`` with the run's recipe ``grpo`` section (``--set`` overrides
keys of that section), then evaluates the SFT model and the GRPO model on the run's held-out prompts (greedy).
Prints one JSON line: pass rates of both, per-capability deltas, the mean delta over the six capabilities and
over the trained ones, and the GRPO verifier reward over the first and last ten iterations. Needs a run whose
world, sft (and, with ``--rm-weight``, rm) stages are finished. Several seeds show the spread that one run hides.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from novalign.config import RecipeConfig  # noqa: E402
from novalign.data.io import write_jsonl  # noqa: E402
from novalign.recipe.stages import world_verifier  # noqa: E402
from novalign.train.rl.rewards import reward_model_reward, verifier_reward, weighted_mix  # noqa: E402
from novalign.world.generator import build_world, prompt_pool  # noqa: E402
from novalign.world.tasks import CAPABILITIES  # noqa: E402


def _set(tree: dict, key: str, value: str) -> None:
    import yaml

    *path, last = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree[last] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo", help="A finished `novalign run` folder (its recipe.json is read).")
    ap.add_argument("--out", default=None, help="GRPO output folder (default: <run>/bench_rl_seed<seed>).")
    ap.add_argument("--capabilities", default="math,reason,if", help="Capabilities GRPO trains on.")
    ap.add_argument("--per-capability", type=int, default=300, help="Fresh GRPO prompts per capability.")
    ap.add_argument("--seed", type=int, default=1, help="Seed of the prompt pool.")
    ap.add_argument("--rm-weight", type=float, default=None, help="Reward-model weight (default: the recipe's).")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE override of the recipe's grpo section.")
    a = ap.parse_args()

    run = Path(a.run)
    recipe = json.loads((run / "recipe.json").read_text())
    for item in a.set:
        key, _, value = item.partition("=")
        _set(recipe["grpo"], key, value)
    rc = RecipeConfig.model_validate(recipe)
    caps = a.capabilities.split(",")
    if unknown := set(caps) - set(CAPABILITIES):
        raise SystemExit(f"--capabilities: unknown {sorted(unknown)}")

    world = build_world(rc.world)  # the same seed: the same eval split as the run
    pool = prompt_pool(rc.world, world, a.per_capability, random.Random(f"bench-rl-{a.seed}"), caps)
    prompts = [{"messages": t["messages"], "capability": cap, "check": t["check"]} for cap in caps for t in pool[cap]]
    out = Path(a.out or run / f"bench_rl_seed{a.seed}")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "prompts.jsonl", prompts)

    from novalign.train.grpo import run_grpo
    from novalign.world.evaluate import evaluate_model

    cfg = rc.grpo.model_copy(deep=True)
    cfg.output_dir, cfg.model.path = str(out), str(run / "sft" / "model")
    cfg.prompt_files = [str(out / "prompts.jsonl")]
    cfg.ptx.train_files = [str(run / "world" / "sft.jsonl")]
    rm_weight = rc.rl_rewards.reward_model if a.rm_weight is None else a.rm_weight
    parts = [(verifier_reward(world_verifier, name="verifier"), rc.rl_rewards.verifier)]
    if rm_weight:
        parts.append((reward_model_reward(str(run / "rm" / "model")), rm_weight))
    t0 = time.time()
    result = run_grpo(cfg, reward=weighted_mix(parts), console_print=lambda *_: None)
    grpo_s = time.time() - t0

    tasks = [t for cap in CAPABILITIES for t in world["eval"][cap]]
    rates = {label: evaluate_model(str(path), tasks, plain=False, max_new_tokens=rc.eval.max_new_tokens,
                                   batch_size=rc.eval.batch_size).rates
             for label, path in (("sft", run / "sft" / "model"), ("grpo", out / "model"))}
    delta = {c: round(rates["grpo"][c] - rates["sft"][c], 4) for c in CAPABILITIES}
    hist = [h["reward_verifier_mean"] for h in result.history]
    print(json.dumps({
        "seed": a.seed, "capabilities": caps, "prompts": len(prompts), "grpo_wall_s": round(grpo_s, 1),
        "sft": {c: round(v, 4) for c, v in rates["sft"].items()},
        "grpo": {c: round(v, 4) for c, v in rates["grpo"].items()}, "delta": delta,
        "mean_delta": round(sum(delta.values()) / len(delta), 4),
        "trained_mean_delta": round(sum(delta[c] for c in caps) / len(caps), 4),
        "verifier_reward_first10": round(sum(hist[:10]) / len(hist[:10]), 4),
        "verifier_reward_last10": round(sum(hist[-10:]) / len(hist[-10:]), 4),
    }))


if __name__ == "__main__":
    main()
