"""Evaluate a model on the world's held-out prompts: pass rate per capability.

Chat models answer the prompt rendered by their chat template. A *base* model is evaluated the way base
models are (``plain=True``): a plain-text few-shot prompt in the format of its pretraining corpus
(:func:`novalign.world.generator.few_shot_prompt`), its answer cut at the first blank line or next
``Question:``. Every answer is greedy and graded by the same checker, so the two numbers are comparable.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from novalign.models.generate import generate_texts  # noqa: F401 - re-exported: the world's callers use it
from novalign.world.checkers import passes
from novalign.world.generator import STOP_STRINGS, few_shot_prompt

__all__ = ["EvalResult", "generate_texts", "prompt_ids", "evaluate_model", "pass_rates"]


@dataclass
class EvalResult:
    rates: dict[str, float]  # capability -> pass rate; "mean" -> mean over capabilities
    rows: list[dict[str, Any]]  # {capability, prompt, reply, passed}


def prompt_ids(tokenizer, task: dict, *, plain: bool, shots: Sequence[dict] = ()) -> list[int]:
    """Token ids of one prompt: chat template, or plain-text few-shot for a base model."""
    from novalign.models.generate import encode_chat

    if plain:
        return tokenizer(few_shot_prompt(task, list(shots)), add_special_tokens=False)["input_ids"]
    return encode_chat(tokenizer, task["messages"])


def pass_rates(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pass rate per capability (in first-seen order) and their unweighted ``mean``."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        hits[row["capability"]].append(bool(row["passed"]))
    rates = {cap: sum(v) / len(v) for cap, v in hits.items()}
    if rates:
        rates["mean"] = sum(rates.values()) / len(rates)
    return rates


def evaluate_model(model_dir: str, tasks: Sequence[dict], *, plain: bool, shots: dict[str, list[dict]] | None = None,
                   max_new_tokens: int = 96, batch_size: int = 32, progress=None) -> EvalResult:
    """Greedy answers to ``tasks`` (world eval records), each graded by its own check."""
    import torch

    from novalign.models.load import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, dtype="float32")
    shots = shots or {}
    prompts = [prompt_ids(tokenizer, t, plain=plain, shots=shots.get(t["capability"], ())) for t in tasks]
    with torch.no_grad():
        replies = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 stop=STOP_STRINGS if plain else (), batch_size=batch_size, progress=progress)
    rows = [{"capability": t["capability"], "prompt": t["messages"][-1]["content"], "reply": r,
             "passed": passes(r, t["check"])} for t, r in zip(tasks, replies)]
    return EvalResult(pass_rates(rows), rows)
