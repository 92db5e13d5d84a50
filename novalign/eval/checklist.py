"""Judged evaluation suites (report section 5): CFBench, SysBench, FB-Bench, user experience, MT-Bench grading
and pairwise comparison. Each is a ``run_*(ctx: SuiteContext) -> dict`` (see :mod:`novalign.eval.suite_api`).

Every suite: asks the model (``ctx.respond``) or, in score-only mode (``ctx.respond is None``), takes the
responses from ``options["responses"]``; judges with ``ctx.judge`` through :func:`novalign.eval.judge.ask_judge`
(strict parsing, re-asks); writes one record per sample with ``judge_raw``; skips the ids in ``ctx.done`` and
includes them in the metrics. ``options["judgments"]`` (or ``"ratings"``) recomputes the metrics from
judgments already made, asking nobody. Work goes in chunks of ``options["chunk_size"]`` samples (default
32), so an interrupted run loses at most one chunk.

A judgment that fails after all re-asks is counted in ``num_failed``. For the checklist benchmarks it scores
0, as the official CFBench (``judge_parsing == "-1"``) and FB-Bench code do; for MT-Bench ratings, pairwise
verdicts and UX ratings it is left out of the means (there is no neutral value to put in its place).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval import benchmarks as bm
from novalign.eval.judge import (
    Judgment,
    ask_judge,
    load_template,
    parse_checklist,
    parse_pairwise,
    parse_rating,
    parse_ux,
    ratings_to_ux_records,
    ratings_to_verdicts,
    read_ratings,
    render,
)
from novalign.eval.official import (
    cfbench_judged_record,
    fbbench_judged_record,
    iter_json_items,
    read_answers,
    read_cfbench,
    read_fbbench,
    read_mtbench_judgments,
    read_prompts,
    read_sysbench,
    read_sysbench_judgments,
)
from novalign.eval.suite_api import SuiteContext

__all__ = ["run_cfbench", "run_fbbench", "run_mtbench", "run_pairwise", "run_sysbench", "run_ux"]

Unit = tuple[str, Callable[[str], Any]]  # one judge prompt and the parser of its answer


# ------------------------------------------------------------------------------------------ machinery


def _numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, start=1))


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _pending(ctx: SuiteContext, samples: list[dict]) -> list[dict]:
    return [s for s in samples if s["id"] not in ctx.done]


def _require(ctx: SuiteContext, what: str) -> None:
    if what == "judge" and ctx.judge is None:
        raise ValueError(f"suite {ctx.name!r} needs a judge model (the config's judge), or options.judgments")
    if what == "data" and ctx.data is None:
        raise ValueError(f"suite {ctx.name!r} needs a data file")


def _judge_all(ctx: SuiteContext, samples: list[dict], units: Callable[[dict], list[Unit]],
               finish: Callable[[dict, list[Judgment]], dict]) -> list[dict]:
    """Judge every sample (each has one or more units), write each sample's record as soon as it is complete."""
    _require(ctx, "judge")
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


def _replay(ctx: SuiteContext, records: list[dict]) -> list[dict]:
    """Score-only from existing judgments: write the records not already done; return all of them."""
    out = []
    for record in records:
        if record["id"] in ctx.done:
            out.append(ctx.done[record["id"]])
        else:
            ctx.write(record)
            out.append(record)
    return out


def _all_records(ctx: SuiteContext, new: list[dict], ids: Sequence[str]) -> list[dict]:
    fresh = {r["id"]: r for r in new}
    return [fresh[i] if i in fresh else ctx.done[i] for i in ids if i in fresh or i in ctx.done]


def _summary(records: list[dict], metrics: dict, by_category: dict, **extra: Any) -> dict:
    return {"metrics": metrics, "by_category": by_category, "num_samples": len(records),
            "num_failed": sum(bool(r.get("failed")) for r in records), **extra}


def _by_category(records: list[dict], score: Callable[[list[dict]], dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get("category", "all"))].append(r)
    return {c: score(g) for c, g in sorted(groups.items())}


def _responses(ctx: SuiteContext, chunk: list[dict], conversation: Callable[[dict], list[dict]],
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


def _chunk_size(ctx: SuiteContext) -> int:
    return max(1, int(ctx.options.get("chunk_size", 32)))


# ------------------------------------------------------------------------------------------- CFBench


def run_cfbench(ctx: SuiteContext) -> dict:
    """CFBench: judge each criterion of each sample; CSR / ISR / PSR for the easy, hard and full splits.

    Options: ``judgments`` (an official ``*_eval.json``: recompute only), ``responses`` (an official
    ``*_infer.json`` or ``{id, response}`` records: judge only), ``judge_attempts``, ``chunk_size``.
    """
    if "judgments" in ctx.options:
        records = _replay(ctx, [cfbench_judged_record(s) for s in read_cfbench(ctx.options["judgments"])])
        return _cfbench_summary(records)
    _require(ctx, "data")
    samples = read_cfbench(ctx.data)
    given = _cfbench_responses(ctx.options["responses"]) if "responses" in ctx.options else None
    template = load_template("cfbench", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, samples), _chunk_size(ctx)):
        replies = _responses(ctx, chunk, lambda s: [{"role": "user", "content": s["prompt"]}], given)
        for sample, reply in zip(chunk, replies):
            sample["response"] = reply

        def units(s: dict, t: str = template) -> list[Unit]:
            n = len(s["criteria"])
            prompt = render(t, prompt=s["prompt"], reference=s["reference"], response=s["response"],
                            criteria=_numbered([c[0] for c in s["criteria"]]), num_criteria=n)
            return [(prompt, lambda text, n=n: parse_checklist(text, n))]

        new += _judge_all(ctx, chunk, units, _cfbench_record)
    return _cfbench_summary(_all_records(ctx, new, [s["id"] for s in samples]))


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
        return _summary(records, {}, {})
    splits = bm.cfbench_metrics(records)
    metrics = {m: splits["full"][m] for m in ("CSR", "ISR", "PSR")}
    for split in ("easy", "hard"):
        for m in ("CSR", "ISR", "PSR"):
            if split in splits:
                metrics[f"{split}_{m}"] = splits[split][m]
    by_category = _by_category(records, lambda g: {m: v for m, v in bm.cfbench_metrics(g)["full"].items() if m != "num_samples"})
    return _summary(records, metrics, by_category, splits=splits)


# ------------------------------------------------------------------------------------------ SysBench


def run_sysbench(ctx: SuiteContext) -> dict:
    """SysBench: five user turns under one system message, each turn's criteria judged; CSR, ISR, SSR.

    Options: ``history`` = ``"model"`` (each turn sees the model's own earlier replies, the official default)
    or ``"gold"`` (each turn sees the data's ground-truth replies, ``eval_system_bench_with_gt.py``);
    ``judgments`` (an official ``*_eval.json``: recompute only); ``responses`` (an official ``*_infer.json``
    whose ``infer_results`` is the message list (model history) or one message list per turn (gold history));
    ``judge_attempts``, ``chunk_size``.
    """
    history = ctx.options.get("history", "model")
    if history not in ("model", "gold"):
        raise ValueError(f"suite {ctx.name!r}: options.history must be 'model' or 'gold', got {history!r}")
    if "judgments" in ctx.options:
        return _sysbench_summary(_replay(ctx, read_sysbench_judgments(ctx.options["judgments"])), history)
    _require(ctx, "data")
    sessions = read_sysbench(ctx.data)
    given = _sysbench_responses(ctx.options["responses"]) if "responses" in ctx.options else None
    template = load_template("sysbench", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, sessions), _chunk_size(ctx)):
        for session, replies in zip(chunk, _sysbench_replies(ctx, chunk, history, given)):
            session["replies"] = replies

        def units(s: dict, t: str = template) -> list[Unit]:
            out = []
            for k, turn in enumerate(s["turns"]):
                seen = s["replies"] if history == "model" else [x["gold"] for x in s["turns"]]
                past = "\n".join(f"<round-{i + 1}>\n<user>\n{s['turns'][i]['user']}\n</user>\n<assistant>\n{seen[i]}\n"
                                 f"</assistant>\n</round-{i + 1}>" for i in range(k)) or "(none)"
                n = len(turn["criteria"])
                prompt = render(t, system=s["system"], history=past, question=turn["user"], response=s["replies"][k],
                                criteria=_numbered([f"{c['content']} | {c['type']}" for c in turn["criteria"]]),
                                num_criteria=n)
                out.append((prompt, lambda text, n=n: parse_checklist(text, n)))
            return out

        new += _judge_all(ctx, chunk, units, _sysbench_record)
    return _sysbench_summary(_all_records(ctx, new, [s["id"] for s in sessions]), history)


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
        return _summary(records, {}, {}, history=history)
    by_category = _by_category(records, lambda g: {k: v for k, v in _sysbench_flat(g).items() if k in ("CSR", "ISR", "SSR")})
    return _summary(records, _sysbench_flat(records), by_category, history=history, sysbench=bm.sysbench_metrics(records))


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
        return _fbbench_summary(_replay(ctx, [fbbench_judged_record(path, s) for s in read_fbbench(path)]), mode)
    _require(ctx, "data")
    samples = read_fbbench(ctx.data)
    given = None
    if "responses" in ctx.options:
        given = {s["id"]: s.get("second_response") for s in read_fbbench(ctx.options["responses"])}
    template = load_template("fbbench", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, samples), _chunk_size(ctx)):
        replies = _responses(ctx, chunk, lambda s: [
            {"role": "user", "content": s["user_query"]}, {"role": "assistant", "content": s["origin_first_response"]},
            {"role": "user", "content": s["feedback"]}], given)
        for sample, reply in zip(chunk, replies):
            sample["second_response"] = reply

        def units(s: dict, t: str = template) -> list[Unit]:
            n = len(s["checklist"])
            prompt = render(t, query=s["user_query"], first_response=s["origin_first_response"], feedback=s["feedback"],
                            reference=s.get("reference_second_response") or "", second_response=s["second_response"],
                            criteria=_numbered([c[0] for c in s["checklist"]]), num_criteria=n)
            return [(prompt, lambda text, n=n: parse_checklist(text, n))]

        new += _judge_all(ctx, chunk, units, _fbbench_record)
    return _fbbench_summary(_all_records(ctx, new, [s["id"] for s in samples]), mode)


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
        return _summary(records, {}, {})
    m = bm.fbbench_metrics(records, mode=mode)
    metrics = {k: m[k] for k in ("overall", "error_correction", "response_maintenance") if m[k] is not None}
    by_category: dict[str, dict[str, float]] = defaultdict(dict)
    for bench_type, tasks in m["per_task"].items():
        for task, value in tasks.items():
            by_category[task]["error_correction" if bench_type == "Error Correction" else "response_maintenance"] = value
    return _summary(records, metrics, dict(sorted(by_category.items())), fbbench=m)


# ------------------------------------------------- prompts for UX, MT-Bench grading and pairwise comparison


def _ask_turns(ctx: SuiteContext, respond: Callable | None, chunk: list[dict], given: dict | None) -> list[list[str]]:
    """Replies to every turn of each sample; turn k is asked with the model's own replies to turns < k."""
    if respond is None:
        if given is None:
            raise ValueError(f"suite {ctx.name!r}: no model to ask and no responses file")
        out = []
        for s in chunk:
            reply = given.get(s["id"])
            replies = reply if isinstance(reply, list) else [reply]
            if reply is None or len(replies) != len(s["turns"]):
                raise ValueError(f"suite {ctx.name!r}: the responses file lacks {len(s['turns'])} replies for id {s['id']}")
            out.append([str(r) for r in replies])
        return out
    replies: list[list[str]] = [[] for _ in chunk]
    for k in range(max(len(s["turns"]) for s in chunk)):
        active = [i for i, s in enumerate(chunk) if k < len(s["turns"])]
        convs = []
        for i in active:
            messages = []
            for user, reply in zip(chunk[i]["turns"][:k], replies[i]):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            convs.append(messages + [{"role": "user", "content": chunk[i]["turns"][k]}])
        for i, reply in zip(active, respond(convs)):
            replies[i].append(reply)
    return replies


def _transcript(turns: list[str], replies: list[str], upto: int) -> str:
    lines = []
    for k in range(upto + 1):
        lines.append(f"User: {turns[k]}")
        if k < upto:
            lines.append(f"Assistant: {replies[k]}")
    return "\n\n".join(lines)


def _given(ctx: SuiteContext, option: str) -> dict | None:
    return read_answers(ctx.options[option]) if option in ctx.options else None


# ------------------------------------------------------------------------------------- user experience


def run_ux(ctx: SuiteContext) -> dict:
    """User-experience evaluation (report section 5.1): each answer rated pass/fail on intent comprehension,
    result accuracy, language quality and safety; a sample passes only if all pass; pass rate per capability.

    Options: ``responses`` (``{id, response}`` records: judge only); ``ratings`` (a ratings JSONL of
    human or LLM dimension ratings: recompute only, for ``options.model`` or the model under test);
    ``dimensions`` (default the four above); ``judge_attempts``, ``chunk_size``. Failed judgments are
    counted and left out of the pass rate.
    """
    dimensions = tuple(ctx.options.get("dimensions", bm.UX_DIMENSIONS))
    if "ratings" in ctx.options:
        rows = ratings_to_ux_records(read_ratings(ctx.options["ratings"]), ctx.options.get("model", ctx.model_name))
        records = [{**r, "id": f"{r['id']}@{r['rater']}", "category": r["capability"], "failed": False} for r in rows]
        return _ux_summary(_replay(ctx, records), dimensions)
    _require(ctx, "data")
    samples = read_prompts(ctx.data)
    given = _given(ctx, "responses")
    template = load_template("ux", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, samples), _chunk_size(ctx)):
        for s, replies in zip(chunk, _ask_turns(ctx, ctx.respond, chunk, given)):
            s["replies"] = replies

        def units(s: dict, t: str = template) -> list[Unit]:
            last = len(s["turns"]) - 1
            prompt = render(t, question=_transcript(s["turns"], s["replies"], last), answer=s["replies"][last],
                            dimensions=", ".join(dimensions))
            return [(prompt, lambda text: parse_ux(text, dimensions))]

        def finish(s: dict, js: list[Judgment]) -> dict:
            return {"id": s["id"], "category": s["category"], "capability": s["category"], "response": s["replies"][-1],
                    "dimensions": js[0].parsed, "failed": js[0].failed, "error": js[0].error}

        new += _judge_all(ctx, chunk, units, finish)
    return _ux_summary(_all_records(ctx, new, [s["id"] for s in samples]), dimensions)


def _ux_summary(records: list[dict], dimensions: Sequence[str]) -> dict:
    rated = [r for r in records if not r.get("failed")]
    if not rated:
        return _summary(records, {}, {})
    result = bm.ux_pass_rate(rated, dimensions)
    metrics = {"pass_rate": result["pass_rate"]}
    metrics |= {f"{d}_pass": sum(bool(r["dimensions"][d]) for r in rated) / len(rated) for d in dimensions}
    return _summary(records, metrics, {c: {"pass_rate": v} for c, v in result["per_capability"].items()})


# ------------------------------------------------------------------------------------ MT-Bench grading


def run_mtbench(ctx: SuiteContext) -> dict:
    """Single-answer grading on a 1-10 scale, MT-Bench style (Zheng et al. 2023): every turn's reply is graded
    given the conversation so far; the score is the mean over graded turns (``score_turn<k>`` per turn).

    Options: ``responses`` (``{id, response}``, ``{id, responses: [one per turn]}`` or a FastChat
    ``model_answer`` file: judge only); ``judgments`` (a FastChat ``gpt-4_single.jsonl``: recompute only, for
    ``options.model`` or the model under test; score -1 counts as a failed judgment); ``judge_attempts``,
    ``chunk_size``. Data: ``question.jsonl`` records (``question_id``, ``category``,
    ``turns``, optional ``reference``) or ``{id, prompt}``.
    """
    if "judgments" in ctx.options:
        return _mtbench_summary(_replay(ctx, _mtbench_judged(ctx)))
    _require(ctx, "data")
    samples = read_prompts(ctx.data)
    given = _given(ctx, "responses")
    template = load_template("mtbench", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, samples), _chunk_size(ctx)):
        for s, replies in zip(chunk, _ask_turns(ctx, ctx.respond, chunk, given)):
            s["replies"] = replies

        def units(s: dict, t: str = template) -> list[Unit]:
            return [(render(t, conversation=_transcript(s["turns"], s["replies"], k), answer=s["replies"][k],
                            reference=s["references"][k] or "(none)"), parse_rating) for k in range(len(s["turns"]))]

        def finish(s: dict, js: list[Judgment]) -> dict:
            ratings = [None if j.failed else j.parsed for j in js]
            ok = [r for r in ratings if r is not None]
            return {"id": s["id"], "category": s["category"], "responses": s["replies"], "ratings": ratings,
                    "score": sum(ok) / len(ok) if ok else None, "failed": any(j.failed for j in js),
                    "error": next((j.error for j in js if j.failed), None)}

        new += _judge_all(ctx, chunk, units, finish)
    return _mtbench_summary(_all_records(ctx, new, [s["id"] for s in samples]))


def _mtbench_judged(ctx: SuiteContext) -> list[dict]:
    """Records from a FastChat single-answer judgment file (categories from the question file, if given)."""
    scores = read_mtbench_judgments(ctx.options["judgments"], ctx.options.get("model", ctx.model_name))
    category = {s["id"]: s["category"] for s in read_prompts(ctx.data)} if ctx.data is not None else {}
    records = []
    for qid, turns in scores.items():
        ratings = [turns.get(t) for t in range(1, max(turns) + 1)]
        ok = [r for r in ratings if r is not None]
        records.append({"id": qid, "category": category.get(qid, "all"), "ratings": ratings,
                        "score": sum(ok) / len(ok) if ok else None, "failed": len(ok) < len(ratings), "judge_raw": []})
    return records


def _mean_rating(records: list[dict]) -> dict[str, float]:
    ratings = [x for r in records for x in r["ratings"] if x is not None]
    return {"score": sum(ratings) / len(ratings)} if ratings else {}


def _mtbench_summary(records: list[dict]) -> dict:
    metrics = _mean_rating(records)
    for k in range(max((len(r["ratings"]) for r in records), default=0)):
        turn = [r["ratings"][k] for r in records if k < len(r["ratings"]) and r["ratings"][k] is not None]
        if turn:
            metrics[f"score_turn{k + 1}"] = sum(turn) / len(turn)
    return _summary(records, metrics, _by_category(records, _mean_rating))


# ----------------------------------------------------------------------------------- pairwise with swap


def run_pairwise(ctx: SuiteContext) -> dict:
    """Pairwise comparison against a baseline with position swapping: each sample is judged twice, the model's
    answer first and then the baseline's first, and :func:`~novalign.eval.benchmarks.combine_position_swap`
    keeps a verdict only if both orders agree. Reports the win rate (ties count half, as AlpacaEval and
    Arena-Hard count them) and GSB (good / same / bad and (G - B) / total, report section 5.1).

    Options: ``baseline`` (a peer model's name in the config) or ``baseline_responses`` (``{id, response}``);
    ``responses`` (the model's answers: judge only); ``ratings`` (a ratings JSONL of pairwise rows:
    recompute GSB only, model = ``options.model`` or the model under test vs ``options.baseline``);
    ``judge_attempts``, ``chunk_size``.
    """
    model = ctx.options.get("model", ctx.model_name)
    if "ratings" in ctx.options:
        baseline = ctx.options.get("baseline")
        if not baseline:
            raise ValueError(f"suite {ctx.name!r}: options.baseline names the other model of the ratings")
        verdicts = ratings_to_verdicts(read_ratings(ctx.options["ratings"]), model, baseline)
        return _pairwise_summary(_replay(ctx, [{"id": f"{v['id']}@{v['rater']}", "category": "all",
                                                "verdict": v["verdict"], "failed": False} for v in verdicts]))
    _require(ctx, "data")
    samples = read_prompts(ctx.data)
    given, baseline_given = _given(ctx, "responses"), _given(ctx, "baseline_responses")
    peer = ctx.options.get("baseline")
    if baseline_given is None and peer not in ctx.peers:
        raise ValueError(f"suite {ctx.name!r}: options.baseline must name a peer model ({sorted(ctx.peers)}) "
                         "or options.baseline_responses a file")
    template = load_template("pairwise", ctx.lang, ctx.template_dir)
    new: list[dict] = []
    for chunk in _chunks(_pending(ctx, samples), _chunk_size(ctx)):
        mine = _ask_turns(ctx, ctx.respond, chunk, given)
        theirs = _ask_turns(ctx, None if baseline_given is not None else ctx.peers[peer], chunk, baseline_given)
        for s, a, b in zip(chunk, mine, theirs):
            s["answer"], s["baseline"] = a[-1], b[-1]

        def units(s: dict, t: str = template) -> list[Unit]:
            question = _transcript(s["turns"], [], 0) if len(s["turns"]) == 1 else "\n\n".join(s["turns"])
            return [(render(t, question=question, answer_a=s["answer"], answer_b=s["baseline"]), parse_pairwise),
                    (render(t, question=question, answer_a=s["baseline"], answer_b=s["answer"]), parse_pairwise)]

        new += _judge_all(ctx, chunk, units, _pairwise_record)
    return _pairwise_summary(_all_records(ctx, new, [s["id"] for s in samples]))


_FIRST_SHOWN = {"A": "good", "B": "bad", "tie": "same"}  # a verdict on the answer shown first


def _pairwise_record(sample: dict, judgments: list[Judgment]) -> dict:
    failed = any(j.failed for j in judgments)
    verdict = None if failed else bm.combine_position_swap(_FIRST_SHOWN[judgments[0].parsed], _FIRST_SHOWN[judgments[1].parsed])
    return {"id": sample["id"], "category": sample["category"], "response": sample["answer"],
            "baseline_response": sample["baseline"], "orders": [j.parsed for j in judgments], "verdict": verdict,
            "failed": failed, "error": next((j.error for j in judgments if j.failed), None)}


def _gsb_metrics(records: list[dict]) -> dict[str, float]:
    verdicts = [r["verdict"] for r in records if not r.get("failed")]
    if not verdicts:
        return {}
    g = bm.gsb(verdicts)
    total = g["total"]
    return {"win_rate": (g["good"] + 0.5 * g["same"]) / total, "gsb_score": g["score"], "good": g["good"] / total,
            "same": g["same"] / total, "bad": g["bad"] / total}


def _pairwise_summary(records: list[dict]) -> dict:
    return _summary(records, _gsb_metrics(records), _by_category(records, _gsb_metrics))
