"""Checklist-judged benchmarks (report section 5): CFBench, SysBench and FB-Bench, each a
``run_*(ctx: SuiteContext) -> dict`` (see :mod:`novalign.eval.suite_api`).

Every suite: asks the model (``ctx.respond``) or, in score-only mode (``ctx.respond is None``), takes the
responses from ``options["responses"]``; judges with ``ctx.judge`` through :func:`novalign.eval.judge.ask_judge`
(strict parsing, re-asks); writes one record per sample with ``judge_raw``; skips the ids in ``ctx.done`` and
includes them in the metrics. ``options["judgments"]`` recomputes the metrics from judgments already made
(the official repositories' per-sample files), asking nobody. Work goes in chunks of
``options["chunk_size"]`` samples (default 32), so an interrupted run loses at most one chunk.

A judgment that fails after all re-asks is counted in ``num_failed`` and scores 0, as the official CFBench
(``judge_parsing == "-1"``) and FB-Bench code do. The graded suites (UX, MT-Bench, pairwise) are in
:mod:`novalign.eval.graded`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from novalign.data.io import DataError
from novalign.eval import benchmarks as bm
from novalign.eval import suite_kit as kit
from novalign.eval.judge import Judgment, load_template, parse_checklist, render
from novalign.eval.official import (
    cfbench_judged_record,
    fbbench_judged_record,
    iter_json_items,
    read_cfbench,
    read_fbbench,
    read_sysbench,
    read_sysbench_judgments,
)
from novalign.eval.suite_api import SuiteContext
from novalign.eval.sysbench_workbook import read_sysbench_workbook, workbook_sheets

__all__ = ["run_cfbench", "run_fbbench", "run_sysbench"]


# ------------------------------------------------------------------------------------------- CFBench


def run_cfbench(ctx: SuiteContext) -> dict:
    """CFBench: judge each criterion of each sample; CSR / ISR / PSR for the easy, hard and full splits.

    Options: ``judgments`` (an official ``*_eval.json``: recompute only), ``responses`` (an official
    ``*_infer.json`` or ``{id, response}`` records: judge only), ``judge_attempts``, ``chunk_size``.
    """
    if "judgments" in ctx.options:
        records = kit.replay(ctx, [cfbench_judged_record(s) for s in read_cfbench(ctx.options["judgments"])])
        return _cfbench_summary(records)
    kit.require(ctx, "data")
    samples = read_cfbench(ctx.data)
    given = _cfbench_responses(ctx.options["responses"]) if "responses" in ctx.options else None
    template = load_template("cfbench", ctx.lang, ctx.template_dir)

    def answer(chunk: list[dict]) -> None:
        replies = kit.responses(ctx, chunk, lambda s: [{"role": "user", "content": s["prompt"]}], given)
        for sample, reply in zip(chunk, replies):
            sample["response"] = reply

    def units(s: dict) -> list[kit.Unit]:
        n = len(s["criteria"])
        prompt = render(template, prompt=s["prompt"], reference=s["reference"], response=s["response"],
                        criteria=kit.numbered([c[0] for c in s["criteria"]]), num_criteria=n)
        return [(prompt, lambda text, n=n: parse_checklist(text, n))]

    return _cfbench_summary(kit.judge_samples(ctx, samples, answer, units, _cfbench_record))


def _cfbench_responses(path: str | Path) -> dict[str, str]:
    found = {}
    for line, rec in iter_json_items(path):
        key = rec.get("id", rec.get("idx"))
        if key is None or not isinstance(rec.get("response"), str):
            raise DataError(path, line, "id" if key is None else "response", "missing (need idx or id, and response)")
        found[str(key)] = rec["response"]
    return found


def _cfbench_record(sample: dict, judgments: list[Judgment]) -> dict:
    j = judgments[0]
    scores = None if j.failed else [float(v) for v in j.parsed]
    record = {"id": sample["id"], "category": sample["category"], "split": sample["split"],
              "criteria": sample["criteria"], "response": sample["response"], "judge_score": scores,
              "failed": j.failed, "error": j.error}
    return record | bm.cfbench_sample_scores(scores, [c[1] for c in sample["criteria"]])


def _cfbench_summary(records: list[dict]) -> dict:
    if not records:
        return kit.summary(records, {}, {})
    splits = bm.cfbench_metrics(records)
    names = [(split, m) for split in ("full", "easy", "hard") if split in splits for m in ("CSR", "ISR", "PSR")]
    key = {(split, m): m if split == "full" else f"{split}_{m}" for split, m in names}
    metrics = {key[n]: splits[n[0]][n[1]] for n in names}  # the official 2 dp, the exact means beside
    metrics |= {f"{key[n]}_unrounded": splits[n[0]][f"{n[1]}_unrounded"] for n in names}
    by_category = kit.by_category(records, lambda g: {m: bm.cfbench_metrics(g)["full"][m] for m in ("CSR", "ISR", "PSR")})
    return kit.summary(records, metrics, by_category, splits=splits, decimals=_decimals(metrics, 2))


def _decimals(metrics: dict, official: int) -> dict[str, int]:
    """How the report prints each metric: the official table's decimals, 6 for the unrounded values."""
    return {m: 6 if m.endswith("_unrounded") else official for m in metrics}


# ------------------------------------------------------------------------------------------ SysBench


def run_sysbench(ctx: SuiteContext) -> dict:
    """SysBench: five user turns under one system message, each turn's criteria judged; CSR, ISR, SSR.

    Options: ``history`` = ``"model"`` (each turn sees the model's own earlier replies, the official default)
    or ``"gold"`` (each turn sees the data's ground-truth replies, ``eval_system_bench_with_gt.py``);
    ``judgments`` (an official ``*_eval.json``, or a published ``*_analysis.xlsx`` workbook -- then the summary
    also holds ``sysbench_sheets``, the workbook's summary sheets recomputed: recompute only); ``responses`` (an
    official ``*_infer.json`` whose ``infer_results`` is the message list (model history) or one message list
    per turn (gold history)); ``judge_attempts``, ``chunk_size``.
    """
    history = ctx.options.get("history", "model")
    if history not in ("model", "gold"):
        raise ValueError(f"suite {ctx.name!r}: options.history must be 'model' or 'gold', got {history!r}")
    if "judgments" in ctx.options:
        path = Path(ctx.options["judgments"])
        if path.suffix.lower() == ".xlsx":  # the published output/<model>/<model>_analysis.xlsx
            records = kit.replay(ctx, read_sysbench_workbook(path))
            return _sysbench_summary(records, history) | {"sysbench_sheets": workbook_sheets(records)}
        return _sysbench_summary(kit.replay(ctx, read_sysbench_judgments(path)), history)
    kit.require(ctx, "data")
    sessions = read_sysbench(ctx.data)
    given = _sysbench_responses(ctx.options["responses"]) if "responses" in ctx.options else None
    template = load_template("sysbench", ctx.lang, ctx.template_dir)

    def answer(chunk: list[dict]) -> None:
        for session, replies in zip(chunk, _sysbench_replies(ctx, chunk, history, given)):
            session["replies"] = replies

    def units(s: dict) -> list[kit.Unit]:
        out = []
        for k, turn in enumerate(s["turns"]):
            seen = s["replies"] if history == "model" else [x["gold"] for x in s["turns"]]
            past = "\n".join(f"<round-{i + 1}>\n<user>\n{s['turns'][i]['user']}\n</user>\n<assistant>\n{seen[i]}\n"
                             f"</assistant>\n</round-{i + 1}>" for i in range(k)) or "(none)"
            n = len(turn["criteria"])
            prompt = render(template, system=s["system"], history=past, question=turn["user"], response=s["replies"][k],
                            criteria=kit.numbered([f"{c['content']} | {c['type']}" for c in turn["criteria"]]),
                            num_criteria=n)
            out.append((prompt, lambda text, n=n: parse_checklist(text, n)))
        return out

    return _sysbench_summary(kit.judge_samples(ctx, sessions, answer, units, _sysbench_record), history)


def _conversation(system: str, pairs: list[tuple[str, str]], question: str) -> list[dict]:
    messages = [{"role": "system", "content": system}]
    for user, reply in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages + [{"role": "user", "content": question}]


def _sysbench_replies(ctx: SuiteContext, chunk: list[dict], history: str, given: dict | None) -> list[list[str]]:
    """One reply per turn per session. Model history: turn k is asked after turns 1..k-1 have the model's
    replies, so sessions advance together turn by turn. Gold history: every turn is independent."""
    if ctx.respond is None:
        if given is None:
            raise ValueError(f"suite {ctx.name!r}: no model to ask and no options.responses file")
        for s in chunk:
            if len(given.get(s["id"], [])) != len(s["turns"]):
                raise ValueError(f"suite {ctx.name!r}: responses for session {s['id']} do not have {len(s['turns'])} turns")
        return [given[s["id"]] for s in chunk]
    if history == "gold":
        convs, where = [], []
        for i, s in enumerate(chunk):
            for k, turn in enumerate(s["turns"]):
                convs.append(_conversation(s["system"], [(t["user"], t["gold"]) for t in s["turns"][:k]], turn["user"]))
                where.append(i)
        flat = list(ctx.respond(convs))
        replies: list[list[str]] = [[] for _ in chunk]
        for i, reply in zip(where, flat):
            replies[i].append(reply)
        return replies
    replies = [[] for _ in chunk]
    for k in range(max(len(s["turns"]) for s in chunk)):
        active = [i for i, s in enumerate(chunk) if k < len(s["turns"])]
        convs = [_conversation(chunk[i]["system"], list(zip([t["user"] for t in chunk[i]["turns"][:k]], replies[i])),
                               chunk[i]["turns"][k]["user"]) for i in active]
        for i, reply in zip(active, ctx.respond(convs)):
            replies[i].append(reply)
    return replies


def _sysbench_responses(path: str | Path) -> dict[str, list[str]]:
    found = {}
    for line, rec in iter_json_items(path):
        results = rec.get("infer_results")
        if "system_id" not in rec or not isinstance(results, list):
            raise DataError(path, line, "infer_results", "missing or not a list (need system_id and infer_results)")
        if results and isinstance(results[0], list):  # gold history: one conversation per turn, reply last
            found[str(rec["system_id"])] = [conv[-1]["content"] for conv in results]
        else:
            found[str(rec["system_id"])] = [m["content"] for m in results if m.get("role") == "assistant"]
    return found


def _sysbench_record(session: dict, judgments: list[Judgment]) -> dict:
    turns = []
    for turn, reply, j in zip(session["turns"], session["replies"], judgments):
        verdicts = [False] * len(turn["criteria"]) if j.failed else j.parsed
        turns.append({"alignment": turn["alignment"], "response": reply, "failed": j.failed, "error": j.error,
                      "criteria": [{"type": c["type"], "satisfied": v} for c, v in zip(turn["criteria"], verdicts)]})
    return {"id": session["id"], "category": session["category"], "failed": any(j.failed for j in judgments),
            "multi_rounds_related": session["multi_rounds_related"], "turns": turns}


def _sysbench_flat(sessions: list[dict]) -> dict[str, float]:
    m = bm.sysbench_metrics(sessions)
    flat = {"CSR": m["CSR"], "ISR": m["ISR"], "SSR": m["SSR"]}
    flat |= {f"CSR_{k}": v for k, v in m["CSR_per_type"].items()}
    flat |= {f"ISR_{k}": v for k, v in m["ISR_per_alignment"].items()}
    flat |= {f"R{i}": v for i, v in enumerate(m["SSR_per_turn"], start=1)}
    return flat


def _sysbench_summary(records: list[dict], history: str) -> dict:
    if not records:
        return kit.summary(records, {}, {}, history=history)
    by_category = kit.by_category(records, lambda g: {k: v for k, v in _sysbench_flat(g).items() if k in ("CSR", "ISR", "SSR")})
    return kit.summary(records, _sysbench_flat(records), by_category, history=history, sysbench=bm.sysbench_metrics(records))


# ------------------------------------------------------------------------------------------ FB-Bench


def run_fbbench(ctx: SuiteContext) -> dict:
    """FB-Bench: query, first response and the user's feedback -> the model's second response, judged on the
    checklist (weighted for error correction, any-of for response maintenance).

    Options: ``judgments`` (an official ``model_judgment/<judge>/<model>.jsonl``: recompute only);
    ``responses`` (an official ``model_answer/<model>.jsonl`` with ``second_response``: judge only);
    ``mode`` = ``"type"`` (official default: task types weigh equally) or ``"item"``; ``judge_attempts``,
    ``chunk_size``.
    """
    mode = ctx.options.get("mode", "type")
    if "judgments" in ctx.options:
        path = ctx.options["judgments"]
        return _fbbench_summary(kit.replay(ctx, [fbbench_judged_record(path, s) for s in read_fbbench(path)]), mode)
    kit.require(ctx, "data")
    samples = read_fbbench(ctx.data)
    given = None
    if "responses" in ctx.options:
        given = {s["id"]: s.get("second_response") for s in read_fbbench(ctx.options["responses"])}
    template = load_template("fbbench", ctx.lang, ctx.template_dir)

    def answer(chunk: list[dict]) -> None:
        replies = kit.responses(ctx, chunk, lambda s: [
            {"role": "user", "content": s["user_query"]}, {"role": "assistant", "content": s["origin_first_response"]},
            {"role": "user", "content": s["feedback"]}], given)
        for sample, reply in zip(chunk, replies):
            sample["second_response"] = reply

    def units(s: dict) -> list[kit.Unit]:
        n = len(s["checklist"])
        prompt = render(template, query=s["user_query"], first_response=s["origin_first_response"],
                        feedback=s["feedback"], reference=s.get("reference_second_response") or "",
                        second_response=s["second_response"], criteria=kit.numbered([c[0] for c in s["checklist"]]),
                        num_criteria=n)
        return [(prompt, lambda text, n=n: parse_checklist(text, n))]

    return _fbbench_summary(kit.judge_samples(ctx, samples, answer, units, _fbbench_record), mode)


def _fbbench_record(sample: dict, judgments: list[Judgment]) -> dict:
    j = judgments[0]
    judgement = {} if j.failed else {text: {"评判结果": "是" if ok else "否", "weight": weight}
                                     for (text, weight), ok in zip(sample["checklist"], j.parsed)}
    score = 0.0 if j.failed else bm.fbbench_checklist_score([(ok, w) for (_, w), ok in zip(sample["checklist"], j.parsed)])
    return {"id": sample["id"], "category": sample["task_type"], "bench_type": sample["bench_type"],
            "task_type": sample["task_type"], "second_response": sample["second_response"], "judgement": judgement,
            "score": score, "failed": j.failed, "error": j.error}


def _fbbench_summary(records: list[dict], mode: str) -> dict:
    if not records:
        return kit.summary(records, {}, {})
    m = bm.fbbench_metrics(records, mode=mode)
    names = ("overall", "error_correction", "response_maintenance")
    metrics = {k: m[k] for k in names if m[k] is not None} | {f"{k}_unrounded": m[f"{k}_unrounded"] for k in names
                                                               if m[k] is not None}
    by_category: dict[str, dict[str, float]] = defaultdict(dict)
    for bench_type, tasks in m["per_task"].items():
        for task, value in tasks.items():
            by_category[task]["error_correction" if bench_type == "Error Correction" else "response_maintenance"] = value
    return kit.summary(records, metrics, dict(sorted(by_category.items())), fbbench=m, decimals=_decimals(metrics, 4))
