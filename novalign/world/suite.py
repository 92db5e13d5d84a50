"""The world's held-out prompts as a ``novalign eval`` suite (type ``world``): pass rate per capability.

The suite reads a world eval file (``eval.jsonl`` of :func:`novalign.world.generator.write_world`: one
``{capability, messages, check, ...}`` per line), asks the model, and grades every reply with the world's
checker (:func:`novalign.world.checkers.passes`). A chat model answers ``messages`` through its chat template;
a *base* model (option ``plain``) continues a plain-text few-shot prompt
(:func:`~novalign.world.generator.few_shot_prompt`, solved examples from option ``shots``) as raw text, cut
at :data:`~novalign.world.generator.STOP_STRINGS` -- the way lm-eval-harness evaluates base models on
generation tasks.

Batches are those of :func:`novalign.world.evaluate.evaluate_model`: every prompt sorted by its token length
(where the runner can count tokens: local models), cut into chunks of ``batch_size``, each chunk asked as
one batch of the model (``together=True``), replies stripped. So a local model's greedy replies -- and the
table -- are the same to the token as those of the direct ``generate_batch`` loop.

Options:
    ``plain``       true (every model), false (default), or a list of model names evaluated as base models.
    ``shots``       the world's ``shots.jsonl`` (``{capability, messages, response}``): the few-shot examples
                    of each capability for plain prompts (none given: zero-shot plain text).
    ``batch_size``  prompts per model batch (the runner's ``batch_size`` when not set).
    ``max_tokens``  longest reply (default: the model's ``max_tokens``).

Records: ``id`` (the record's own ``id``, else capability plus a hash of exactly what was asked, so a
changed prompt is never mistaken for a stored one), ``category`` and ``capability``, ``failed`` (false: every
reply is graded), ``format`` (``plain`` / ``chat``), ``prompt`` (the last user message), ``reply``,
``passed``. Summary: ``metrics.pass_rate`` (the unweighted mean over capabilities), ``by_category`` (each
capability's ``pass_rate``, in file order) and ``rates`` -- ``{capability: rate, ..., "mean": mean}``, the
shape :func:`novalign.world.evaluate.pass_rates` gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError, iter_records
from novalign.eval.suite_api import SuiteContext
from novalign.world.checkers import passes
from novalign.world.evaluate import pass_rates
from novalign.world.generator import STOP_STRINGS, few_shot_prompt

__all__ = ["read_shots", "read_world_tasks", "run_world", "world_order"]

log = logging.getLogger("novalign.eval")


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "must be a non-empty list of {role, content}"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return "every message needs string role and content"
    if messages[-1]["role"] != "user":
        return "the last message must be the user's"
    return None


def read_world_tasks(path: str | Path) -> list[dict]:
    """World eval records ``{capability, messages, check, id?}``, in file order.

    Raises:
        DataError: naming file, line and field of a record that cannot be asked or graded.
    """
    tasks = []
    for line, record in iter_records(path):
        if not isinstance(record.get("capability"), str) or not record["capability"]:
            raise DataError(path, line, "capability", "missing or not a non-empty string", reason="bad capability")
        if (error := _messages_error(record.get("messages"))) is not None:
            raise DataError(path, line, "messages", error, reason="bad messages")
        if not isinstance(record.get("check"), dict) or "type" not in record["check"]:
            raise DataError(path, line, "check", "missing or not a checker spec {type, ...}", reason="bad check")
        if "id" in record and not isinstance(record["id"], (str, int)):
            raise DataError(path, line, "id", "must be a string or an integer", reason="bad id")
        tasks.append(record)
    return tasks


def read_shots(path: str | Path) -> dict[str, list[dict]]:
    """The few-shot examples per capability, in file order (``{capability, messages, response}`` lines)."""
    shots: dict[str, list[dict]] = {}
    for line, record in iter_records(path):
        if not isinstance(record.get("capability"), str):
            raise DataError(path, line, "capability", "missing or not a string", reason="bad capability")
        if (error := _messages_error(record.get("messages"))) is not None:
            raise DataError(path, line, "messages", error, reason="bad messages")
        if not isinstance(record.get("response"), str):
            raise DataError(path, line, "response", "missing or not a string (a shot is a solved example)",
                            reason="bad response")
        shots.setdefault(record["capability"], []).append(record)
    return shots


def world_order(lengths: Sequence[int] | None, count: int, batch_size: int) -> list[list[int]]:
    """The batches of :func:`novalign.world.evaluate.generate_texts`: indices stably sorted by prompt length,
    in chunks of ``batch_size`` (file order where lengths are unknown).

        >>> world_order([5, 2, 9, 2], 4, 3)
        [[1, 3, 0], [2]]
    """
    order = sorted(range(count), key=lambda i: lengths[i]) if lengths is not None else list(range(count))
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]


def _is_plain(ctx: SuiteContext) -> bool:
    plain = ctx.options.get("plain", False)
    if isinstance(plain, bool):
        return plain
    if isinstance(plain, list) and all(isinstance(name, str) for name in plain):
        return ctx.model_name in plain
    raise ValueError(f"suite {ctx.name!r}: options.plain must be true, false or a list of model names, not {plain!r}")


def _sample_id(task: dict, asked: str | list) -> str:
    if "id" in task:
        return str(task["id"])
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
    return f"{task['capability']}-{digest}"


def _record(sample_id: str, task: dict, reply: str, plain: bool) -> dict[str, Any]:
    return {"id": sample_id, "category": task["capability"], "capability": task["capability"], "failed": False,
            "format": "plain" if plain else "chat", "prompt": task["messages"][-1]["content"], "reply": reply,
            "passed": passes(reply, task["check"])}


def _stored(ctx: SuiteContext, sample_id: str) -> dict[str, Any]:
    """A record an earlier run wrote, kept with its verdict (as the code suite keeps its test runs: grading
    a code reply runs it in the sandbox, and the stored verdict is the one that run reported)."""
    record = ctx.done[sample_id]
    if not {"reply", "passed", "capability"} <= set(record):
        raise ValueError(f"{ctx.model_name}/{ctx.name}.jsonl: the stored record {sample_id!r} has no reply/passed; it "
                         "was written by a different suite (use another suite name or output_dir)")
    return record


def _ask(ctx: SuiteContext, plain: bool):
    ask = ctx.complete if plain else ctx.respond
    if ask is None:
        what = "raw text completions (plain: a local path or an endpoint with /completions)" if plain else "replies"
        raise ValueError(f"suite {ctx.name!r} needs the model's {what}: give model {ctx.model_name!r} a path, an llm "
                         "endpoint or a responses file")
    return ask


def run_world(ctx: SuiteContext) -> dict[str, Any]:
    """The world suite (see the module docstring); resumed records keep their stored reply and verdict."""
    if ctx.data is None:
        raise ValueError(f"suite {ctx.name!r} needs the world's eval file (suites[].data: eval.jsonl)")
    tasks = read_world_tasks(ctx.data)
    plain = _is_plain(ctx)
    shots = read_shots(ctx.options["shots"]) if plain and ctx.options.get("shots") else {}
    inputs = [few_shot_prompt(t, shots.get(t["capability"], [])) if plain else t["messages"] for t in tasks]
    ids = [_sample_id(t, asked) for t, asked in zip(tasks, inputs, strict=True)]
    first: dict[str, int] = {}
    for k, sample_id in enumerate(ids):
        if sample_id in first:
            raise DataError(ctx.data, k + 1, "id", f"sample id {sample_id!r} already used by record {first[sample_id] + 1}"
                            " (the same prompt twice?)", reason="duplicate id")
        first[sample_id] = k
    stale = sorted(set(ctx.done) - set(ids))
    if stale:
        log.warning("%s/%s: %d stored records are not prompts of %s (ignored), e.g. %s", ctx.model_name, ctx.name,
                    len(stale), ctx.data, stale[:3])
    records = {i: _stored(ctx, i) for i in ids if i in ctx.done}
    if len(records) < len(ids):
        ask = _ask(ctx, plain)
        lengths = ctx.prompt_tokens(inputs) if ctx.prompt_tokens is not None else None
        batch_size = max(1, int(ctx.options.get("batch_size", 32)))
        for batch in world_order(lengths, len(tasks), batch_size):
            if all(ids[k] in records for k in batch):
                continue
            # a batch cut short by a kill is asked whole again: the same batch, so the same greedy replies
            replies = ask([inputs[k] for k in batch], stop=list(STOP_STRINGS) if plain else None,
                          max_tokens=ctx.options.get("max_tokens"), together=True)
            for k, reply in zip(batch, replies, strict=True):
                if ids[k] not in records:
                    records[ids[k]] = _record(ids[k], tasks[k], reply.strip(), plain)
                    ctx.write(records[ids[k]])
    ordered = [records[i] for i in ids]
    rates = pass_rates(ordered)
    mean = rates.pop("mean", 0.0)
    return {"metrics": {"pass_rate": mean}, "by_category": {c: {"pass_rate": r} for c, r in rates.items()},
            "rates": {**rates, "mean": mean}, "num_samples": len(ordered), "num_failed": 0,
            "format": "plain" if plain else "chat"}
