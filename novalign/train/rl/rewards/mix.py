"""The weighted reward mix ``r = sum_c w_c * r_c``, with each component's own rewards kept for the logs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from novalign.train.rl.rewards.base import Messages, RewardFn, compute_rewards, reward_name

__all__ = ["MixedRewards", "WeightedMix", "weighted_mix"]


@dataclass
class MixedRewards:
    """The mix's rewards per completion, and each component's unweighted rewards (for logging)."""

    total: list[float]
    components: dict[str, list[float]]


class WeightedMix:
    """``r = sum_c w_c * r_c`` over reward components; see :func:`weighted_mix`."""

    def __init__(self, components: Sequence[tuple[RewardFn, float]], name: str = "weighted_mix"):
        if not components:
            raise ValueError("weighted_mix needs at least one (reward_fn, weight) pair")
        self.name = name
        self.components: list[tuple[str, RewardFn, float]] = []
        seen: dict[str, int] = {}
        for item in components:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and callable(item[0])):
                raise ValueError(f"weighted_mix takes (reward_fn, weight) pairs, got {item!r}")
            fn, weight = item
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"the weight of reward {reward_name(fn)!r} must be a finite number, got {weight!r}")
            base = reward_name(fn)
            seen[base] = seen.get(base, 0) + 1
            self.components.append((base if seen[base] == 1 else f"{base}#{seen[base]}", fn, float(weight)))

    def evaluate(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> MixedRewards:
        """Every component's rewards (each checked by :func:`compute_rewards`) and their weighted sum."""
        parts = {name: compute_rewards(fn, prompts, completions, **sample_fields) for name, fn, _ in self.components}
        total = [sum(w * parts[name][i] for name, _, w in self.components) for i in range(len(completions))]
        return MixedRewards(total, parts)

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
        return self.evaluate(prompts, completions, **sample_fields).total


def weighted_mix(components: Sequence[tuple[RewardFn, float]], name: str = "weighted_mix") -> WeightedMix:
    """A :class:`RewardFn` that is the weighted sum of ``components``: ``[(reward_fn, weight), ...]``.

    Call it for the totals, or :meth:`WeightedMix.evaluate` for the totals plus each component's own rewards
    (keyed by the component's name; a repeated name gets ``#2``, ``#3``...).
    """
    return WeightedMix(components, name)
