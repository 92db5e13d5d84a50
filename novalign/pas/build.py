"""The ``novalign pas build-data`` run: pool -> synthesis -> self-correction -> JSONL (see :mod:`novalign.pas.data`).

Resumable: prompts already in the output (or in its ``.dropped.jsonl``) are skipped, new records are
appended durably as each finishes (:class:`~novalign.data.io.KeyedAppender`, keyed by prompt), and every LLM
call goes through the client's cache. Prompts whose LLM call failed are written to ``.failed.jsonl`` with the
reason and tried again on the next run. A pool prompt given twice is decided once (the first occurrence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from novalign.config import PASDataConfig
from novalign.data.io import KeyedAppender, SkipReport, iter_records, write_json_atomic
from novalign.llm import ChatRequest, LLMClient
from novalign.pas.data import (
    CheckReply, category_balance, check_messages, decide, load_categories, load_seeds, pick_shots, read_pool,
    scope_findings, synthesis_messages, synthesis_schema,
)
from novalign.pas.rules import rule_problems

__all__ = ["run_build_data"]


def _side(output: Path, kind: str) -> Path:
    return output.with_name(output.name + f".{kind}.jsonl")


def _todo(pool: list[dict], done: set[str]) -> tuple[list[dict], int, int]:
    """The pool items still to decide, how many are done already, and how many repeat an earlier pool prompt
    (decided once: the output is keyed by prompt)."""
    todo, seen, num_done, repeats = [], set(), 0, 0
    for item in pool:
        if item["prompt"] in done:
            num_done += 1
        elif item["prompt"] in seen:
            repeats += 1
        else:
            seen.add(item["prompt"])
            todo.append(item)
    return todo, num_done, repeats


def run_build_data(cfg: PASDataConfig, console_print: Callable[[str], None] = print,
                   client: LLMClient | None = None, check_client: LLMClient | None = None) -> dict[str, Any]:
    """Run the three steps over ``cfg.pool_files``; returns the summary (also written to ``<output>.summary.json``)."""
    if not cfg.pool_files:
        raise ValueError("pool_files is empty: give JSONL/Parquet files of {prompt, category?} records")
    categories = load_categories(cfg.categories)
    by_name = {c.name: c for c in categories}
    seeds = load_seeds(categories, cfg.seeds)
    skip = SkipReport() if cfg.skip_invalid else None
    pool = read_pool(cfg.pool_files, categories, skip)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sinks = {"kept": KeyedAppender(output, "prompt"), "dropped": KeyedAppender(_side(output, "dropped"), "prompt"),
             "failed": KeyedAppender(_side(output, "failed"), "prompt", fresh=True)}  # earlier failures: retried now
    torn = sinks["kept"].dropped + sinks["dropped"].dropped
    todo, num_done, repeats = _todo(pool, set(sinks["kept"].done) | set(sinks["dropped"].done))
    console_print(f"{len(pool)} pool prompts, {num_done} already done, {len(todo)} to go"
                  + (f", {repeats} repeated prompts decided once" if repeats else "")
                  + (f"; {skip.summary()}" if skip is not None and skip.total else ""))
    own = client is None
    client = client or LLMClient.from_config(cfg.llm)
    own_check = check_client is None and cfg.check_llm is not None
    check_client = check_client or (LLMClient.from_config(cfg.check_llm) if cfg.check_llm is not None else client)
    counts = {"kept": 0, "rewritten": 0, "dropped": 0, "failed": 0}
    try:
        candidates = _synthesize(client, cfg, todo, categories, seeds, sinks["failed"], counts)
        _self_correct(check_client, cfg, candidates, by_name, sinks, counts)
    finally:
        for sink in sinks.values():
            sink.close()
        if own_check:
            check_client.close()
        if own:
            client.close()
    kept = [record for _, record in iter_records(output)] if output.exists() else []
    summary = {"pool": len(pool), "processed": len(todo), **counts, "skipped_invalid": skip.total if skip else 0,
               **({"repeated_prompts": repeats} if repeats else {}),
               **({"dropped_truncated": torn} if torn else {}),  # torn last lines of a killed run, redone now
               "balance": category_balance(kept, categories)}
    write_json_atomic(output.with_name(output.name + ".summary.json"), summary)
    _print_balance(summary, console_print)
    return summary


def _synthesize(client, cfg: PASDataConfig, todo: list[dict], categories, seeds, failed: KeyedAppender,
                counts: dict) -> list[dict]:
    """Step 2: one structured request per prompt; returns ``{item, category, complement}`` candidates."""
    schema = synthesis_schema(categories)
    requests = []
    candidates = [{"item": item, "category": item["category"], "complement": item["complement"]}
                  for item in todo if "complement" in item]
    todo = [item for item in todo if "complement" not in item]
    for i, item in enumerate(todo):
        shots = pick_shots(seeds, item.get("category"), cfg.shots, item["prompt"], cfg.seed)
        messages = synthesis_messages(item["prompt"], categories, shots, category=item.get("category"),
                                      keywords=item.get("search_keywords") or (), max_words=cfg.max_words)
        requests.append(ChatRequest(messages=messages, schema=schema, temperature=cfg.temperature,
                                    max_tokens=cfg.max_tokens, seed=cfg.seed, tag=i))
    for result in client.batch(requests):
        item = todo[result.index]
        if not result.ok:
            counts["failed"] += 1
            failed.append(item | {"step": "synthesis", "error": str(result), "last_reply": result.last_text})
            continue
        # a prompt given with its category keeps it; the LLM only chooses when the pool did not say
        category = item.get("category") or result.parsed.category
        candidates.append({"item": item, "category": category, "complement": result.parsed.complement.strip()})
    return candidates


def _self_correct(client, cfg: PASDataConfig, candidates: list[dict], by_name: dict,
                  sinks: dict[str, KeyedAppender], counts: dict) -> None:
    """Step 3: rules + LLM check per candidate; write kept / rewritten / dropped records as they finish."""
    findings = []
    requests = []
    for i, cand in enumerate(candidates):
        found = rule_problems(cand["complement"], max_words=cfg.max_words, min_words=cfg.min_words)
        found += scope_findings(cand["item"], cand["complement"])
        findings.append(found)
        messages = check_messages(cand["item"]["prompt"], cand["complement"], by_name.get(cand["category"]), found,
                                  max_words=cfg.max_words)
        requests.append(ChatRequest(messages=messages, schema=CheckReply, temperature=0.0, max_tokens=cfg.max_tokens,
                                    tag=i))
    for result in client.batch(requests):
        cand, found = candidates[result.index], findings[result.index]
        if not result.ok and cfg.on_check_failure == "fail":
            counts["failed"] += 1
            sinks["failed"].append(cand["item"] | {"step": "check", "complement": cand["complement"],
                                                   "error": str(result)})
            continue
        final, check = decide(cand["complement"], found, result.parsed if result.ok else None,
                              None if result.ok else str(result), max_words=cfg.max_words, min_words=cfg.min_words)
        item = {k: v for k, v in cand["item"].items() if k != "complement"}
        record = item | {"complement": final if final is not None else cand["complement"],
                                 "category": cand["category"], "check": check}
        if final is None:
            counts["dropped"] += 1
            sinks["dropped"].append(record)
        else:
            counts["rewritten" if check["verdict"] == "rewrite" else "kept"] += 1
            sinks["kept"].append(record)


def _print_balance(summary: dict, console_print) -> None:
    from rich.console import Console
    from rich.table import Table

    balance = summary["balance"]
    table = Table(title=f"PAS data: {balance['total']} records (kept {summary['kept']}, rewritten "
                        f"{summary['rewritten']}, dropped {summary['dropped']}, failed {summary['failed']})")
    for column in ("category", "records", "share"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for name, n in balance["counts"].items():
        table.add_row(name, str(n), f"{balance['shares'][name]:.1%}")
    Console(stderr=True).print(table)
    if balance["missing"]:
        console_print(f"categories with no records: {', '.join(balance['missing'])}")
