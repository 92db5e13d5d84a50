"""Benchmark: does a trained PAS model raise a main model's pass rate? (report sections 2.3, 4.6, 5.1)

What it measures
----------------
A synthetic but honest version of the report's claim that PAS improves the main model's answers:

* Three prompt categories over a list of topics: ``data`` ("List the key facts about {topic}." ...), whose
  checker demands JSON (IFEval's ``detectable_format:json_format``, :func:`format_json_format`),
  ``creative`` and ``explain``.
* A tiny MAIN model (``init_tiny_model`` + ``novalign sft``) learns to answer in JSON when the prompt says
  "Answer in JSON." and in plain text otherwise -- whatever the category.
* A tiny PAS model (``init_tiny_model`` + ``novalign pas train``, section 4.6 template) learns to write the
  complement of each category: "Answer in JSON." for ``data`` prompts, a style hint for the others.
* The ``data`` prompts of held-out topics -- topics both models saw only in ``creative``/``explain``
  prompts, so a model keying on the topic would have learned the wrong association -- omit the format
  requirement and are answered by the main model twice in the same run: the bare prompt (baseline) and the prompt augmented by the PAS model
  (the bundled join template). Pass rate = share of answers that are valid JSON, through
  :func:`novalign.eval.benchmarks.ux_pass_rate`; GSB (with-PAS vs without, verifier-based) through
  :func:`novalign.eval.benchmarks.gsb`. A control: the held-out topics' ``creative``/``explain`` prompts
  must stay plain with PAS (``plain_kept_with_pas``, ``pas_false_hint_rate``).

Reported (one JSON line on stdout; progress on stderr): ``pass_rate_without_pas``, ``pass_rate_with_pas``,
``gsb``, ``pas_hint_rate`` (share of held-out data prompts whose complement asks for JSON),
``pas_false_hint_rate``, ``plain_kept_with_pas``, sizes and wall time. CPU, one thread, about two minutes
(``--quick``: the learning-test size, well under a minute on an idle core).

Usage::

    python bench/pas_effect.py            # 85 topics (20 held out)
    python bench/pas_effect.py --quick    # the size of tests/test_pas_effect.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

TOPICS = (
    "apple river castle garden robot violin desert forest island bridge rocket candle tiger ocean mountain "
    "library museum bicycle camera coffee piano dragon volcano glacier harbor market planet rainbow meadow "
    "tunnel lantern compass kettle ladder mirror pencil saddle tractor wallet window anchor barrel cactus "
    "basket blanket bottle button canyon carpet cottage crystal dolphin engine feather fountain giraffe hammer "
    "helmet jacket jungle kitchen lemon magnet falcon notebook orchard parrot pepper pillow puzzle quilt "
    "radio ribbon saucer scooter shovel spider sponge statue sweater teapot ticket tomato trumpet umbrella"
).split()
TEMPLATES = {
    "data": ["List the key facts about {t}.", "Give the main attributes of {t}.", "Extract the details of {t}."],
    "creative": ["Write a short poem about {t}.", "Tell a tiny story about {t}."],
    "explain": ["Explain how {t} works.", "Why do people like {t}?"],
}
COMPLEMENTS = {
    "data": "Answer in JSON.",
    "creative": "Use vivid images and a warm tone.",
    "explain": "Explain step by step in plain words.",
}
JSON_HINT = COMPLEMENTS["data"]


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def main_answer(topic: str, category: str, wants_json: bool) -> str:
    if wants_json:
        return json.dumps({"topic": topic, "category": category})
    return {"data": f"Here is a short note about {topic}.", "creative": f"A small song of the {topic}, soft and bright.",
            "explain": f"The {topic} is simple once you look closely."}[category]


def _categories(topic: str, held_out: set[str]) -> list[str]:
    """A held-out topic appears in training only in the creative / explain prompts: its data prompts are
    the test, so a model that keyed on the topic would have learned the wrong (non-JSON) association."""
    return [c for c in TEMPLATES if not (topic in held_out and c == "data")]


def main_sft_records(topics: list[str], held_out: set[str] = frozenset()) -> list[dict]:
    """Every category, with no hint, with its own complement, and with the JSON hint: JSON iff the hint."""
    records = []
    for t in topics:
        for category in _categories(t, held_out):
            templates = TEMPLATES[category]
            for template in templates:
                prompt = template.format(t=t)
                for suffix in ("", COMPLEMENTS[category], JSON_HINT):
                    text = f"{prompt}\n\n{suffix}" if suffix else prompt
                    answer = main_answer(t, category, suffix == JSON_HINT)
                    records.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]})
    return records


def pas_records(topics: list[str], held_out: set[str] = frozenset()) -> list[dict]:
    """PAS data in the `novalign pas build-data` output format (prompt, complement, category, check)."""
    return [{"prompt": template.format(t=t), "complement": COMPLEMENTS[category], "category": category,
             "check": {"verdict": "keep", "reason": "synthetic"}}
            for t in topics for category in _categories(t, held_out) for template in TEMPLATES[category]]


def tokenizer_texts(topics: list[str]) -> Iterator[str]:
    """The demo corpus plus this task's own text (the PAS template, prompts, answers), so the tokenizer has
    merges for them and sequences stay short -- the main cost on a CPU."""
    from novalign.models.tiny import default_training_texts
    from novalign.pas.augment import load_text

    yield from default_training_texts()
    template = load_text(None, "template.txt")
    for _ in range(30):
        yield template
        for record in main_sft_records(topics):
            yield " ".join(m["content"] for m in record["messages"])


def train_settings(steps: int, lr: float) -> dict:
    return {"optim": {"lr": lr, "warmup_ratio": 0.05, "weight_decay": 0.0},
            "train": {"max_steps": steps, "micro_batch_size": 8, "grad_accum": 1, "progress": False,
                      "tensorboard": False, "seed": 0, "device": "cpu", "save_every": 0},
            "packing": {"enabled": False}}


def run(work: Path, *, num_topics: int, held_out: int, main_steps: int, pas_steps: int, hidden: int,
        seed: int = 0) -> dict:
    """Train both tiny models in ``work`` and measure the main model's JSON pass rate without / with PAS."""
    from novalign.config import PASTrainConfig, SFTConfig
    from novalign.data.io import write_jsonl
    from novalign.eval.benchmarks import gsb, ux_pass_rate
    from novalign.eval.ifeval import format_json_format
    from novalign.models.generate import generate_chat
    from novalign.models.load import load_model, load_tokenizer
    from novalign.models.tiny import init_tiny_model
    from novalign.pas.augment import PromptAugmenter
    from novalign.pas.train import run_pas_train
    from novalign.train.sft import run_sft

    start = time.perf_counter()
    topics = list(TOPICS[:num_topics])
    random.Random(seed).shuffle(topics)
    eval_topics = topics[:held_out]
    held = set(eval_topics)
    quiet = lambda *a, **k: None  # noqa: E731
    dims = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_layers=2, texts=list(tokenizer_texts(topics)))

    log(f"main model: {len(main_sft_records(topics, held))} SFT samples, {main_steps} steps")
    init_tiny_model(work / "main-base", seed=seed, **dims)
    main_file = work / "main_sft.jsonl"
    write_jsonl(main_file, main_sft_records(topics, held))
    main_cfg = SFTConfig.model_validate({"output_dir": str(work / "main"), "model": {"path": str(work / "main-base"), "gradient_checkpointing": "off"},
                                         "data": {"train_files": [str(main_file)], "max_length": 256},
                                         **train_settings(main_steps, 5e-3)})
    run_sft(main_cfg, console_print=quiet)

    log(f"main model trained in {time.perf_counter() - start:.1f} s")
    log(f"PAS model: {len(pas_records(topics, held))} PAS samples, {pas_steps} steps")
    init_tiny_model(work / "pas-base", seed=seed + 1, **dims)
    pas_file = work / "pas_data.jsonl"
    write_jsonl(pas_file, pas_records(topics, held))
    pas_cfg = PASTrainConfig.model_validate({"output_dir": str(work / "pas"), "model": {"path": str(work / "pas-base"), "gradient_checkpointing": "off"},
                                             "pas_files": [str(pas_file)], "max_length": 512,
                                             **train_settings(pas_steps, 5e-3)})
    run_pas_train(pas_cfg, console_print=quiet)

    log(f"PAS model trained; {time.perf_counter() - start:.1f} s so far")
    data_prompts = [tpl.format(t=t) for t in eval_topics for tpl in TEMPLATES["data"]]
    other_prompts = [tpl.format(t=t) for t in eval_topics for c in ("creative", "explain") for tpl in TEMPLATES[c]]
    augmenter = PromptAugmenter.from_model(work / "pas" / "model", device="cpu", max_tokens=24)
    try:
        data_aug = augmenter.augment_many([{"prompt": p} for p in data_prompts])
        other_aug = augmenter.augment_many([{"prompt": p} for p in other_prompts])
    finally:
        augmenter.close()

    model, tokenizer = load_model(work / "main" / "model"), load_tokenizer(work / "main" / "model")

    def answers(prompts: list[str]) -> list[str]:
        return generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=40)

    before = [format_json_format(a) for a in answers(data_prompts)]
    after = [format_json_format(a) for a in answers([a.augmented for a in data_aug])]
    control = [not format_json_format(a) for a in answers([a.augmented for a in other_aug])]
    rate = lambda ok: ux_pass_rate([{"capability": "data", "dimensions": {"json": v}} for v in ok], ("json",))  # noqa: E731
    verdicts = ["same" if a == b else ("good" if a else "bad") for a, b in zip(after, before)]
    return {
        "bench": "pas_effect", "held_out_prompts": len(data_prompts), "topics": len(topics),
        "held_out_topics": len(eval_topics), "pass_rate_without_pas": rate(before)["pass_rate"],
        "pass_rate_with_pas": rate(after)["pass_rate"], "gsb": gsb(verdicts),
        "pas_hint_rate": sum("json" in a.complement.lower() for a in data_aug) / len(data_aug),
        "pas_false_hint_rate": sum("json" in a.complement.lower() for a in other_aug) / len(other_aug),
        "plain_kept_with_pas": sum(control) / len(control), "main_steps": main_steps, "pas_steps": pas_steps,
        "hidden_size": hidden, "example": data_aug[0].to_dict(), "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="The learning-test size (fewer topics and steps).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and steady on a shared machine
    size = (dict(num_topics=30, held_out=8, main_steps=150, pas_steps=150, hidden=64) if args.quick
            else dict(num_topics=len(TOPICS), held_out=20, main_steps=400, pas_steps=300, hidden=64))
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), seed=args.seed, **size)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
