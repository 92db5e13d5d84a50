"""Graded evaluation suites (report section 5.1 and the common judge modes): user-experience pass rate over
four dimensions, MT-Bench-style single-answer grading (1-10) and pairwise comparison against a baseline with
position swapping (win rate and GSB). Each is a ``run_*(ctx: SuiteContext) -> dict``
(see :mod:`novalign.eval.suite_api`).

As in :mod:`novalign.eval.checklist`: the model is asked, or responses come from ``options["responses"]``;
``options["ratings"]`` / ``options["judgments"]`` recompute the metrics from ratings or judgments already made
(human or LLM). A judgment that fails after all re-asks is counted in ``num_failed`` and left out of the means:
a rating or a verdict has no neutral value to put in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from novalign.eval import benchmarks as bm
from novalign.eval import suite_kit as kit
from novalign.eval.judge import (
    Judgment,
    load_template,
    parse_pairwise,
    parse_rating,
    parse_ux,
    ratings_to_ux_records,
    ratings_to_verdicts,
    read_ratings,
    render,
)
from novalign.eval.official import read_answers, read_mtbench_judgments, read_prompts
from novalign.eval.suite_api import SuiteContext

__all__ = ["pairwise_units", "pairwise_verdict", "run_mtbench", "run_pairwise", "run_ux"]


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


def _judge_conversations(ctx: SuiteContext, template_name: str, units: Callable[[dict, str], list[kit.Unit]],
                         finish: Callable[[dict, list[Judgment]], dict]) -> list[dict]:
    """The set-up UX and MT-Bench share: read the data, then :func:`~novalign.eval.suite_kit.judge_samples` with
    every turn's reply asked (or looked up) into ``s["replies"]`` and ``units(s, template)`` judged."""
    kit.require(ctx, "data")
    samples = read_prompts(ctx.data)
    given = _given(ctx, "responses")
    template = load_template(template_name, ctx.lang, ctx.template_dir)

    def answer(chunk: list[dict]) -> None:
        for s, replies in zip(chunk, _ask_turns(ctx, ctx.respond, chunk, given)):
            s["replies"] = replies

    return kit.judge_samples(ctx, samples, answer, lambda s: units(s, template), finish)


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
        return _ux_summary(kit.replay(ctx, records), dimensions)

    def units(s: dict, t: str) -> list[kit.Unit]:
        last = len(s["turns"]) - 1
        prompt = render(t, question=_transcript(s["turns"], s["replies"], last), answer=s["replies"][last],
                        dimensions=", ".join(dimensions))
        return [(prompt, lambda text: parse_ux(text, dimensions))]

    def finish(s: dict, js: list[Judgment]) -> dict:
        return {"id": s["id"], "category": s["category"], "capability": s["category"], "response": s["replies"][-1],
                "dimensions": js[0].parsed, "failed": js[0].failed, "error": js[0].error}

    return _ux_summary(_judge_conversations(ctx, "ux", units, finish), dimensions)


def _ux_summary(records: list[dict], dimensions: Sequence[str]) -> dict:
    rated = [r for r in records if not r.get("failed")]
    if not rated:
        return kit.summary(records, {}, {})
    result = bm.ux_pass_rate(rated, dimensions)
    metrics = {"pass_rate": result["pass_rate"]}
    metrics |= {f"{d}_pass": sum(bool(r["dimensions"][d]) for r in rated) / len(rated) for d in dimensions}
    return kit.summary(records, metrics, {c: {"pass_rate": v} for c, v in result["per_capability"].items()})


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
        return _mtbench_summary(kit.replay(ctx, _mtbench_judged(ctx)))

    def units(s: dict, t: str) -> list[kit.Unit]:
        return [(render(t, conversation=_transcript(s["turns"], s["replies"], k), answer=s["replies"][k],
                        reference=s["references"][k] or "(none)"), parse_rating) for k in range(len(s["turns"]))]

    def finish(s: dict, js: list[Judgment]) -> dict:
        ratings = [None if j.failed else j.parsed for j in js]
        ok = [r for r in ratings if r is not None]
        return {"id": s["id"], "category": s["category"], "responses": s["replies"], "ratings": ratings,
                "score": sum(ok) / len(ok) if ok else None, "failed": any(j.failed for j in js),
                "error": next((j.error for j in js if j.failed), None)}

    return _mtbench_summary(_judge_conversations(ctx, "mtbench", units, finish))


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
    return kit.summary(records, metrics, kit.by_category(records, _mean_rating))


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
        return _pairwise_summary(kit.replay(ctx, [{"id": f"{v['id']}@{v['rater']}", "category": "all",
                                                "verdict": v["verdict"], "failed": False} for v in verdicts]))
    kit.require(ctx, "data")
    samples = read_prompts(ctx.data)
    given, baseline_given = _given(ctx, "responses"), _given(ctx, "baseline_responses")
    peer = ctx.options.get("baseline")
    if baseline_given is None and peer not in ctx.peers:
        raise ValueError(f"suite {ctx.name!r}: options.baseline must name a peer model ({sorted(ctx.peers)}) "
                         "or options.baseline_responses a file")
    template = load_template("pairwise", ctx.lang, ctx.template_dir)

    def answer(chunk: list[dict]) -> None:
        mine = _ask_turns(ctx, ctx.respond, chunk, given)
        theirs = _ask_turns(ctx, None if baseline_given is not None else ctx.peers[peer], chunk, baseline_given)
        for s, a, b in zip(chunk, mine, theirs):
            s["answer"], s["baseline"] = a[-1], b[-1]

    def units(s: dict) -> list[kit.Unit]:
        question = _transcript(s["turns"], [], 0) if len(s["turns"]) == 1 else "\n\n".join(s["turns"])
        return pairwise_units(template, question, s["answer"], s["baseline"])

    return _pairwise_summary(kit.judge_samples(ctx, samples, answer, units, _pairwise_record))


_FIRST_SHOWN = {"A": "good", "B": "bad", "tie": "same"}  # a verdict on the answer shown first


def pairwise_units(template: str, question: str, answer: str, baseline: str) -> list[kit.Unit]:
    """The two judge prompts of one position-swapped comparison: the answer shown first, then the baseline
    shown first (judge them with :func:`novalign.eval.judge.ask_judge`, combine with :func:`pairwise_verdict`)."""
    return [(render(template, question=question, answer_a=answer, answer_b=baseline), parse_pairwise),
            (render(template, question=question, answer_a=baseline, answer_b=answer), parse_pairwise)]


def pairwise_verdict(judgments: Sequence[Judgment]) -> str | None:
    """GSB verdict of the answer over the baseline from the two judgments of :func:`pairwise_units`
    (``good`` / ``same`` / ``bad``; the orders must agree, else ``same``); None when a judgment failed."""
    if any(j.failed for j in judgments):
        return None
    return bm.combine_position_swap(_FIRST_SHOWN[judgments[0].parsed], _FIRST_SHOWN[judgments[1].parsed])


def _pairwise_record(sample: dict, judgments: list[Judgment]) -> dict:
    failed = any(j.failed for j in judgments)
    verdict = pairwise_verdict(judgments)
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
    return kit.summary(records, _gsb_metrics(records), kit.by_category(records, _gsb_metrics))
