"""MT-Bench pairwise grading from FastChat's judgment files, scored as ``fastchat/llm_judge/show_result.py``.

A pairwise judgment file (``data/mt_bench/model_judgment/gpt-4_pair.jsonl``) has one line per question, turn
and model pair: ``{question_id, model_1, model_2, g1_winner, g2_winner, judge, turn, ...}``. The judge saw the
two answers in both orders (game 1 and game 2, position swap); ``g1_winner`` / ``g2_winner`` are
``"model_1"``, ``"model_2"``, ``"tie"`` or ``"error"``. ``display_result_pairwise``:

- drops lines where either game is an ``error``;
- ``pairwise-baseline`` keeps only the lines with the baseline (default ``gpt-3.5-turbo``);
  ``pairwise-all`` keeps every line;
- a line is a tie for both models when game 1 is a tie or the two games disagree, else a win for the
  winner and a loss for the other;
- per model: ``win_rate = win / n``, ``loss_rate = loss / n``, ``win_rate_adjusted = (win + tie / 2) / n``,
  the baseline itself left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError, iter_records
from novalign.eval.suite_api import SuiteContext

__all__ = ["pairwise_rates", "read_pairwise_judgments", "run_mtbench_pairwise"]

_WINNERS = ("model_1", "model_2", "tie", "error")


def read_pairwise_judgments(path: str | Path) -> list[dict]:
    """Lines of a FastChat pairwise judgment file, checked.

    Raises:
        DataError: naming file, line and field: a missing model name or question id, or a winner other than
            ``model_1`` / ``model_2`` / ``tie`` / ``error``.
    """
    rows = []
    for line, rec in iter_records(path):
        for name in ("model_1", "model_2"):
            if not isinstance(rec.get(name), str):
                raise DataError(path, line, name, "missing or not a string")
        if "question_id" not in rec:
            raise DataError(path, line, "question_id", "missing")
        for name in ("g1_winner", "g2_winner"):
            if rec.get(name) not in _WINNERS:
                raise DataError(path, line, name, f"expected one of {_WINNERS}, got {rec.get(name)!r}")
        rows.append({k: rec.get(k) for k in ("question_id", "model_1", "model_2", "g1_winner", "g2_winner", "turn")})
    return rows


def pairwise_rates(rows: Sequence[dict], baseline: str | None = "gpt-3.5-turbo") -> dict[str, dict[str, float]]:
    """``{model: {win, loss, tie, win_rate, loss_rate, win_rate_adjusted}}`` as ``display_result_pairwise``.

    ``baseline=None`` is the ``pairwise-all`` mode. Example (baseline b): (m, b) g1 model_1 / g2 model_1 -> m
    wins; (m, b) g1 model_1 / g2 model_2 -> games disagree, a tie; (b, m) tie -> a tie; (m, b) g1 error ->
    dropped. m: win 1, tie 2 of 3 -> win_rate 1/3, loss_rate 0, adjusted (1 + 1) / 3 = 2/3.
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "loss": 0, "tie": 0})
    for row in rows:
        if "error" in (row["g1_winner"], row["g2_winner"]):
            continue
        if baseline is not None and baseline not in (row["model_1"], row["model_2"]):
            continue
        if row["g1_winner"] == "tie" or row["g1_winner"] != row["g2_winner"]:
            counts[row["model_1"]]["tie"] += 1
            counts[row["model_2"]]["tie"] += 1
            continue
        winner, loser = ((row["model_1"], row["model_2"]) if row["g1_winner"] == "model_1"
                         else (row["model_2"], row["model_1"]))
        counts[winner]["win"] += 1
        counts[loser]["loss"] += 1
    out = {}
    for model, c in sorted(counts.items()):
        if model == baseline:
            continue
        n = c["win"] + c["loss"] + c["tie"]
        out[model] = {**c, "win_rate": c["win"] / n, "loss_rate": c["loss"] / n,
                      "win_rate_adjusted": (c["win"] + 0.5 * c["tie"]) / n}
    return out


def run_mtbench_pairwise(ctx: SuiteContext) -> dict[str, Any]:
    """Re-score a FastChat pairwise judgment file (``options.judgments``) against ``options.baseline``
    (default ``gpt-3.5-turbo``; ``null`` for ``pairwise-all``). Metrics: the config model's rates (or the only
    model's); ``by_category``: every model's. Without ``options.judgments`` the pairs are judged now
    (:func:`novalign.eval.mtbench_pair_judge.judge_mtbench_pairs`: ``data`` the question file, answers from
    ``options.responses`` / ``options.baseline_answers`` or the model under test / the peer named ``baseline``)."""
    if "judgments" not in ctx.options:
        from novalign.eval.mtbench_pair_judge import judge_mtbench_pairs

        baseline = ctx.options.get("baseline", "gpt-3.5-turbo")
        if baseline is None:
            raise ValueError(f"suite {ctx.name!r}: judging new pairs needs options.baseline (the model compared with)")
        rows = judge_mtbench_pairs(ctx, baseline)
        return _pairwise_summary(ctx, rows, pairwise_rates(rows, baseline))
    rows = read_pairwise_judgments(ctx.options["judgments"])
    rates = pairwise_rates(rows, ctx.options.get("baseline", "gpt-3.5-turbo"))
    for i, row in enumerate(rows):
        key = f"{row['model_1']}|{row['model_2']}|{row['question_id']}|{row.get('turn')}|{i}"
        if key not in ctx.done:
            ctx.write({"id": key, "category": f"{row['model_1']} vs {row['model_2']}",
                       "failed": "error" in (row["g1_winner"], row["g2_winner"]), **row})
    return _pairwise_summary(ctx, rows, rates)


def _pairwise_summary(ctx: SuiteContext, rows: Sequence[dict], rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    main = ctx.model_name if ctx.model_name in rates else (next(iter(rates)) if len(rates) == 1 else None)
    keys = ("win_rate", "loss_rate", "win_rate_adjusted")
    return {"metrics": {k: rates[main][k] for k in keys} if main else {},
            "by_category": {m: {k: r[k] for k in keys} for m, r in rates.items()},
            "num_samples": len(rows), "num_failed": sum("error" in (r["g1_winner"], r["g2_winner"]) for r in rows)}
