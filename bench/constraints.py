"""Benchmark: the instruction-following constraint library and response reversal (report section 4.1). One JSON line.

What it measures
----------------
1. **Validators** (``validators``): precision and recall of every type's validator on the hand-written pass /
   fail cases of ``tests/constraint_cases.py`` (>= 3 of each per type; a pass case is a positive). Micro over all
   cases, and the worst type. Baseline in the same run: a validator that passes everything.
2. **Coverage** (``coverage``): a seeded instruction pool -- ``--pool`` instructions, each a seed task plus 1-3
   constraint sentences drawn from phrasings written here, per CFBench's categories, independently of the
   library's own descriptions, some of them kinds the library has no validator for (metaphors, personas,
   citations...) -- and the share of its constraint sentences the library's cues recognise, with how often the
   recognised type is the one the phrasing was written for. Baseline: IFEval's 25 types alone.
3. **Reversal** (``reversal``): ``--texts`` generated texts, each with 2-6 planted attributes (title, bullets,
   numbered list, table, headings in order, postscript, placeholders, highlights, examples, code block,
   lowercase); attribute detection recall on the planted ones, then attribute recall (all detected attributes
   stated in the prompt) after each of 3 rounds. The writer and inspector are SIMULATED external LLMs
   (``tests/ifdata_llms.py``: the writer states each attribute with probability 0.6 in round 1 and each missing
   one with probability 0.85 per revision; the inspector lists the attributes not in the prompt), stand-ins
   documented as such -- the number measures the loop, not a model. Baseline: round 1 (no inspection loop).

Run: ``python bench/constraints.py [--pool 400] [--texts 200] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from constraint_cases import CASES  # noqa: E402
from ifdata_llms import inspector, writer  # noqa: E402
from novalign.eval.constraints import REGISTRY, check, matching_types  # noqa: E402
from novalign.flywheel.constraints.attributes import detect_attributes  # noqa: E402
from novalign.flywheel.constraints.reversal import reverse  # noqa: E402

# phrasing -> the type it was written for (None: no validator could check it); {n} {w} filled per draw
PHRASINGS = [
    ("Please keep it under {n}0 words.", "length_constraints:number_words"),
    ("No more than {n} sentences, please.", "length_constraints:number_sentences"),
    ("Write at least {n}00 words.", "length_constraints:number_words"),
    ("Make sure to use the word '{w}'.", "keywords:existence"),
    ("Don't say the word '{w}' anywhere.", "keywords:forbidden_words"),
    ("Reply entirely in lowercase.", "change_case:english_lowercase"),
    ("ALL CAPS please.", "change_case:english_capital"),
    ("Give me the answer as JSON.", "detectable_format:json_format"),
    ("Put it in a table with {n} rows and 3 columns.", "format:table_shape"),
    ("List {n} bullet points.", "detectable_format:number_bullet_lists"),
    ("Number the steps 1 to {n}.", "format:numbered_list"),
    ("Add a title in <<double angular brackets>>.", "detectable_format:title"),
    ("Finish with a P.S. for the reader.", "detectable_content:postscript"),
    ("Close with the phrase 'Hope this helps!'", "startend:end_checker"),
    ("Start with 'Dear customer'.", "startend:start_phrase"),
    ("Keep the tone formal.", "style:tone"),
    ("Sound enthusiastic!", "style:tone"),
    ("The audience is children, keep it simple.", "situation:audience"),
    ("Aim it at expert readers.", "situation:audience"),
    ("Give {n} examples.", "content:example_count"),
    ("End with {n} questions for the reader.", "content:question_count"),
    ("Do not use commas at all.", "punctuation:no_comma"),
    ("Wrap everything in double quotes.", "startend:quotation"),
    ("Use the headings Background, Analysis and Conclusion, in that order.", "structure:section_order"),
    ("Organize it under {n} headings.", "structure:heading_count"),
    ("Avoid the phrase 'in conclusion'.", "keywords:banned_phrases"),
    ("All numbers must be between 1 and {n}0.", "numeric:number_range"),
    ("Keep it between 100 and {n}00 characters.", "length:character_count"),
    ("Include the code in a python code block.", "format:code_block"),
    ("Highlight {n} key phrases with markdown.", "detectable_format:number_highlighted_sections"),
    ("Answer in French.", "language:response_language"),
    ("Respond in the language of the question.", "language:response_language"),
    ("Leave [name] style placeholders for personal details.", "detectable_content:number_placeholders"),
    ("Use a metaphor.", None),
    ("Write it as a pirate would.", None),
    ("Cite two reputable sources.", None),
    ("Be empathetic about the user's situation.", None),
    ("Mention the word '{w}' at least {n} times.", "keywords:frequency"),
    ("Give two different answers separated by ******.", "combination:two_responses"),
    ("Return JSON with the keys name and age.", "format:json_keys"),
]
SEEDS = ["Write a short guide to {w} gardening.", "Explain how {w} works.", "Draft an email about {w}.",
         "Summarize the history of {w}.", "Compare two kinds of {w}."]
WORDS = ["river", "bread", "music", "solar", "chess", "coffee"]


def bench_validators() -> dict:
    tp = fp = fn = tn = 0
    worst = (1.0, None)
    base_tp = base_fp = 0
    for name, (params, passes, fails) in CASES.items():
        got_p = [check({"type": name, "params": params}, t) for t in passes]
        got_f = [check({"type": name, "params": params}, t) for t in fails]
        tp, fn, fp, tn = tp + sum(got_p), fn + len(got_p) - sum(got_p), fp + sum(got_f), tn + len(got_f) - sum(got_f)
        acc = (sum(got_p) + len(got_f) - sum(got_f)) / (len(got_p) + len(got_f))
        if acc < worst[0]:
            worst = (acc, name)
        base_tp, base_fp = base_tp + len(passes), base_fp + len(fails)
    return {"types": len(CASES), "cases": tp + fp + fn + tn, "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "worst_type_accuracy": worst[0], "worst_type": worst[1],
            "baseline_always_pass": {"precision": base_tp / (base_tp + base_fp), "recall": 1.0}}


def bench_coverage(pool: int, rng: random.Random) -> dict:
    sentences = []
    for _ in range(pool):
        w = rng.choice(WORDS)
        for text, expected in rng.sample(PHRASINGS, rng.randint(1, 3)):
            sentences.append((text.format(n=rng.randint(2, 9), w=w), expected))
    ifeval = [n for n, t in REGISTRY.items() if t.source == "ifeval"]
    matched = [(s, e, matching_types(s)) for s, e in sentences]
    recognised = [m for m in matched if m[2]]
    right = [m for m in recognised if m[1] in m[2]]
    return {"instructions": pool, "constraint_sentences": len(sentences),
            "coverage": len(recognised) / len(sentences),
            "writable_share": sum(e is not None for _, e in sentences) / len(sentences),
            "recognised_with_intended_type": len(right) / len(recognised) if recognised else 0.0,
            "baseline_ifeval_only_coverage": sum(bool(matching_types(s, ifeval)) for s, _ in sentences) / len(sentences),
            "types_used_by_pool": len({t for _, _, ts in matched for t in ts})}


def planted_text(rng: random.Random) -> tuple[str, set[str]]:
    """A text with 2-6 planted attributes; returns it and the planted types."""
    topic = rng.choice(WORDS)
    kinds = rng.sample(["title", "bullets", "numbered", "table", "headings", "ps", "placeholders", "highlights",
                        "examples", "code"], rng.randint(2, 6))
    lower = rng.random() < 0.2 and "code" not in kinds
    parts, planted = [], set()
    if "title" in kinds:
        parts.append(f"<<All about {topic}>>")
        planted.add("detectable_format:title")
    if "headings" in kinds:
        parts.append("# Background")
    parts.append(f"People have used {topic} for a long time and it still matters today in many places.")
    if "examples" in kinds:
        parts.append(f"For example, a town may depend on {topic} every single day.")
        planted.add("content:example_count")
    if "highlights" in kinds:
        parts.append("It is *useful* and *common* in daily life.")
        planted.add("detectable_format:number_highlighted_sections")
    if "bullets" in kinds:
        parts += [f"* point {c} about {topic}" for c in "abc"[:rng.randint(2, 3)]]
        planted.add("detectable_format:number_bullet_lists")
    if "numbered" in kinds:
        parts += [f"{i}. step {i}" for i in range(1, rng.randint(2, 4) + 1)]
        planted.add("format:numbered_list")
    if "headings" in kinds:
        parts.append("# Details")
        planted.add("structure:section_order")
    if "table" in kinds:
        rows = rng.randint(1, 3)
        parts += ["| item | value |", "| --- | --- |"] + [f"| x{i} | {i} |" for i in range(rows)]
        planted.add("format:table_shape")
    if "code" in kinds:
        parts.append("```python\nprint('hi')\n```")
        planted.add("format:code_block")
    if "placeholders" in kinds:
        parts.append("Write to [name] at [address].")
        planted.add("detectable_content:number_placeholders")
    if "ps" in kinds:
        parts.append("P.S. Thanks for reading.")
        planted.add("detectable_content:postscript")
    text = "\n".join(parts)
    if lower:
        text = text.lower()
        planted.add("change_case:english_lowercase")
    return text, planted


def bench_reversal(n: int, rng: random.Random) -> dict:
    texts = [planted_text(rng) for _ in range(n)]
    detected = [{a["type"] for a in detect_attributes(t)} for t, _ in texts]
    planted_total = sum(len(p) for _, p in texts)
    planted_found = sum(len(p & d) for (_, p), d in zip(texts, detected))

    def ask(fn):
        return lambda conversations: [fn(c) for c in conversations]

    res = reverse([{"_id": str(i), "text": t} for i, (t, _) in enumerate(texts)], ask(writer), ask(inspector),
                  max_rounds=3, keep_incomplete=True)
    per_round = [sum(r) / len(r) for r in res.recall_by_round]
    complete = [sum(x == 1.0 for x in r) / len(r) for r in res.recall_by_round]
    return {"texts": n, "planted_attributes": planted_total, "planted_detection_recall": planted_found / planted_total,
            "detected_attributes_mean": sum(len(d) for d in detected) / n,
            "recall_by_round": [round(x, 4) for x in per_round], "complete_share_by_round": [round(x, 4) for x in complete],
            "baseline_round1_recall": round(per_round[0], 4), "llm": "simulated stand-in (tests/ifdata_llms.py)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.time()
    out = {"bench": "constraints", "library_types": len(REGISTRY),
           "library_ifeval_types": sum(t.source == "ifeval" for t in REGISTRY.values()),
           "validators": bench_validators(),
           "coverage": bench_coverage(args.pool, random.Random(args.seed)),
           "reversal": bench_reversal(args.texts, random.Random(args.seed + 1))}
    out["wall_s"] = round(time.time() - started, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
