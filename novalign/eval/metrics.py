"""Evaluation metrics as pure functions over result records.

IFEval (Zhou et al. 2023) reports two accuracies per mode (strict / loose):

- prompt-level: the fraction of prompts whose every instruction is followed;
- instruction-level: the fraction of all instructions followed, pooled over prompts;

and, to see where a model fails, instruction-level accuracy per instruction id
(``"keywords:existence"``) and per category (the part before the colon, ``"keywords"``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["IFEVAL_MODES", "ifeval_accuracy", "pass_at_k"]

IFEVAL_MODES = ("strict", "loose")


def _ratio(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits)


def ifeval_accuracy(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Prompt- and instruction-level IFEval accuracy, overall, per instruction id and per category.

    Args:
        results: One mapping per prompt with ``instruction_id_list`` and, per mode, a list of booleans
            aligned with it under ``"strict"`` and ``"loose"`` (``PromptResult.to_dict()``, or a line of
            a results file written by ``novalign eval-ifeval``).

    Returns:
        ``{"num_prompts": P, "num_instructions": I, "strict": {...}, "loose": {...}}`` where each mode holds
        ``prompt_level``, ``instruction_level``, ``per_instruction`` (id -> accuracy) and ``per_category``
        (category -> accuracy), all fractions in [0, 1]; the per-* dicts are sorted by key.

    Raises:
        ValueError: no results, or a result whose verdict list does not match its instruction list.
    """
    records = list(results)
    if not records:
        raise ValueError("ifeval_accuracy needs at least one result")
    summary: dict[str, Any] = {
        "num_prompts": len(records),
        "num_instructions": sum(len(r["instruction_id_list"]) for r in records),
    }
    for mode in IFEVAL_MODES:
        prompt_hits: list[bool] = []
        by_id: dict[str, list[bool]] = defaultdict(list)
        by_category: dict[str, list[bool]] = defaultdict(list)
        for index, record in enumerate(records):
            ids, verdicts = record["instruction_id_list"], record[mode]
            if len(ids) != len(verdicts) or not ids:
                raise ValueError(f"result {index}: {len(verdicts)} {mode} verdicts for {len(ids)} instructions")
            prompt_hits.append(all(verdicts))
            for instruction_id, ok in zip(ids, verdicts):
                by_id[instruction_id].append(bool(ok))
                by_category[instruction_id.split(":")[0]].append(bool(ok))
        summary[mode] = {
            "prompt_level": _ratio(prompt_hits),
            "instruction_level": _ratio([ok for hits in by_id.values() for ok in hits]),
            "per_instruction": {k: _ratio(by_id[k]) for k in sorted(by_id)},
            "per_category": {k: _ratio(by_category[k]) for k in sorted(by_category)},
        }
    return summary


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, https://arxiv.org/abs/2107.03374, eq. 1): ``1 - C(n-c, k) / C(n, k)``.

    The probability that at least one of k samples drawn without replacement from n generations, c of them
    correct, is correct. Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, the paper's numerically stable
    product form, which never forms the huge binomials.

    Worked examples: n=5, c=2, k=1 -> 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4;
    k=2 -> 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7; n - c < k (here n=5, c=4, k=2) -> 1.0.

    Raises:
        ValueError: unless 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    failing = 1.0
    for i in range(n - c + 1, n + 1):
        failing *= 1.0 - k / i
    return 1.0 - failing
