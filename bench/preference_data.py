"""Benchmark: the preference-data chain (issue 18, report sections 3.2-3.3) on the demo world, against the old
demo ``prefs`` stage.

Needs a finished demo run (``make demo`` -> ``runs/demo``; ``--demo-run``): its world (prompts with gold answers
and checkers) and its tiny models of different quality, trained here for different step counts -- the
pretrained base (0 SFT steps), the SFT model (250 steps) and the GRPO model (SFT + RL). The old demo ``prefs``
stage (SFT model only, 4 samples, the world's verifiers; the demo now runs the chain) is rerun here with its
old settings (``novalign data prefs``).

What runs
---------
1. The chain as one pipeline: ``respond`` (the three models, 5 samples each at the report's T 1 / top_p 0.99 /
   top_k 50; the base model with a quota of half the prompts) -> ``autorate`` (the world's check specs stand in
   for the golden judge: rule checkers) -> ``response_rouge`` (0.9) -> ``prefilter`` (best / middle / worst)
   -> ``drop_rules`` (all high >= 0.8; within 0.1; all-low flagged) -> ``rm_groups``. Groups in / out at each
   filter, with reasons, come from each step's stats.
2. The LLM paths of the golden and pairwise AutoRators, judged over HTTP by ``--judge-url`` when given, else by
   a **stand-in judge** (``tests/scripted_llm.py``; no capable judge model exists on this machine): it rates
   [[10]] / [[1]] by whether the *last number* of a response equals the reference, and says [[SAME]] when two
   responses end in the same number -- a cheap heuristic judge. Reported: the golden rater's agreement with the
   rule checkers (world checks) on the chain's Math / Reason responses, and the pairwise rater's clustering
   accuracy (share of response pairs put together iff their checker-read answers agree).
3. The refusal detector (rules) on ``bench/data/refusal_labeled.jsonl`` (the set the rules were fixed on) and
   ``refusal_heldout.jsonl`` (written after): precision and recall; then ``refusal_govern`` (cap 0.1) on 4
   categories of 150 responses each drawn from both sets with 35 % refusals: realized share per category.
4. Reward models (BT + MSE, alpha 1, the demo's rm settings: SFT init, lr 1e-3, the same steps and seed)
   trained on the chain's groups, on the old ``prefs`` output, and -- a control -- on SFT-split gold responses
   against the same response with another item's answer put in (the probe's kind of pair, on training
   prompts). Held-out pairwise accuracy on three probes of the world's eval split (Math, Reason, KQA), each the
   gold response against: ``consistent_wrong`` (another item's answer put in everywhere: only knowing the
   answer separates them), ``answer_only`` (only the final answer swapped: the working contradicts it) and
   ``truncated`` (the gold cut in half). Baseline on the same pairs: the SFT language model's own summed
   log-probability of each response (what the model the RMs start from already knows).

Usage::

    python bench/preference_data.py --demo-run runs/demo             # 40 minutes on 2 shared CPU cores (RMs: 11-25 each)
    python bench/preference_data.py --demo-run runs/demo --quick     # smoke run (7 minutes there)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from common import log  # noqa: E402 - bench/common.py (the script's folder is on sys.path)

def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prompt_records(world: Path, limit: int | None) -> list[dict]:
    """The world's RL prompts as chain records (the recipe's prefs stage builds them the same way)."""
    from novalign.recipe.prefs_chain import world_prompt_records

    rows = read_jsonl(world / "rl_prompts.jsonl")
    if limit:
        by_cap: dict[str, list] = {}
        for r in rows:
            by_cap.setdefault(r["capability"], []).append(r)
        rows = [r for rs in by_cap.values() for r in rs[: max(1, limit // len(by_cap))]]
    return world_prompt_records(rows)


def run_chain(demo: Path, work: Path, prompts: list[dict], n: int, max_tokens: int) -> tuple[list[dict], list[dict]]:
    from novalign.config.llm import LLMConfig
    from novalign.flywheel.pipeline import Pipeline

    def local(path):
        return {"backend": "local", "model": str(path), "local": {"device": "cpu", "max_batch_size": 64}}

    models = [{"name": "sft", "llm": local(demo / "sft" / "model")}, {"name": "grpo", "llm": local(demo / "grpo" / "model")},
              {"name": "base", "llm": local(demo / "pretrain" / "model"), "max_prompts": len(prompts) // 2}]
    p = Pipeline(work / "chain", llm=LLMConfig(progress=False), progress=False)
    p.source("prompts", write_jsonl(work / "prompts.jsonl", prompts), id_field="id")
    p.step("respond", "respond", {"prompt_field": "prompt", "models": models, "n": n, "max_tokens": max_tokens, "seed": 0})
    p.step("rate", "autorate", {})
    p.step("rouge", "response_rouge", {"threshold": 0.9})
    p.step("prefilter", "prefilter", {"keep": 3})
    p.step("rules", "drop_rules", {"high": 0.8, "margin": 0.1, "low": 0.5})
    p.step("rm", "rm_groups", {"extra": ["labels"]})
    result = p.run(console_print=log)
    funnel = [{"step": s["name"], "in": s["records_in"], "out": s["records_out"], "dropped": s["dropped_by_reason"],
               "wall_s": s["wall_s"]} for s in result.steps]
    return funnel, result.records("rate"), result.records("rm")


def _last_number(text: str) -> str | None:
    found = re.findall(r"-?\d+(?:\.\d+)?", text)
    return found[-1] if found else None


def stand_in_judge(route: str, messages: list[dict]) -> str:
    """The heuristic stand-in for an external judge (see the module docstring)."""
    text = messages[0]["content"]
    if "[[SAME]]" in text:
        a = text.split("[Response A]\n", 1)[1].split("\n\n[Response B]\n", 1)[0]
        b = text.split("[Response B]\n", 1)[1]
        same = _last_number(a) is not None and _last_number(a) == _last_number(b)
        return "[[SAME]]" if same else "[[DIFFERENT]]"
    reference = text.split("[Reference answer]\n", 1)[1].split("\n\n[The assistant's response]\n", 1)[0].strip()
    response = text.rsplit("[The assistant's response]\n", 1)[1]
    return "Rating: [[10]]" if _last_number(response) == reference else "Rating: [[1]]"


def judge_paths(work: Path, rated: list[dict], judge_url: str | None, judge_model: str, limit: int) -> dict:
    """Golden-rater agreement with the rule checkers, and pairwise clustering accuracy, through the judge."""
    from itertools import combinations

    from novalign.config.llm import LLMConfig
    from novalign.flywheel.pipeline import Pipeline
    from novalign.world.checkers import final_answer, normalize

    groups = [g for g in rated if g["labels"]["ability"] in ("Math", "Reason") and "answer" in g][:limit]
    server = None
    if judge_url is None:
        from scripted_llm import ScriptedLLM

        server = ScriptedLLM(stand_in_judge)
        judge_url = server.base_url("judge")
    try:
        llm = LLMConfig(base_url=judge_url, model=judge_model, api_key="k", progress=False)
        golden = [{"id": g["_id"], "prompt": g["prompt"], "answer": g["answer"], "labels": g["labels"],
                   "responses": [{"content": r["content"], "rule": r["score"]} for r in g["responses"]]} for g in groups]
        p = Pipeline(work / "judge", llm=llm, progress=False)
        p.source("golden_in", write_jsonl(work / "golden.jsonl", golden), id_field="id")
        p.step("golden", "autorate", {"rules": False, "drop_failed": False}, input="golden_in")
        pair = [{**g, "answer": None, "labels": {**g["labels"], "ability": "Math"}} for g in golden]
        p.source("pair_in", write_jsonl(work / "pair.jsonl", pair), id_field="id")
        p.step("pairwise", "autorate", {"reference_field": "none", "check_field": "none", "drop_failed": False},
               input="pair_in")
        result = p.run(console_print=log)
    finally:
        if server is not None:
            server.close()
    agree = total = failed = 0
    for g in result.records("golden"):
        if "rating_error" in g:
            failed += 1
            continue
        for r in g["responses"]:
            total += 1
            agree += (r["score"] >= 0.5) == (r["rule"] >= 0.5)
    right = pairs = 0
    for g in result.records("pairwise"):
        if "rating_error" in g:
            failed += 1
            continue
        truth = [normalize(final_answer(r["content"])) for r in g["responses"]]
        for i, j in combinations(range(len(truth)), 2):
            pairs += 1
            right += (g["responses"][i]["cluster"] == g["responses"][j]["cluster"]) == (truth[i] == truth[j])
    return {"judge": "stand-in (last number)" if server is not None else judge_url, "groups": len(groups),
            "golden_rule_agreement": agree / total if total else None, "golden_responses": total,
            "pairwise_cluster_accuracy": right / pairs if pairs else None, "pairwise_pairs": pairs,
            "failed_groups": failed}


def refusal_metrics(work: Path, cap: float, per_category: int, seed: int) -> dict:
    from novalign.flywheel.pipeline import Pipeline

    out = {}
    for name in ("refusal_labeled", "refusal_heldout"):
        rows = read_jsonl(ROOT / "bench" / "data" / f"{name}.jsonl")
        p = Pipeline(work / name, progress=False)
        p.source("r", write_jsonl(work / f"{name}.jsonl", [{"id": f"r{i}", **r} for i, r in enumerate(rows)]),
                 id_field="id")
        got = p.step("label", "refusal_label", {}).run(console_print=lambda *_: None).records("label")
        pred = [r["refusal"] for r in got]
        truth = [r["refusal"] for r in rows]
        tp = sum(p_ and t for p_, t in zip(pred, truth))
        out[name] = {"n": len(rows), "precision": tp / max(1, sum(pred)), "recall": tp / max(1, sum(truth))}
    # the governor: 4 categories x per_category responses, 35 % refusals, drawn from both sets
    pool = read_jsonl(ROOT / "bench" / "data" / "refusal_labeled.jsonl") + \
        read_jsonl(ROOT / "bench" / "data" / "refusal_heldout.jsonl")
    refusals, answers = [r for r in pool if r["refusal"]], [r for r in pool if not r["refusal"]]
    rng = random.Random(seed)
    rows = []
    for cat in ("safety", "timeliness", "functionality", "chat"):
        for k in range(per_category):
            src = rng.choice(refusals) if rng.random() < 0.35 else rng.choice(answers)
            rows.append({"id": f"{cat}-{k}", "response": src["response"], "truth": src["refusal"],
                         "labels": {"domain": cat}})
    p = Pipeline(work / "govern", progress=False)
    p.source("r", write_jsonl(work / "govern.jsonl", rows), id_field="id")
    p.step("label", "refusal_label", {}).step("govern", "refusal_govern", {"cap": cap})
    result = p.run(console_print=lambda *_: None)
    kept = result.records("govern")
    shares = {}
    for cat in ("safety", "timeliness", "functionality", "chat"):
        mine = [r for r in kept if r["labels"]["domain"] == cat]
        shares[cat] = {"kept": len(mine), "share_detected": sum(r["refusal"] for r in mine) / len(mine),
                       "share_true": sum(r["truth"] for r in mine) / len(mine)}
    before = {cat: sum(r["truth"] for r in rows if r["labels"]["domain"] == cat) / per_category for cat in shares}
    out["governor"] = {"cap": cap, "share_before": before, "after": shares,
                       "max_abs_dev_pts": max(abs(s["share_true"] - cap) for s in shares.values()) * 100,
                       "dropped": result.steps[1]["dropped_by_reason"]}
    return out


def heldout_pairs(world: Path) -> list[dict]:
    """Gold vs consistently wrong: each eval response (Math, Reason, KQA) with another item's answer put in
    everywhere (``4 + 4 = 8. The answer is 8.`` -> ``4 + 4 = 3. The answer is 3.``)."""
    from novalign.world.checkers import passes

    rows = [r for r in read_jsonl(world / "eval.jsonl") if r["capability"] in ("math", "reason", "kqa")
            and r["check"]["type"] == "answer"]
    by_cap: dict[str, list] = {}
    for r in rows:
        by_cap.setdefault(r["capability"], []).append(r)
    pairs = []
    for cap, items in by_cap.items():
        for i, r in enumerate(items):
            gold = str(r["check"]["answer"])
            other = next(str(x["check"]["answer"]) for x in items[i + 1:] + items[:i] if str(x["check"]["answer"]) != gold)
            wrong = r["response"].replace(gold, other)
            if wrong != r["response"] and passes(r["response"], r["check"]) and not passes(wrong, r["check"]):
                pairs.append({"prompt": r["messages"], "chosen": r["response"], "rejected": wrong, "capability": cap,
                              "other": other})
    return pairs


_FINAL = re.compile(r"The answer is (.*)\.$")


def pair_sets(pairs: list[dict]) -> dict[str, list[dict]]:
    """Three held-out probes on the same gold responses, to tell what a reward model learned:
    ``consistent_wrong`` (above: only knowing the answer tells them apart), ``answer_only`` (only the final
    answer swapped, so the working contradicts it -- like many sampled wrong answers: ``6 + 2 = 8. The answer
    is 9.``) and ``truncated`` (the gold cut in half: a malformed reply, like samples cut by the token cap)."""
    answer_only = []
    for p in pairs:
        m = _FINAL.search(p["chosen"])
        if m and m.group(1) != p["other"]:
            answer_only.append({**p, "rejected": p["chosen"][: m.start(1)] + p["other"] + p["chosen"][m.end(1):]})
    return {"consistent_wrong": pairs, "answer_only": answer_only,
            "truncated": [{**p, "rejected": p["chosen"][: len(p["chosen"]) // 2]} for p in pairs]}


def pair_accuracy(values: list[float], pairs: list[dict]) -> dict:
    """Share of pairs whose chosen response got the higher value (``values``: chosen, rejected, chosen, ...)."""
    wins = [values[2 * i] > values[2 * i + 1] for i in range(len(pairs))]
    by_cap: dict[str, list] = {}
    for p, w in zip(pairs, wins):
        by_cap.setdefault(p["capability"], []).append(w)
    return {"n": len(pairs), "accuracy": round(sum(wins) / len(wins), 3),
            "by_capability": {c: round(sum(v) / len(v), 3) for c, v in by_cap.items()}}


def _conversations(pairs: list[dict]) -> list:
    return [(p["prompt"], {"role": "assistant", "content": p[side]}) for p in pairs for side in ("chosen", "rejected")]


def lm_baseline(model_dir: Path, sets: dict[str, list[dict]]) -> dict:
    """The SFT language model itself as the judge: the summed log-probability of each response (tokenized as
    the RM trains on it) -- does the model the RM starts from already know gold from wrong?"""
    import torch

    from novalign.data.preference import tokenize_response
    from novalign.models.load import load_model, load_tokenizer

    tok, lm = load_tokenizer(model_dir), load_model(model_dir, dtype="float32")
    lm.eval()
    out = {}
    for name, pairs in sets.items():
        values = []
        for prompt, response in _conversations(pairs):
            s = tokenize_response(tok, prompt, response, max_length=512)
            ids, labels = torch.tensor([s.input_ids]), torch.tensor(s.labels[1:])
            with torch.no_grad():
                logp = lm(ids).logits[0, :-1].log_softmax(-1)
            mask = labels != -100
            values.append(logp[mask].gather(1, labels[mask][:, None]).sum().item())
        out[name] = pair_accuracy(values, pairs)
    return out


def old_prefs(demo: Path, work: Path) -> Path:
    """The old demo ``prefs`` stage, rerun here with its demo settings (``novalign data prefs``: 4 SFT samples
    per RL prompt, T 1, 64 tokens, the world's verifiers, ROUGE-L 0.9), since the demo now runs the chain."""
    from novalign.config import PrefsDataConfig
    from novalign.flywheel.prefs import run_prefs
    from novalign.recipe.stages import world_verifier
    from novalign.train.rl.rewards import verifier_reward

    cfg = PrefsDataConfig(n=4, temperature=1.0, max_new_tokens=64, rouge_threshold=0.9, prompt_files=[],
                          model=str(demo / "sft" / "model"), output_dir=str(work / "old-prefs"))
    run_prefs(cfg, prompts=read_jsonl(demo / "world" / "rl_prompts.jsonl"),
              scorer=verifier_reward(world_verifier, name="verifier"), console_print=log)
    return work / "old-prefs" / "prefs.jsonl"


def synthetic_groups(world: Path, work: Path, per_capability: int) -> Path:
    """Control training data: SFT-split gold responses (Math, Reason, KQA) against the same response with
    another item's final answer put in everywhere -- the held-out probe's kind of pair, on training prompts."""
    groups = []
    for cap in ("math", "reason", "kqa"):
        rows = read_jsonl(world / f"sft_{cap}.jsonl")
        answers = [m.group(1) for r in rows if (m := _FINAL.search(r["messages"][-1]["content"]))]
        for i, r in enumerate(rows[:per_capability]):
            gold = r["messages"][-1]["content"]
            m = _FINAL.search(gold)
            other = next((a for a in answers[i + 1:] + answers[:i] if m and a != m.group(1)), None)
            if m is None or other is None:
                continue
            groups.append({"prompt": r["messages"][:-1], "capability": cap,
                           "responses": [{"content": gold, "score": 1.0},
                                         {"content": gold.replace(m.group(1), other), "score": 0.0}]})
    return write_jsonl(work / "synthetic_groups.jsonl", groups)


def train_and_score(demo: Path, work: Path, name: str, train_file: Path, sets: dict[str, list[dict]],
                    steps: int) -> dict:
    from novalign.config import RMConfig, load_config
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model, score_conversations
    from novalign.train.rm import run_rm

    out = work / f"rm-{name}"
    overrides = [f"output_dir={out}", f"model.path={demo / 'sft' / 'model'}", f"data.train_files=[{train_file}]",
                 "data.max_length=512", "data.eval_split=0", "scores.range=[0,1]", "scores.normalize=range",
                 "loss.alpha=1.0", "packing.row_len=1024", "optim.lr=1e-3", "optim.warmup_ratio=0.05",
                 f"train.max_steps={steps}", "train.micro_batch_size=1", "train.grad_accum=4",
                 "train.seed=0", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
                 "train.save_every=0"]
    cfg = load_config(RMConfig, None, overrides)
    t0 = time.time()
    run_rm(cfg, console_print=log)
    train_s = time.time() - t0
    tok = load_tokenizer(out / "model")
    model = load_reward_model(out / "model")
    result = {name_: pair_accuracy(score_conversations(model, tok, _conversations(pairs), max_length=512,
                                                       batch_size=32), pairs) for name_, pairs in sets.items()}
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    return {"heldout": result, "train_groups": len(read_jsonl(train_file)), "epochs_run": last["epoch"],
            "final_train_accuracy": last["accuracy"], "train_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo-run", required=True, type=Path, help="A finished demo run folder (make demo).")
    ap.add_argument("--quick", action="store_true", help="24 prompts, 2 samples, 10 RM steps.")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rm-steps", type=int, default=60)
    ap.add_argument("--judge-url", default=None, help="A real judge (OpenAI-compatible .../v1) instead of the stand-in.")
    ap.add_argument("--judge-model", default="judge")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    demo = args.demo_run
    limit, n, steps = (24, 2, 10) if args.quick else (None, args.n, args.rm_steps)
    work = args.work or Path(tempfile.mkdtemp(prefix="prefdata-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prompts = prompt_records(demo / "world", limit)
    log(f"chain: {len(prompts)} prompts, 3 models, n={n}")
    funnel, rated, groups = run_chain(demo, work, prompts, n, args.max_tokens)
    chain_file = write_jsonl(work / "chain_groups.jsonl", [{k: v for k, v in g.items() if k != "_id"} for g in groups])
    log("judge paths")
    judged = judge_paths(work, rated, args.judge_url, args.judge_model, limit=40 if not args.quick else 8)
    log("refusals")
    refusal = refusal_metrics(work, cap=0.1, per_category=150, seed=0)
    sets = pair_sets(heldout_pairs(demo / "world"))
    old = old_prefs(demo, work)
    log(f"reward models: held-out pairs {({k: len(v) for k, v in sets.items()})}")
    rm = {"chain": train_and_score(demo, work, "chain", chain_file, sets, steps),
          "old_prefs": train_and_score(demo, work, "old", old, sets, steps),
          "synthetic_control": train_and_score(demo, work, "synthetic", synthetic_groups(
              demo / "world", work, 100 if not args.quick else 10), sets, steps),
          "sft_lm_logprob_baseline": lm_baseline(demo / "sft" / "model", sets)}
    models = {}
    for g in rated:
        for r in g["responses"]:
            m = models.setdefault(r["model"], [0, 0])
            m[0] += 1
            m[1] += r["score"] >= 1.0
    print(json.dumps({
        "bench": "preference_data", "quick": args.quick, "prompts": len(prompts), "samples_per_model": n,
        "pass_rate_by_model": {k: v[1] / v[0] for k, v in models.items()}, "responses_by_model": {k: v[0] for k, v in models.items()},
        "funnel": funnel, "rm_groups": len(groups), "old_prefs_groups": len(read_jsonl(old)),
        "judge_paths": judged, "refusal": refusal, "rm_steps": steps, "heldout_pairs": {k: len(v) for k, v in sets.items()}, "rm": rm,
        "wall_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
