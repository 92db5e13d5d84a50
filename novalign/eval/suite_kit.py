"""Shared machinery of the judged suites (:mod:`novalign.eval.checklist`, :mod:`novalign.eval.graded`):
ask the model or read given responses, judge in chunks, write each record as soon as it is complete, replay
existing judgments, skip what an earlier run did (``ctx.done``) and build the summary of
:mod:`novalign.eval.suite_api`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from novalign.eval.judge import Judgment, ask_judge
from novalign.eval.suite_api import SuiteContext

Unit = tuple[str, Callable[[str], Any]]  # one judge prompt and the parser of its answer


def numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, start=1))


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def pending(ctx: SuiteContext, samples: list[dict]) -> list[dict]:
    return [s for s in samples if s["id"] not in ctx.done]


def require(ctx: SuiteContext, what: str) -> None:
    if what == "judge" and ctx.judge is None:
        raise ValueError(f"suite {ctx.name!r} needs a judge model (the config's judge), or options.judgments")
    if what == "data" and ctx.data is None:
        raise ValueError(f"suite {ctx.name!r} needs a data file")


def judge_all(ctx: SuiteContext, samples: list[dict], units: Callable[[dict], list[Unit]],
               finish: Callable[[dict, list[Judgment]], dict]) -> list[dict]:
    """Judge every sample (each has one or more units), write each sample's record as soon as it is complete."""
    require(ctx, "judge")
    prompts, parsers, owner = [], [], []
    for k, sample in enumerate(samples):
        for prompt, parser in units(sample):
            prompts.append(prompt)
            parsers.append(parser)
            owner.append(k)
    collected: dict[int, dict[int, Judgment]] = defaultdict(dict)
    needed = defaultdict(int)
    for k in owner:
        needed[k] += 1
    first = {k: owner.index(k) for k in set(owner)}
    records: list[dict] = []

    def on_done(index: int, judgment: Judgment) -> None:
        k = owner[index]
        collected[k][index] = judgment
        if len(collected[k]) == needed[k]:
            ordered = [collected[k][first[k] + j] for j in range(needed[k])]
            record = finish(samples[k], ordered)
            record["judge_raw"] = [raw for j in ordered for raw in j.raw]
            ctx.write(record)
            records.append(record)

    ask_judge(ctx.judge, prompts, parsers, attempts=int(ctx.options.get("judge_attempts", 3)), lang=ctx.lang,
              template_dir=ctx.template_dir, max_tokens=ctx.options.get("judge_max_tokens"),
              progress=ctx.progress, on_done=on_done)
    return records


def judge_samples(ctx: SuiteContext, samples: list[dict], answer: Callable[[list[dict]], None],
                  units: Callable[[dict], list[Unit]], finish: Callable[[dict, list[Judgment]], dict]) -> list[dict]:
    """The loop of every LLM-judged suite: per chunk of the samples not yet done, ``answer(chunk)`` puts the
    model's replies on the samples, then their ``units`` are judged and ``finish`` makes each record (written
    as soon as it is complete). Returns the records of all samples, resumed ones included, in data order."""
    new: list[dict] = []
    for chunk in chunks(pending(ctx, samples), chunk_size(ctx)):
        answer(chunk)
        new += judge_all(ctx, chunk, units, finish)
    return all_records(ctx, new, [s["id"] for s in samples])


def replay(ctx: SuiteContext, records: list[dict]) -> list[dict]:
    """Score-only from existing judgments: write the records not already done; return all of them."""
    out = []
    for record in records:
        if record["id"] in ctx.done:
            out.append(ctx.done[record["id"]])
        else:
            ctx.write(record)
            out.append(record)
    return out


def all_records(ctx: SuiteContext, new: list[dict], ids: Sequence[str]) -> list[dict]:
    fresh = {r["id"]: r for r in new}
    return [fresh[i] if i in fresh else ctx.done[i] for i in ids if i in fresh or i in ctx.done]


def summary(records: list[dict], metrics: dict, by_category: dict, **extra: Any) -> dict:
    return {"metrics": metrics, "by_category": by_category, "num_samples": len(records),
            "num_failed": sum(bool(r.get("failed")) for r in records), **extra}


def by_category(records: list[dict], score: Callable[[list[dict]], dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get("category", "all"))].append(r)
    return {c: score(g) for c, g in sorted(groups.items())}


def responses(ctx: SuiteContext, chunk: list[dict], conversation: Callable[[dict], list[dict]],
               given: dict[str, Any] | None) -> list[str]:
    """The model's replies to ``chunk``: asked now, or taken from a responses file (score-only mode)."""
    if ctx.respond is not None:
        return list(ctx.respond([conversation(s) for s in chunk]))
    if given is None:
        raise ValueError(f"suite {ctx.name!r}: no model to ask and no options.responses file")
    missing = [s["id"] for s in chunk if s["id"] not in given]
    if missing:
        raise ValueError(f"suite {ctx.name!r}: the responses file has no response for ids {missing[:5]}")
    return [given[s["id"]] for s in chunk]


def chunk_size(ctx: SuiteContext) -> int:
    return max(1, int(ctx.options.get("chunk_size", 32)))
