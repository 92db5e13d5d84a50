"""Scores of the checklist-judged benchmarks and of user-experience evaluation (report section 5).

Pure functions over judgments that were already made (by an LLM judge or by people); no model is called
here. Each rule follows the benchmark authors' published evaluation code, cited per function:

- CFBench (Zhang et al. 2024, arXiv:2408.01122): CSR, ISR, PSR per sample, averaged over samples, for the
  easy, hard and full splits (``PKU-Baichuan-MLSystemLab/CFBench:code/evalaute.py``, ``_score_compute``).
- SysBench (Qin et al. 2024, arXiv:2408.10943): CSR pooled over constraints (and per constraint type), ISR
  over turns (and per aligned / misaligned turn), SSR over sessions (and R1..R5 per turn)
  (``PKU-Baichuan-MLSystemLab/SysBench:plot/tab6_csr_full.py``, ``tab3_align.py``, ``tab4_turn.py``).
- FB-Bench (Li et al. 2024): weighted checklists (error correction) and any-of checklists (response
  maintenance) (``PKU-Baichuan-MLSystemLab/FB-Bench:gen_judgment.py`` ``get_score``, ``show_results.py``).
- Section 5.1: pass rate (a sample passes only if every dimension passes) and GSB with position swapping.

All rates are fractions in [0, 1]; the official tables print them times 100.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CFBENCH_PRIMARY",
    "CFBENCH_SECONDARY",
    "UX_DIMENSIONS",
    "cfbench_metrics",
    "cfbench_sample_scores",
    "combine_position_swap",
    "fbbench_checklist_score",
    "fbbench_metrics",
    "gsb",
    "sysbench_csr",
    "sysbench_csr_by_type",
    "sysbench_isr",
    "sysbench_isr_by_alignment",
    "sysbench_metrics",
    "sysbench_ssr",
    "sysbench_ssr_by_turn",
    "ux_pass_rate",
]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _round2(x: float) -> float:
    """``round(np.float64(x), 2)`` as CFBench computes it: scale, round half to even, unscale."""
    return round(x * 100) / 100


# ----------------------------------------------------------------------------------------------- CFBench

CFBENCH_PRIMARY = "主需"  # "primary requirement", as in the official data's criteria lists
CFBENCH_SECONDARY = "次需"  # "secondary requirement"
_PRIORITY = {CFBENCH_PRIMARY: True, "primary": True, CFBENCH_SECONDARY: False, "secondary": False}


def cfbench_sample_scores(scores: Sequence[float | str] | None, priorities: Sequence[str]) -> dict[str, float]:
    """CSR, ISR and PSR of one CFBench sample, as ``_score_compute`` in the CFBench repository.

    - CSR: the mean of the 0/1 criterion scores, rounded to 2 decimals as the official code does.
    - ISR: 1 if every criterion is met (CSR == 1), else 0.
    - PSR: 0 if any primary criterion fails. Otherwise: all primary -> 1; all secondary -> 1 iff CSR > 0.8;
      mixed -> 1 iff ``0.5 + 0.5 * round(mean(secondary scores), 2) > 0.8``, i.e. the primary half counts
      as fully met and the secondary half must bring the total above 0.8 (secondary mean above 0.6).

    A judgment that could not be parsed (``scores=None``) scores 0 on all three, as the official
    ``judge_parsing == "-1"`` branch does. As there, ISR and the all-secondary test read the *rounded* CSR
    (199 of 200 criteria met would round to 1.0; real samples have a handful of criteria).

    Worked examples (1 = met)::

        all primary  [1, 1] -> CSR 1.0,  ISR 1, PSR 1;  [1, 0] -> CSR 0.5, ISR 0, PSR 0
        all secondary [1, 1, 1, 1, 0] -> CSR 0.8 (not > 0.8) -> PSR 0;  [1]*9 + [0] -> CSR 0.9 -> PSR 1
        mixed P=[1], S=[1, 1, 0]  -> secondary mean 0.67, 0.5 + 0.335 = 0.835 > 0.8 -> PSR 1, CSR 0.75, ISR 0
        mixed P=[1], S=[1, 0]     -> 0.5 + 0.25 = 0.75 -> PSR 0
        mixed P=[0], S=[1, 1]     -> a primary fails -> PSR 0

    Args:
        scores: One score per criterion, 0/1 (numbers or the strings ``"0"``/``"1"`` of the official output).
        priorities: One priority per criterion: ``"主需"``/``"primary"`` or ``"次需"``/``"secondary"``.

    Raises:
        ValueError: lengths differ, no criteria, a score other than 0/1, or an unknown priority.
    """
    if scores is None:
        return {"CSR": 0.0, "ISR": 0.0, "PSR": 0.0}
    values = [float(s) for s in scores]
    if not values or len(values) != len(priorities):
        raise ValueError(f"{len(values)} scores for {len(priorities)} criteria")
    if any(v not in (0.0, 1.0) for v in values):
        raise ValueError(f"CFBench criterion scores must be 0 or 1, got {values}")
    unknown = [p for p in priorities if p not in _PRIORITY]
    if unknown:
        raise ValueError(f"unknown CFBench priorities {unknown}; expected primary/secondary (主需/次需)")
    csr = _round2(_mean(values))
    primary = [v for v, p in zip(values, priorities) if _PRIORITY[p]]
    secondary = [v for v, p in zip(values, priorities) if not _PRIORITY[p]]
    if 0.0 in primary:
        psr = 0.0
    elif not primary:
        psr = float(csr > 0.8)
    elif not secondary:
        psr = 1.0
    else:
        psr = float(0.5 + 0.5 * _round2(_mean(secondary)) > 0.8)
    return {"CSR": csr, "ISR": float(csr >= 1.0), "PSR": psr}


def cfbench_metrics(samples: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean CSR / ISR / PSR over samples, for the ``easy``, ``hard`` and ``full`` splits, rounded to 2 decimals
    as ``_scores`` rounds them for ``output/scores.xlsx`` (``round(np.mean(...), 2)``); the exact means are
    beside them as ``CSR_unrounded`` etc.

    Args:
        samples: Records in the official judged format: ``criteria`` (a list of ``[text, priority]``),
            ``judge_score`` (one 0/1 per criterion, or ``None`` for a failed judgment) and ``split``
            (``"easy"``/``"hard"``; other or missing values count in ``full`` only).

    Returns:
        ``{split: {"CSR", "ISR", "PSR", "CSR_unrounded", "ISR_unrounded", "PSR_unrounded", "num_samples"}}``
        for each split that has samples; ``full`` always.

    Example: sample A (easy) has CSR 1, ISR 1, PSR 1 and sample B (hard) CSR 0.5, ISR 0, PSR 0, so
    full = {CSR 0.75, ISR 0.5, PSR 0.5}, easy = A's scores, hard = B's. With a third sample C (hard, CSR
    0.67, ISR 0, PSR 1): full CSR (1 + 0.5 + 0.67) / 3 = 0.72333 -> 0.72, PSR 2/3 -> 0.67.

    Raises:
        ValueError: no samples, or a malformed sample (see :func:`cfbench_sample_scores`).
    """
    per_split: dict[str, list[dict[str, float]]] = defaultdict(list)
    for sample in samples:
        scores = cfbench_sample_scores(sample["judge_score"], [c[1] for c in sample["criteria"]])
        per_split["full"].append(scores)
        if sample.get("split") in ("easy", "hard"):
            per_split[sample["split"]].append(scores)
    if not per_split:
        raise ValueError("cfbench_metrics needs at least one sample")
    out = {}
    for split, rows in per_split.items():
        exact = {m: _mean([s[m] for s in rows]) for m in ("CSR", "ISR", "PSR")}
        out[split] = {**{m: _round2(v) for m, v in exact.items()}, **{f"{m}_unrounded": v for m, v in exact.items()},
                      "num_samples": len(rows)}
    return out


# ---------------------------------------------------------------------------------------------- SysBench
# A session is ``{"multi_rounds_related": bool, "turns": [turn, ...]}`` (5 turns in the official data); a
# turn is ``{"alignment": "align" | "misalign" | "unknown", "criteria": [{"type", "satisfied", "violated"?}]}``.
# ``satisfied`` is the verdict 是 (what CSR counts); ``violated`` the verdict 否 (what fails a turn), which is
# ``not satisfied`` when absent. The official judge also answers 不适用, 无法判断, ...: neither, so such a
# criterion lowers CSR but does not fail its turn (see novalign.eval.sysbench_workbook).


def _violated(criterion: Mapping[str, Any]) -> bool:
    return bool(criterion.get("violated", not criterion["satisfied"]))


def _turn_ok(turn: Mapping[str, Any]) -> bool:
    """A turn is satisfied unless some verdict is 否: the official ``是否可用`` (SysBench ``utils.py``) that the
    paper's ISR and SSR tables read; it is *not* "every verdict is 是" (a 不适用 verdict passes)."""
    if not turn["criteria"]:
        raise ValueError("a SysBench turn needs at least one criterion")
    return not any(_violated(c) for c in turn["criteria"])


def _criteria(sessions: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    found = [c for s in sessions for t in s["turns"] for c in t["criteria"]]
    if not found:
        raise ValueError("no SysBench criteria to score")
    return found


def sysbench_csr(sessions: Sequence[Mapping[str, Any]]) -> float:
    """Constraint satisfaction rate: satisfied criteria / all criteria, pooled over every turn of every session.

    Example: turns with criteria [T, F] and [T] -> 2 / 3.
    """
    criteria = _criteria(sessions)
    return sum(bool(c["satisfied"]) for c in criteria) / len(criteria)


def sysbench_csr_by_type(sessions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """CSR per constraint type (``Action``, ``Content``, ``Background``, ``Role``, ``Format``, ``Style``), pooled.

    Example: Role [T, T], Style [T, F] -> {"Role": 1.0, "Style": 0.5}.
    """
    by_type: dict[str, list[bool]] = defaultdict(list)
    for c in _criteria(sessions):
        by_type[c["type"]].append(bool(c["satisfied"]))
    return {k: _mean(by_type[k]) for k in sorted(by_type)}


def sysbench_isr(sessions: Sequence[Mapping[str, Any]]) -> float:
    """Instruction satisfaction rate: the fraction of turns with no violated criterion (``tab3_align.py``).

    Example: turns [T, F], [T], [T, T] -> 2 / 3. A turn [是, 不适用] counts as satisfied.
    """
    turns = [t for s in sessions for t in s["turns"]]
    if not turns:
        raise ValueError("no SysBench turns to score")
    return _mean([_turn_ok(t) for t in turns])


def sysbench_isr_by_alignment(sessions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """ISR of aligned turns and of misaligned ones (the official code counts ``unknown`` as misaligned)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in sessions:
        for t in s["turns"]:
            groups["aligned" if t.get("alignment") == "align" else "misaligned"].append(_turn_ok(t))
    return {k: _mean(v) for k, v in sorted(groups.items())}


def _satisfied_prefix(session: Mapping[str, Any]) -> int:
    """How many turns, counted from the first, are satisfied before the first failed turn."""
    count = 0
    for turn in session["turns"]:
        if not _turn_ok(turn):
            break
        count += 1
    return count


def sysbench_ssr(sessions: Sequence[Mapping[str, Any]]) -> float:
    """Session stability rate: per session, satisfied turns from turn 1 up to the first failure, over its turns,
    averaged over sessions (``tab4_turn.py``: ``accmulated_turn / TURN_NUMBER``, mean over sessions).

    Example: turn verdicts [T, T, F, T, T] -> 2/5 and [T, T, T, T, T] -> 5/5, so SSR = (0.4 + 1.0) / 2 = 0.7;
    the satisfied turns after the first failure do not count.
    """
    if not sessions:
        raise ValueError("no SysBench sessions to score")
    return _mean([_satisfied_prefix(s) / len(s["turns"]) for s in sessions])


def sysbench_ssr_by_turn(sessions: Sequence[Mapping[str, Any]]) -> list[float]:
    """R1..Rn: the fraction of sessions whose turns 1..i are all satisfied (the per-turn columns of Table 4).

    Example: sessions [T, T, F, T, T] and [T, T, T, T, T] -> [1.0, 1.0, 0.5, 0.5, 0.5]. The mean of R1..Rn is
    the SSR when every session has n turns.
    """
    if not sessions:
        raise ValueError("no SysBench sessions to score")
    num_turns = max(len(s["turns"]) for s in sessions)
    prefixes = [_satisfied_prefix(s) for s in sessions]
    return [_mean([p >= i for p in prefixes]) for i in range(1, num_turns + 1)]


def sysbench_metrics(sessions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """All SysBench numbers: CSR (total, per type), ISR (total, aligned / misaligned, and per multi-turn
    ``dependent`` / ``parallel`` sessions), SSR (total, and per mode with R1..Rn), as ``plot/eval_output.py``
    and ``tab7_align_full.py`` print them."""
    sessions = list(sessions)
    ssr_split: dict[str, Any] = {}
    isr_split: dict[str, Any] = {}
    for name, related in (("dependent", True), ("parallel", False)):
        group = [s for s in sessions if bool(s.get("multi_rounds_related")) is related]
        if group:
            ssr_split[name] = {"SSR": sysbench_ssr(group), "per_turn": sysbench_ssr_by_turn(group)}
            isr_split[name] = {"ISR": sysbench_isr(group), **sysbench_isr_by_alignment(group)}
    return {
        "num_sessions": len(sessions),
        "CSR": sysbench_csr(sessions),
        "CSR_per_type": sysbench_csr_by_type(sessions),
        "ISR": sysbench_isr(sessions),
        "ISR_per_alignment": sysbench_isr_by_alignment(sessions),
        "ISR_per_mode": isr_split,  # plot/tab7_align_full.py
        "SSR": sysbench_ssr(sessions),
        "SSR_per_turn": sysbench_ssr_by_turn(sessions),
        "SSR_per_mode": ssr_split,
    }


# ---------------------------------------------------------------------------------------------- FB-Bench

FBBENCH_BENCH_TYPES = ("Error Correction", "Response Maintenance")


def fbbench_checklist_score(judgement: Sequence[tuple[bool, float | None]]) -> float:
    """Score of one FB-Bench checklist, as ``get_score`` in FB-Bench's ``gen_judgment.py``.

    Each item is ``(passed, weight)``. Weighted items (error correction) add their weight when passed, so a
    checklist with weights summing to 1 scores in [0, 1]. An item without a weight (``None``; response
    maintenance) makes the whole checklist score 1 as soon as it passes: an any-of checklist.

    Examples: [(T, 0.5), (F, 0.3), (T, 0.2)] -> 0.7;  [(F, None), (T, None)] -> 1;  [(F, None)] * 2 -> 0.

    Raises:
        ValueError: a weight outside (0, 1], or a total outside [0, 1].
    """
    score = 0.0
    for passed, weight in judgement:
        if weight is not None and not 0 < weight <= 1:
            raise ValueError(f"FB-Bench weight {weight} not in (0, 1]")
        if passed:
            if weight is None:
                return 1.0
            score += weight
    if not -1e-6 <= score <= 1 + 1e-6:
        raise ValueError(f"FB-Bench checklist score {score} not in [0, 1]; do the weights sum to 1?")
    return score


def fbbench_metrics(records: Iterable[Mapping[str, Any]], mode: str = "type") -> dict[str, Any]:
    """FB-Bench scores per bench type (error correction, response maintenance), overall, and per task type.

    ``mode="type"`` (the official default in ``show_results.py``) averages scores within each task type and
    then averages those means, so every task type weighs the same; ``mode="item"`` averages all samples.
    Overall pools the (bench type, task type) groups of both bench types.

    Example (type mode): error correction Math [1.0, 0.5] and Coding [0.0]; response maintenance Math [1.0].
    Error correction = mean(0.75, 0.0) = 0.375; maintenance = 1.0; overall = mean(0.75, 0.0, 1.0) = 0.58333...
    -> 0.5833 (unrounded 0.583333...).
    In item mode error correction = 1.5 / 3 = 0.5 and overall = 2.5 / 4 = 0.625.

    Args:
        records: Judged samples with ``bench_type``, ``task_type`` and ``score`` (official field names).

    Returns:
        ``{"error_correction", "response_maintenance", "overall"}`` rounded to 4 decimals as ``get_avg_score``
        rounds them (``round(x, 4)``; ``overall_score.xlsx`` shows them times 100, so 2 decimals there), each
        with its ``*_unrounded`` value beside (``None`` where a bench type has no sample); ``per_task`` =
        ``{bench_type: {task_type: mean}}`` (4 decimals, as ``per_task_score.xlsx``), ``per_task_unrounded``,
        and ``num_samples``.
    """
    if mode not in ("type", "item"):
        raise ValueError(f"mode must be 'type' or 'item', got {mode!r}")
    groups: dict[str, dict[str, list[float]]] = {b: defaultdict(list) for b in FBBENCH_BENCH_TYPES}
    num_samples = 0
    for r in records:
        if r["bench_type"] not in groups:
            raise ValueError(f"unknown bench_type {r['bench_type']!r}; expected one of {FBBENCH_BENCH_TYPES}")
        groups[r["bench_type"]][r["task_type"]].append(float(r["score"]))
        num_samples += 1
    if not num_samples:
        raise ValueError("fbbench_metrics needs at least one record")

    def aggregate(task_groups: list[list[float]]) -> float | None:
        if not task_groups:
            return None
        if mode == "item":
            return _mean([x for g in task_groups for x in g])
        return _mean([_mean(g) for g in task_groups])

    correction = list(groups["Error Correction"].values())
    maintenance = list(groups["Response Maintenance"].values())
    exact = {"error_correction": aggregate(correction), "response_maintenance": aggregate(maintenance),
             "overall": aggregate(correction + maintenance)}
    per_task = {b: {t: _mean(v) for t, v in sorted(g.items())} for b, g in groups.items() if g}
    return {
        "num_samples": num_samples,
        **{k: _round4(v) for k, v in exact.items()},
        **{f"{k}_unrounded": v for k, v in exact.items()},
        "per_task": {b: {t: _round4(v) for t, v in tasks.items()} for b, tasks in per_task.items()},
        "per_task_unrounded": per_task,
    }


def _round4(x: float | None) -> float | None:
    """``round(x, 4)``, FB-Bench's ``float_num=4`` (Python floats there, so Python's round)."""
    return None if x is None else round(x, 4)


# ------------------------------------------------------------------------- user experience (section 5.1)

UX_DIMENSIONS = ("intent_comprehension", "result_accuracy", "language_quality", "safety")


def ux_pass_rate(records: Iterable[Mapping[str, Any]], dimensions: Sequence[str] = UX_DIMENSIONS) -> dict[str, Any]:
    """Pass rate (report eq. 3): #samples passing every dimension / #samples, overall and per capability.

    Example: math {all pass}, math {safety fails}, code {all pass} -> overall 2/3, math 0.5, code 1.0.

    Args:
        records: ``{"capability": str, "dimensions": {dimension: bool}}`` per rated sample.
        dimensions: The dimensions every record must rate; the report's four by default.

    Raises:
        ValueError: no records, or a record that does not rate every dimension.
    """
    hits: list[bool] = []
    by_capability: dict[str, list[bool]] = defaultdict(list)
    for index, record in enumerate(records):
        rated = record["dimensions"]
        missing = [d for d in dimensions if d not in rated]
        if missing:
            raise ValueError(f"record {index} does not rate {missing}")
        ok = all(bool(rated[d]) for d in dimensions)
        hits.append(ok)
        by_capability[record["capability"]].append(ok)
    if not hits:
        raise ValueError("ux_pass_rate needs at least one record")
    return {
        "num_samples": len(hits),
        "pass_rate": _mean(hits),
        "per_capability": {k: _mean(v) for k, v in sorted(by_capability.items())},
    }


_GSB = {"good": "good", "g": "good", "same": "same", "s": "same", "bad": "bad", "b": "bad"}
_FLIP = {"good": "bad", "same": "same", "bad": "good"}


def _verdict(v: str) -> str:
    try:
        return _GSB[v.strip().lower()]
    except KeyError:
        raise ValueError(f"GSB verdict must be good/same/bad (or G/S/B), got {v!r}") from None


def combine_position_swap(a_first: str, b_first: str) -> str:
    """One GSB verdict for model A from two judge calls with the answers' order swapped.

    ``a_first`` is the judge's verdict on the first-shown answer when A is shown first; ``b_first`` the
    verdict on the first-shown answer when B is shown first (so "good" there favours B). A verdict stands
    only if both orders agree; any disagreement counts as "same", the conservative rule of MT-Bench
    (Zheng et al. 2023, sec. 3.4) that cancels position bias.

    Examples: ("good", "bad") -> "good";  ("good", "good") -> "same" (each order favours its first answer);
    ("bad", "good") -> "bad";  ("good", "same") -> "same".
    """
    first, second = _verdict(a_first), _FLIP[_verdict(b_first)]
    return first if first == second else "same"


def gsb(verdicts: Iterable[str]) -> dict[str, float]:
    """Good / same / bad counts of model A against model B and the GSB score (G - B) / (G + S + B).

    Example: G, G, S, B -> good 2, same 1, bad 1, score (2 - 1) / 4 = 0.25. The score lies in [-1, 1].
    """
    counts = {"good": 0, "same": 0, "bad": 0}
    for v in verdicts:
        counts[_verdict(v)] += 1
    total = sum(counts.values())
    if not total:
        raise ValueError("gsb needs at least one verdict")
    return {**counts, "total": total, "score": (counts["good"] - counts["bad"]) / total}
