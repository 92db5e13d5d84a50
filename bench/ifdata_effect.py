"""Benchmark: does SFT data from constraint expansion and response reversal raise a tiny model's IF pass rate?
(report section 4.1 / Table 1; issue 20's "effect on a model"). One JSON line.

What it measures
----------------
The demo world's IF tasks (``novalign.world.tasks``: topic sentences, seed prompts, 8 IFEval constraint kinds)
give the baseline SFT set. Two tiny models (``init_tiny_model`` + ``novalign sft``, same seed, same number of
records and steps) are trained:

* ``without``: ``--records`` world IF tasks (``make_if``);
* ``with``: half as many world IF tasks, a quarter made by **constraint expansion** (:func:`expand`: world seed
  prompts; the proposer and judge are SIMULATED stand-ins that pick library types of the expansion set and
  accept them; the responder writes the topic's sentences formatted to the constraints -- the validators
  then check every response, as in the real step), and a quarter made by **response reversal**
  (:func:`reverse`: world texts with planted attributes; writer and inspector are the SIMULATED stand-ins of
  ``tests/ifdata_llms.py``).

Both are evaluated on the same held-out prompts (seed prompt x topic x constraint, strict validators of the
shared library), in three groups: ``world`` types (in both training sets), ``expansion`` types (only in the
``with`` set) and ``unseen`` types (in neither), so the table separates learning a type from generalizing
to a new one.

Run: ``python bench/ifdata_effect.py [--records 480] [--steps 300] [--seed 0]``. CPU, one thread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ifdata_llms import inspector, writer  # noqa: E402
from novalign.eval.constraints import check_all, describe, instance  # noqa: E402
from novalign.flywheel.constraints.expansion import expand  # noqa: E402
from novalign.flywheel.constraints.reversal import reverse  # noqa: E402
from novalign.world import tasks as W  # noqa: E402

# the expansion set (only in the `with` data) and the unseen set (in no training data), with parameters
EXPANSION = {"detectable_content:postscript": {"postscript_marker": "P.S."},
             "startend:start_phrase": {"start_phrase": "Dear reader"},
             "detectable_format:number_bullet_lists": {"num_bullets": 3},
             "detectable_content:number_placeholders": {"num_placeholders": 1}}
UNSEEN = {"content:question_count": {"num_questions": 1, "relation": "at least"},
          "format:numbered_list": {"num_items": 3}}
WORLD = {"detectable_format:title": {}, "startend:quotation": {}, "change_case:english_lowercase": {},
         "startend:end_checker": {"end_phrase": W.END_PHRASE}}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def respond(topic: str, constraints: list[dict]) -> str:
    """The responder: the topic's sentences, formatted to the constraints (structure, additions, title, case)."""
    types = {c["type"] for c in constraints}
    sentences = list(W.TOPICS[topic])
    if "detectable_format:number_bullet_lists" in types:
        body = "\n".join(f"* {s}" for s in sentences)
    elif "format:numbered_list" in types:
        body = "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    else:
        body = " ".join(sentences)
    if "startend:start_phrase" in types:
        body = "Dear reader, " + body[0].lower() + body[1:] if not body.startswith("*") else "Dear reader,\n" + body
    if "detectable_content:number_placeholders" in types:
        body += "\nAsk [name] for more."
    if "content:question_count" in types:
        body += f"\nDo you like {topic}?"
    if "detectable_content:postscript" in types:
        body += "\nP.S. Thanks for reading."
    if "startend:end_checker" in types:
        body += " " + W.END_PHRASE
    if "detectable_format:title" in types:
        body = f"<<{topic.title()}>>\n" + body
    if "startend:quotation" in types:
        body = f'"{body}"'
    if "change_case:english_lowercase" in types:
        body = body.lower()
    return body


def _topic(prompt: str) -> str:
    return next(t for t in sorted(W.TOPICS, key=len, reverse=True) if t in prompt)


def expansion_records(n: int, rng: random.Random) -> list[dict]:
    """Expanded world prompts: stand-in proposers draw 1-2 expansion types, the stand-in judge accepts, the
    responder answers, the validators check (through the real loop)."""
    seeds = [{"_id": str(i), "prompt": rng.choice(W.SEEDS).format(t=rng.choice(sorted(W.TOPICS)))} for i in range(n)]
    picks = {s["_id"]: rng.sample(sorted(EXPANSION), rng.randint(1, 2)) for s in seeds}
    by_prompt = {s["prompt"]: s["_id"] for s in seeds}

    def proposer(conversations):
        out = []
        for c in conversations:
            rid = next(v for k, v in by_prompt.items() if f"Instruction:\n{k}\n" in c[-1]["content"])
            out.append(json.dumps({"constraints": [{"type": t, "params": EXPANSION[t],
                                                    "text": describe(t, EXPANSION[t], rng.randrange(3))}
                                                   for t in picks[rid]]}))
        return out

    def judge(conversations):
        return [json.dumps({"results": {str(i): "yes" for i in range(1, 3)
                                        if f"\n{i}. " in c[-1]["content"]}}) for c in conversations]

    def responder(conversations):
        out = []
        for c in conversations:
            text = c[-1]["content"]
            cons = [instance(t, p) for t, p in EXPANSION.items() if any(describe(t, p, v) in text for v in range(3))]
            out.append(respond(_topic(text), cons))
        return out

    res = expand(seeds, {"a": proposer}, judge, responder, max_new=2, max_rounds=2)
    log(f"expansion: {len(res.kept)} kept, {len(res.dropped)} dropped, {dict(res.counts)}")
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            for r in res.kept]


def reversal_records(n: int, rng: random.Random) -> list[dict]:
    """``n`` reversed texts (a third more are drawn, since a text whose prompt stays incomplete is dropped)."""
    texts = []
    for i in range(n + n // 3 + 1):
        topic = rng.choice(sorted(W.TOPICS))
        cons = [instance(t, p) for t, p in EXPANSION.items() if rng.random() < 0.5] or [instance("detectable_content:postscript", EXPANSION["detectable_content:postscript"])]
        texts.append({"_id": str(i), "text": respond(topic, cons)})

    def ask(fn):
        return lambda conversations: [fn(c) for c in conversations]

    res = reverse(texts, ask(writer), ask(inspector), max_rounds=3)
    log(f"reversal: {len(res.kept)} kept, {len(res.dropped)} dropped")
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            for r in res.kept][:n]


def world_records(n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        task = W.make_if(rng)
        out.append({"messages": [*task["messages"], {"role": "assistant", "content": task["response"]}]})
    return out


# the world's own wording of its types (what both training sets use for them)
WORLD_WORDING = {"detectable_format:title": W.CONSTRAINTS["title"][0], "startend:quotation": W.CONSTRAINTS["quote"][0],
                 "change_case:english_lowercase": W.CONSTRAINTS["lower"][0], "startend:end_checker": W.CONSTRAINTS["end"][0]}


def eval_set(rng: random.Random, per_type: int) -> list[dict]:
    """Held-out prompts: a world seed prompt plus one constraint, worded as training words it (the world's
    wording for world types, the library's first description otherwise)."""
    items = []
    for group, table in (("world", WORLD), ("expansion", EXPANSION), ("unseen", UNSEEN)):
        for t, p in table.items():
            for _ in range(per_type):
                c = instance(t, p)
                wording = WORLD_WORDING.get(t, c["text"])
                prompt = rng.choice(W.SEEDS).format(t=rng.choice(sorted(W.TOPICS))) + " " + wording
                items.append({"group": group, "type": t, "prompt": prompt, "constraints": [c]})
    return items


def train(work: Path, name: str, records: list[dict], steps: int, seed: int, texts: list[str]) -> Path:
    from novalign.config import SFTConfig
    from novalign.data.io import write_jsonl
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    init_tiny_model(work / f"{name}-base", seed=seed, hidden_size=64, intermediate_size=128, num_layers=2, texts=texts)
    write_jsonl(work / f"{name}.jsonl", records)
    cfg = SFTConfig.model_validate({
        "output_dir": str(work / name), "model": {"path": str(work / f"{name}-base"), "gradient_checkpointing": "off"},
        "data": {"train_files": [str(work / f"{name}.jsonl")], "max_length": 256},
        "optim": {"lr": 5e-3, "warmup_ratio": 0.05, "weight_decay": 0.0},
        "train": {"max_steps": steps, "micro_batch_size": 8, "grad_accum": 1, "progress": False, "tensorboard": False,
                  "seed": seed, "device": "cpu", "save_every": 0},
        "packing": {"enabled": False}})
    run_sft(cfg, console_print=lambda *a, **k: None)
    return work / name / "model"


def pass_rates(model_dir: Path, items: list[dict]) -> dict:
    from novalign.models.generate import generate_chat
    from novalign.models.load import load_model, load_tokenizer

    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    replies = generate_chat(model, tokenizer, [[{"role": "user", "content": i["prompt"]}] for i in items],
                            max_new_tokens=96)
    groups: dict[str, list[bool]] = {}
    per_type: dict[str, list[bool]] = {}
    for item, reply in zip(items, replies):
        ok = all(check_all(reply, item["constraints"]))
        groups.setdefault(item["group"], []).append(ok)
        per_type.setdefault(item["type"], []).append(ok)
    rate = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
    return {g: rate(v) for g, v in groups.items()} | {
        "all": round(sum(sum(v) for v in groups.values()) / len(items), 4),
        "per_type": {t: rate(v) for t, v in per_type.items()}, "example": replies[len(items) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=480)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-per-type", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.time()
    n = args.records
    baseline = world_records(n, random.Random(args.seed))
    mixed = world_records(n // 2, random.Random(args.seed))
    mixed += expansion_records(n // 4, random.Random(args.seed + 1))
    mixed += reversal_records(n - len(mixed), random.Random(args.seed + 2))
    mixed = mixed[:n]
    items = eval_set(random.Random(args.seed + 3), args.eval_per_type)
    from novalign.models.tiny import default_training_texts

    texts = list(default_training_texts()) + [" ".join(m["content"] for m in r["messages"]) for r in baseline + mixed] * 3
    out = {"bench": "ifdata_effect", "records_per_arm": n, "with_arm_records": len(mixed), "steps": args.steps,
           "eval_prompts": len(items), "llm_stand_ins": "simulated (bench/ifdata_effect.py, tests/ifdata_llms.py)"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, records in (("without", baseline), ("with", mixed)):
            model = train(work, name, records, args.steps, args.seed, texts)
            out[f"pass_rate_{name}"] = pass_rates(model, items)
            log(f"{name}: {out[f'pass_rate_{name}']} ({time.time() - start:.0f} s)")
    out["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
