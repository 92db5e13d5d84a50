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

__all__ = ["IFEVAL_MODES", "ifeval_accuracy"]

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
