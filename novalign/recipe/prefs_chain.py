"""The recipe's prefs stage on the world's prompts: the preference-data chain users run (issue 18, report
sections 3.2-3.3) instead of the single ``novalign data prefs`` step.

``respond`` (the recipe's SFT model, and optionally its base model with a quota; the report's T / top_p / top_k)
-> ``autorate`` (every world prompt has a check spec, so the golden-answer AutoRator's rule checkers grade it:
no judge LLM is needed) -> ``response_rouge`` -> ``prefilter`` (best / middle / worst) -> ``drop_rules``
(all-high, within-margin) -> ``rm_groups``. The stage writes what later stages read: ``prefs.jsonl`` (the
``novalign rm`` group format), ``prompt_scores.jsonl`` (``{index, capability, scores}`` of the SFT model's
samples, for ``rl_prompt_filter: mixed``) and ``stats.json`` (the funnel, for the report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ABILITY", "world_prompt_records", "interleave", "chain_steps", "chain_stats", "run_world_chain"]

# the world's capabilities as taxonomy abilities (flywheel/taxonomy.py), which route the AutoRators
ABILITY = {"math": "Math", "reason": "Reason", "if": "IF", "role": "Role", "kqa": "KQA", "code": "Code"}


def world_prompt_records(rows: Sequence[dict]) -> list[dict]:
    """The world's prompt rows (``{messages, capability, check}``) as chain records: ``id`` (``p<row index>``),
    ``prompt`` (the messages), ``check``, ``capability``, ``labels`` and, for answer checks, ``answer``.

    >>> world_prompt_records([{"messages": [{"role": "user", "content": "1+1?"}], "capability": "math",
    ...                        "check": {"type": "answer", "answer": "2"}}])[0]["answer"]
    '2'
    """
    out = []
    for i, r in enumerate(rows):
        rec = {"id": f"p{i}", "prompt": r["messages"], "check": r["check"], "capability": r["capability"],
               "labels": {"ability": ABILITY[r["capability"]], "language": "en", "domain": r["capability"]}}
        if r["check"].get("type") == "answer":
            rec["answer"] = r["check"]["answer"]
        out.append(rec)
    return out


def interleave(records: Sequence[dict], key: str = "capability") -> list[dict]:
    """Round robin over the values of ``key`` (in first-seen order), so that a quota on "the first N prompts"
    covers every capability instead of the first ones of a sorted file.

    >>> [r["c"] for r in interleave([{"c": "a"}, {"c": "a"}, {"c": "b"}, {"c": "a"}, {"c": "b"}], "c")]
    ['a', 'b', 'a', 'b', 'a']
    """
    by: dict[Any, list[dict]] = {}
    for r in records:
        by.setdefault(r.get(key), []).append(r)
    queues = list(by.values())
    out: list[dict] = []
    for k in range(max((len(q) for q in queues), default=0)):
        out.extend(q[k] for q in queues if k < len(q))
    return out


def chain_steps(prefs, model_dirs: dict[str, str], device: str = "cpu") -> list[tuple[str, str, dict]]:
    """The chain as ``(step name, step type, config)``, from the recipe's ``prefs`` section
    (:class:`~novalign.config.recipe.RecipePrefsConfig`) and the model folders (``{"sft": ..., "base": ...}``)."""
    models = []
    for m in prefs.models:
        llm = {"backend": "local", "model": model_dirs[m.model],
               "local": {"device": device, "max_batch_size": prefs.batch_size}}
        models.append({"name": m.model, "llm": llm, "n": m.n, "max_prompts": m.max_prompts})
    return [
        ("respond", "respond", {"prompt_field": "prompt", "models": models, "n": prefs.n,
                                "temperature": prefs.temperature, "top_p": prefs.top_p, "top_k": prefs.top_k,
                                "max_tokens": prefs.max_new_tokens, "seed": prefs.seed}),
        ("rate", "autorate", {}),
        ("rouge", "response_rouge", {"threshold": prefs.rouge_threshold}),
        ("prefilter", "prefilter", {"keep": prefs.keep}),
        ("rules", "drop_rules", {"high": prefs.high, "margin": prefs.margin, "low": prefs.low}),
        ("rm", "rm_groups", {"extra": ["capability", "labels"]}),
    ]


def chain_stats(rated: Sequence[dict], steps: Sequence[dict], groups: int) -> dict[str, Any]:
    """``stats.json`` of the stage: prompts, samples (per model), the funnel (each step's in / out / dropped by
    reason), the RM groups, and the share of samples scoring 1 per capability -- of the SFT model
    (``sample_pass_rate``, the RL starting point) and of every model (``pass_rate_by_model``)."""
    per: dict[str, dict[str, list[bool]]] = {}
    samples: dict[str, int] = {}
    for g in rated:
        for r in g["responses"]:
            per.setdefault(r["model"], {}).setdefault(g["capability"], []).append(r["score"] >= 1.0)
            samples[r["model"]] = samples.get(r["model"], 0) + 1
    rate = {m: {c: sum(v) / len(v) for c, v in caps.items()} for m, caps in per.items()}
    funnel = [{"step": s["name"], "in": s["records_in"], "out": s["records_out"], "dropped": s["dropped_by_reason"]}
              for s in steps]
    return {"chain": True, "prompts": steps[0]["records_in"] if steps else 0, "samples": sum(samples.values()),
            "samples_by_model": samples, "funnel": funnel, "groups": groups,
            "sample_pass_rate": rate.get("sft", {}), "pass_rate_by_model": rate}


def run_world_chain(prefs, prompts: Sequence[dict], out: Path, model_dirs: dict[str, str], *, device: str = "cpu",
                    console_print: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the chain on the world's prompt rows into ``out`` (the pipeline under ``out/chain``) and write
    ``prefs.jsonl``, ``prompt_scores.jsonl`` and ``stats.json``; returns the stats.

    Raises:
        ValueError: no group with a score difference is left (nothing for the reward model to learn).
    """
    from novalign.config.llm import LLMConfig
    from novalign.data.io import write_json_atomic, write_jsonl
    from novalign.flywheel.pipeline import Pipeline

    records = world_prompt_records(prompts)
    write_jsonl(out / "chain_input.jsonl", interleave(records))
    p = Pipeline(out / "chain", llm=LLMConfig(progress=False), progress=False)
    p.source("prompts", out / "chain_input.jsonl", id_field="id")
    for name, kind, config in chain_steps(prefs, model_dirs, device):
        p.step(name, kind, config)
    result = p.run(console_print=lambda *_: None)
    groups = [{k: v for k, v in g.items() if k != "_id"} for g in result.records("rm")]
    if not groups:
        raise ValueError("prefs: no prompt had responses with different scores; raise n or temperature")
    rated = result.records("rate")
    write_jsonl(out / "prefs.jsonl", groups)
    by_id = {g["id"]: g for g in rated}
    rows = []
    for i, r in enumerate(records):  # the SFT model's scores per prompt, in the world file's order
        g = by_id.get(r["id"])
        scores = [x["score"] for x in g["responses"] if x["model"] == "sft"] if g else []
        rows.append({"index": i, "capability": r["capability"], "scores": scores})
    write_jsonl(out / "prompt_scores.jsonl", rows)
    stats = chain_stats(rated, result.steps, len(groups))
    write_json_atomic(out / "stats.json", stats, indent=1)
    console_print("prefs chain: " + " -> ".join(f"{f['step']} {f['out']}" for f in stats["funnel"])
                  + f"; {len(groups)} RM groups; SFT sample pass rate "
                  + ", ".join(f"{c} {v:.0%}" for c, v in stats["sample_pass_rate"].items()))
    return stats
