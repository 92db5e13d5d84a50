"""Benchmark metrics against examples worked out by hand (expected values derived in each docstring)."""

from __future__ import annotations

import math

import pytest

from novalign.eval.benchmarks import (
    cfbench_metrics,
    cfbench_sample_scores,
    combine_position_swap,
    fbbench_checklist_score,
    fbbench_metrics,
    gsb,
    sysbench_csr,
    sysbench_csr_by_type,
    sysbench_isr,
    sysbench_isr_by_alignment,
    sysbench_metrics,
    sysbench_ssr,
    sysbench_ssr_by_turn,
    ux_pass_rate,
)
from novalign.eval.metrics import pass_at_k

P, S = "主需", "次需"

# ------------------------------------------------------------------------------------------------ pass@k


def test_pass_at_k_by_hand():
    """n=5, c=2: pass@1 = 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)


def test_pass_at_k_edges_and_agreement_with_binomials():
    """c = 0 -> 0; n - c < k -> 1 (every draw of k holds a correct one); large n stays finite."""
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0
    for n, c, k in [(20, 3, 5), (200, 17, 10), (7, 7, 1)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert 0.0 < pass_at_k(100_000, 1, 1) < 1e-4
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 0)


# ----------------------------------------------------------------------------------------------- CFBench


def test_cfbench_all_primary():
    """All met -> CSR 1, ISR 1, PSR 1. One of two fails -> CSR 0.5, ISR 0, PSR 0 (a primary failed)."""
    assert cfbench_sample_scores(["1", "1"], [P, P]) == {"CSR": 1.0, "ISR": 1.0, "PSR": 1.0}
    assert cfbench_sample_scores([1, 0], ["primary", "primary"]) == {"CSR": 0.5, "ISR": 0.0, "PSR": 0.0}


def test_cfbench_all_secondary_uses_csr_threshold():
    """All secondary: PSR = CSR > 0.8. 4/5 = 0.8 is not above -> 0; 9/10 = 0.9 -> 1; 2/3 -> 0."""
    assert cfbench_sample_scores([1, 1, 1, 1, 0], [S] * 5)["PSR"] == 0.0
    scores = cfbench_sample_scores([1] * 9 + [0], [S] * 10)
    assert scores == {"CSR": 0.9, "ISR": 0.0, "PSR": 1.0}
    assert cfbench_sample_scores([1, 1, 0], [S] * 3) == {"CSR": 0.67, "ISR": 0.0, "PSR": 0.0}
    assert cfbench_sample_scores([1, 1], [S, S])["PSR"] == 1.0


def test_cfbench_mixed_priorities():
    """Mixed: primary all met, then 0.5 + 0.5 * round(mean(secondary), 2) > 0.8.

    S = [1, 1, 0]: mean 0.67 -> 0.835 -> PSR 1; CSR = 3/4 = 0.75; ISR 0.
    S = [1, 0]: 0.5 + 0.25 = 0.75 -> PSR 0.
    S = [1, 1, 1, 0, 0]: mean 0.6 -> exactly 0.8, not above -> PSR 0.
    P = [0] with S all met: a primary fails -> PSR 0 whatever the secondary.
    """
    assert cfbench_sample_scores([1, 1, 1, 0], [P, S, S, S]) == {"CSR": 0.75, "ISR": 0.0, "PSR": 1.0}
    assert cfbench_sample_scores([1, 1, 0], [P, S, S])["PSR"] == 0.0
    assert cfbench_sample_scores([1, 1, 1, 1, 0, 0], [P, S, S, S, S, S])["PSR"] == 0.0
    assert cfbench_sample_scores([0, 1, 1], [P, S, S]) == {"CSR": 0.67, "ISR": 0.0, "PSR": 0.0}


def test_cfbench_failed_judgment_and_bad_input():
    assert cfbench_sample_scores(None, [P, S]) == {"CSR": 0.0, "ISR": 0.0, "PSR": 0.0}
    with pytest.raises(ValueError):
        cfbench_sample_scores([1], [P, S])
    with pytest.raises(ValueError):
        cfbench_sample_scores([1, 0.5], [P, S])
    with pytest.raises(ValueError):
        cfbench_sample_scores([1], ["tertiary"])


def test_cfbench_metrics_per_split():
    """A (easy): CSR 1, ISR 1, PSR 1. B (hard): CSR 0.5, ISR 0, PSR 0. Full = means = 0.75 / 0.5 / 0.5."""
    samples = [
        {"criteria": [["c1", P], ["c2", S]], "judge_score": ["1", "1"], "split": "easy"},
        {"criteria": [["c1", P], ["c2", S]], "judge_score": ["0", "1"], "split": "hard"},
    ]
    metrics = cfbench_metrics(samples)
    assert {k: v for k, v in metrics["full"].items() if "unrounded" not in k} == {"CSR": 0.75, "ISR": 0.5, "PSR": 0.5, "num_samples": 2}
    assert {k: v for k, v in metrics["easy"].items() if "unrounded" not in k} == {"CSR": 1.0, "ISR": 1.0, "PSR": 1.0, "num_samples": 1}
    assert {k: v for k, v in metrics["hard"].items() if "unrounded" not in k} == {"CSR": 0.5, "ISR": 0.0, "PSR": 0.0, "num_samples": 1}


# ---------------------------------------------------------------------------------------------- SysBench


def _turn(*verdicts: tuple[str, bool], alignment: str = "align") -> dict:
    return {"alignment": alignment, "criteria": [{"type": t, "satisfied": ok} for t, ok in verdicts]}


def _session(turn_ok: list[bool], related: bool = True) -> dict:
    return {"multi_rounds_related": related, "turns": [_turn(("Role", ok)) for ok in turn_ok]}


def test_sysbench_csr_isr_by_hand():
    """Turns: [Role T, Style F] (misaligned), [Style T], [Role T, Format T].

    CSR = 4 satisfied / 5 criteria = 0.8; Role 2/2, Style 1/2, Format 1/1.
    ISR = turns fully met 2 / 3; aligned turns 2/2 = 1.0, misaligned 0/1 = 0.0.
    """
    session = {
        "multi_rounds_related": False,
        "turns": [
            _turn(("Role", True), ("Style", False), alignment="misalign"),
            _turn(("Style", True)),
            _turn(("Role", True), ("Format", True)),
        ],
    }
    assert sysbench_csr([session]) == pytest.approx(0.8)
    assert sysbench_csr_by_type([session]) == {"Format": 1.0, "Role": 1.0, "Style": 0.5}
    assert sysbench_isr([session]) == pytest.approx(2 / 3)
    assert sysbench_isr_by_alignment([session]) == {"aligned": 1.0, "misaligned": 0.0}


def test_sysbench_ssr_stops_at_first_failure():
    """[T, T, F, T, T] -> 2/5 (later successes do not count); [T]*5 -> 5/5; [F, T, T, T, T] -> 0.

    SSR = (0.4 + 1.0 + 0.0) / 3 = 0.4667. R_i = share of sessions with turns 1..i all met:
    R1 = 2/3, R2 = 2/3, R3..R5 = 1/3; mean(R) = (2/3 * 2 + 1/3 * 3) / 5 = 7/15 = SSR.
    """
    sessions = [_session([True, True, False, True, True]), _session([True] * 5), _session([False] + [True] * 4)]
    assert sysbench_ssr(sessions) == pytest.approx(7 / 15)
    assert sysbench_ssr_by_turn(sessions) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_sysbench_metrics_split_by_multi_turn_mode():
    """Dependent: [T, T, F, T, T] -> SSR 0.4. Parallel: [T]*5 -> 1.0. Total SSR 0.7; CSR = ISR = 9/10."""
    sessions = [_session([True, True, False, True, True], related=True), _session([True] * 5, related=False)]
    metrics = sysbench_metrics(sessions)
    assert metrics["SSR"] == pytest.approx(0.7)
    assert metrics["CSR"] == pytest.approx(0.9) and metrics["ISR"] == pytest.approx(0.9)
    assert metrics["SSR_per_mode"]["dependent"]["SSR"] == pytest.approx(0.4)
    assert metrics["SSR_per_mode"]["dependent"]["per_turn"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert metrics["SSR_per_mode"]["parallel"]["SSR"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- FB-Bench


def test_fbbench_weighted_checklist():
    """Error correction: passed weights add up: 0.5 + 0.2 = 0.7; all passed = 1; none = 0."""
    assert fbbench_checklist_score([(True, 0.5), (False, 0.3), (True, 0.2)]) == pytest.approx(0.7)
    assert fbbench_checklist_score([(True, 0.6), (True, 0.4)]) == pytest.approx(1.0)
    assert fbbench_checklist_score([(False, 0.6), (False, 0.4)]) == 0.0
    with pytest.raises(ValueError):
        fbbench_checklist_score([(True, 1.5)])
    with pytest.raises(ValueError):
        fbbench_checklist_score([(True, 0.8), (True, 0.8)])


def test_fbbench_any_of_checklist():
    """Response maintenance: unweighted items, any one met -> 1; none met -> 0."""
    assert fbbench_checklist_score([(False, None), (True, None)]) == 1.0
    assert fbbench_checklist_score([(False, None), (False, None)]) == 0.0


def test_fbbench_metrics_type_and_item_modes():
    """EC: Math [1.0, 0.5], Coding [0.0]; RM: Math [1.0].

    type mode: EC = mean(0.75, 0.0) = 0.375; RM = 1.0; overall = mean(0.75, 0.0, 1.0) = 0.5833.
    item mode: EC = 1.5 / 3 = 0.5; RM = 1.0; overall = 2.5 / 4 = 0.625.
    """
    records = [
        {"bench_type": "Error Correction", "task_type": "Mathematics", "score": 1.0},
        {"bench_type": "Error Correction", "task_type": "Mathematics", "score": 0.5},
        {"bench_type": "Error Correction", "task_type": "Coding", "score": 0.0},
        {"bench_type": "Response Maintenance", "task_type": "Mathematics", "score": 1.0},
    ]
    by_type = fbbench_metrics(records)
    assert by_type["error_correction"] == pytest.approx(0.375)
    assert by_type["response_maintenance"] == pytest.approx(1.0)
    assert by_type["overall"] == 0.5833 and by_type["overall_unrounded"] == pytest.approx(1.75 / 3)
    assert by_type["per_task"]["Error Correction"] == {"Coding": 0.0, "Mathematics": 0.75}
    by_item = fbbench_metrics(records, mode="item")
    assert by_item["error_correction"] == pytest.approx(0.5)
    assert by_item["overall"] == pytest.approx(0.625)
    with pytest.raises(ValueError):
        fbbench_metrics([{"bench_type": "Other", "task_type": "x", "score": 1}])


# --------------------------------------------------------------------------------- user experience (5.1)


def test_ux_pass_rate_needs_every_dimension():
    """math: all pass / safety fails; code: all pass -> overall 2/3, math 1/2, code 1."""
    ok = {"intent_comprehension": True, "result_accuracy": True, "language_quality": True, "safety": True}
    records = [
        {"capability": "math", "dimensions": ok},
        {"capability": "math", "dimensions": {**ok, "safety": False}},
        {"capability": "code", "dimensions": ok},
    ]
    rates = ux_pass_rate(records)
    assert rates["pass_rate"] == pytest.approx(2 / 3)
    assert rates["per_capability"] == {"code": 1.0, "math": 0.5}
    with pytest.raises(ValueError):
        ux_pass_rate([{"capability": "math", "dimensions": {"safety": True}}])


def test_gsb_counts_and_score():
    """G, G, S, B -> (2 - 1) / 4 = 0.25; all bad -> -1."""
    assert gsb(["good", "G", "same", "bad"]) == {"good": 2, "same": 1, "bad": 1, "total": 4, "score": 0.25}
    assert gsb(["b", "b"])["score"] == -1.0
    with pytest.raises(ValueError):
        gsb(["better"])


def test_gsb_position_swap():
    """A first: good; B first: bad (= A good) -> good. Both orders favour the first answer -> same."""
    assert combine_position_swap("good", "bad") == "good"
    assert combine_position_swap("bad", "good") == "bad"
    assert combine_position_swap("good", "good") == "same"
    assert combine_position_swap("same", "same") == "same"
    assert combine_position_swap("good", "same") == "same"
    orders = [("good", "bad"), ("good", "good"), ("bad", "good"), ("good", "bad")]
    assert gsb(combine_position_swap(a, b) for a, b in orders)["score"] == pytest.approx((2 - 1) / 4)
