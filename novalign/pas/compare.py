"""``novalign pas compare``: one upstream model with vs without PAS on a prompt set (report sections 2.3, 5.1).

Each prompt record names the verifiable checks its answer must pass (IFEval instruction ids from
:data:`novalign.eval.ifeval.INSTRUCTIONS`, e.g. ``detectable_format:json_format``)::

    {"prompt": "List the key facts about Mars.", "checks": [{"id": "detectable_format:json_format"}], "capability": "data"}

The upstream answers every prompt twice -- bare and PAS-augmented -- with the same sampling settings.
Pass rate (a sample passes only if every check passes) comes from :func:`~novalign.eval.benchmarks.ux_pass_rate`
per condition and capability; GSB of with-PAS against without-PAS from :func:`~novalign.eval.benchmarks.gsb`,
with the verifiers as judge (:func:`verifier_gsb`) and, when the config names a ``judge`` model, also with an
LLM judge: the evaluation suite's pairwise comparison, asked twice with the answers swapped
(:func:`novalign.eval.graded.pairwise_units`); a judgment that stays malformed after the re-asks is counted as
failed, not guessed. A prompt whose upstream call failed is reported, not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from novalign.data.io import DataError, iter_records, write_json_atomic, write_jsonl
from novalign.eval.benchmarks import gsb, ux_pass_rate
from novalign.eval.ifeval import INSTRUCTIONS, check_instruction

__all__ = ["read_compare_prompts", "run_compare", "verifier_gsb"]


def read_compare_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompt records with their checks; errors name the file, line and field."""
    out = []
    for line, record in iter_records(path):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(path, line, "prompt", "must be a non-empty string")
        checks = record.get("checks")
        if not isinstance(checks, list) or not checks:
            raise DataError(path, line, "checks", "must be a non-empty list of {id, kwargs?}")
        for j, check in enumerate(checks):
            if not isinstance(check, dict) or check.get("id") not in INSTRUCTIONS:
                raise DataError(path, line, f"checks[{j}].id", f"unknown verifier {check.get('id') if isinstance(check, dict) else check!r}")
        out.append({"prompt": prompt, "checks": checks, "capability": str(record.get("capability", "all")),
                    "search_keywords": record.get("search_keywords") or [],
                    "search_results": record.get("search_results") or []})
    if not out:
        raise DataError(path, None, None, "no prompts")
    return out


def verifier_gsb(with_pas: bool, without_pas: bool) -> str:
    """GSB verdict of the with-PAS answer from the verifiers: passes where the other fails -> good, the
    reverse -> bad, both pass or both fail -> same."""
    if with_pas == without_pas:
        return "same"
    return "good" if with_pas else "bad"


def _passes(response: str, checks: Sequence[dict]) -> bool:
    return all(check_instruction(c["id"], response, c.get("kwargs")) for c in checks)


def run_compare(cfg, upstream=None, augmenter=None, console_print: Callable[[str], None] = print) -> dict[str, Any]:
    """Answer every prompt without and with PAS; write ``cfg.output`` (per prompt) and ``<output>.summary.json``."""
    from novalign.llm import ChatRequest, LLMClient
    from novalign.pas.augment import PromptAugmenter

    prompts = read_compare_prompts(cfg.prompts)
    own_up, own_pas = upstream is None, augmenter is None
    upstream = upstream or LLMClient.from_config(cfg.upstream)
    augmenter = augmenter or PromptAugmenter.from_config(cfg.pas_llm, cfg.augment)
    try:
        augmented = augmenter.augment_many(prompts, progress=True)
        requests = []
        for i, item in enumerate(prompts):
            for condition, text in (("without", item["prompt"]), ("with", augmented[i].augmented)):
                requests.append(ChatRequest(messages=[{"role": "user", "content": text}], temperature=0.0,
                                            max_tokens=cfg.max_tokens, tag=(i, condition)))
        answers: dict[tuple[int, str], Any] = {}
        for result in upstream.batch(requests):
            answers[result.request.tag] = result
    finally:
        if own_up:
            upstream.close()
        if own_pas:
            augmenter.close()
    rows, scored = [], {"with": [], "without": []}
    verdicts = []
    for i, item in enumerate(prompts):
        row = {"prompt": item["prompt"], "capability": item["capability"], "complement": augmented[i].complement,
               "pas_error": augmented[i].error}
        results = {c: answers[(i, c)] for c in ("without", "with")}
        if not all(r.ok for r in results.values()):
            row["error"] = "; ".join(f"{c}: {r}" for c, r in results.items() if not r.ok)
            rows.append(row)
            continue
        ok = {c: _passes(r.text, item["checks"]) for c, r in results.items()}
        for c in ("without", "with"):
            row[f"response_{c}"], row[f"pass_{c}"] = results[c].text, ok[c]
            scored[c].append({"capability": item["capability"], "dimensions": {"checks": ok[c]}})
        verdicts.append(verifier_gsb(ok["with"], ok["without"]))
        rows.append(row)
    if cfg.judge is not None:
        summary_judge = _judge_gsb(cfg, prompts, [r for r in rows if "error" not in r])
    output = Path(cfg.output)
    write_jsonl(output, rows)
    summary: dict[str, Any] = {"prompts": len(prompts), "scored": len(verdicts), "failed": len(prompts) - len(verdicts)}
    if verdicts:
        summary |= {"without_pas": ux_pass_rate(scored["without"], ("checks",)),
                    "with_pas": ux_pass_rate(scored["with"], ("checks",)), "gsb": gsb(verdicts)}
        console_print(f"pass rate without PAS {summary['without_pas']['pass_rate']:.1%}, with PAS "
                      f"{summary['with_pas']['pass_rate']:.1%}; GSB {summary['gsb']['score']:+.3f} "
                      f"(G {summary['gsb']['good']} / S {summary['gsb']['same']} / B {summary['gsb']['bad']})")
    if cfg.judge is not None:
        summary["gsb_judge"] = summary_judge
        if summary_judge["total"]:
            console_print(f"LLM judge GSB {summary_judge['score']:+.3f} over {summary_judge['total']} prompts "
                          f"({summary_judge['num_failed']} judgments failed)")
    write_json_atomic(output.with_name(output.name + ".summary.json"), summary)
    return summary


def _judge_gsb(cfg, prompts: list[dict], rows: list[dict]) -> dict[str, Any]:
    """With-PAS vs without-PAS by an LLM judge, position-swapped; adds ``judge_verdict`` and ``judge_raw`` to
    each row and returns GSB over the judged rows plus the count of failed judgments."""
    from novalign.eval.graded import pairwise_units, pairwise_verdict
    from novalign.eval.judge import ask_judge, load_template
    from novalign.llm import LLMClient

    template = load_template("pairwise", cfg.judge_lang)
    units = [u for r in rows for u in pairwise_units(template, r["prompt"], r["response_with"], r["response_without"])]
    with LLMClient.from_config(cfg.judge) as judge:
        judgments = ask_judge(judge, [u[0] for u in units], [u[1] for u in units], attempts=cfg.judge_attempts,
                              lang=cfg.judge_lang, progress=cfg.judge.progress)
    verdicts = []
    for k, row in enumerate(rows):
        pair = judgments[2 * k:2 * k + 2]
        row["judge_verdict"] = pairwise_verdict(pair)
        row["judge_raw"] = [raw for j in pair for raw in j.raw]
        if row["judge_verdict"] is not None:
            verdicts.append(row["judge_verdict"])
    empty = {"good": 0, "same": 0, "bad": 0, "total": 0, "score": 0.0}
    return (gsb(verdicts) if verdicts else empty) | {"num_failed": len(rows) - len(verdicts)}
