"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier on the peak learning rate for optimizer step ``step`` (0-based).

    Linear warmup from 1/(warmup+1) to 1 over ``warmup_steps`` steps, then ``schedule``:
    'cosine' decays as min + (1 - min) * (1 + cos(pi * p)) / 2, 'linear' as min + (1 - min) * (1 - p), with
    p the fraction of the decay phase done; 'constant' stays at 1.

    >>> lr_factor(0, 10, 2, "cosine"), lr_factor(1, 10, 2, "cosine")
    (0.3333333333333333, 0.6666666666666666)
    >>> lr_factor(2, 10, 2, "linear"), lr_factor(6, 10, 2, "linear")
    (1.0, 0.5)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    decay = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / decay)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    raise ValueError(f"unknown schedule {schedule!r}")
