"""``sample`` (a seeded subset) and ``balance`` (a stratified subset to target proportions).

:func:`stratum_counts` is the pure arithmetic of balancing: with shares ``p_s`` (normalized targets) and
``c_s`` records in stratum ``s``, the largest total the targets allow is ``T = min_s floor(c_s / p_s)``; the
``T`` records are split by largest remainder (Hamilton's method), so the counts sum to exactly ``T``, never
exceed a stratum's records, and deviate from ``T * p_s`` by less than one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from novalign.config.pipeline import BalanceConfig, SampleConfig
from novalign.flywheel.step import Outcome, Step, drop, keep, register

__all__ = ["sample_positions", "stratum_counts", "Sample", "Balance"]


def sample_positions(n_records: int, k: int, seed: int) -> set[int]:
    """``k`` of ``range(n_records)`` chosen uniformly without replacement (``random.Random(seed).sample``)."""
    return set(random.Random(seed).sample(range(n_records), min(k, n_records)))


def stratum_counts(available: dict[str, int], shares: dict[str, float], total: int | None) -> dict[str, int]:
    """Records to take per stratum (see the module docstring); ``total`` caps ``T``."""
    norm = sum(shares.values())
    if norm <= 0:
        raise ValueError("balance targets must have a positive sum")
    p = {s: w / norm for s, w in shares.items() if w > 0}
    most = min(math.floor(available.get(s, 0) / ps + 1e-9) for s, ps in p.items())
    t = most if total is None else min(total, most)
    exact = {s: t * ps for s, ps in p.items()}
    counts = {s: math.floor(x) for s, x in exact.items()}
    by_remainder = sorted(p, key=lambda s: (-(exact[s] - counts[s]), s))
    for s in by_remainder[: t - sum(counts.values())]:
        counts[s] += 1
    return {s: min(counts[s], available.get(s, 0)) for s in p}


@register
class Sample(Step):
    type = "sample"
    Config = SampleConfig
    mode = "global"

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        if (c.n is None) == (c.fraction is None):
            raise ValueError("sample: give exactly one of n and fraction")
        k = c.n if c.n is not None else round(c.fraction * len(records))
        chosen = sample_positions(len(records), k, c.seed)
        return [keep(r) if i in chosen else drop(r, "not sampled") for i, r in enumerate(records)]


@register
class Balance(Step):
    type = "balance"
    Config = BalanceConfig
    mode = "global"

    def input_fields(self):
        return {self.config.field: (str, int, bool)}

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        strata: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            strata.setdefault(str(r[c.field]), []).append(i)
        shares = c.targets if c.targets is not None else {s: 1.0 for s in strata}
        counts = stratum_counts({s: len(v) for s, v in strata.items()}, shares, c.total)
        chosen: set[int] = set()
        for s, members in strata.items():
            take = counts.get(s, 0)
            if take:
                rng = random.Random(f"{c.seed}:{s}")  # per stratum, so one stratum's size does not move another's
                chosen.update(rng.sample(members, take))
        out = []
        for i, r in enumerate(records):
            s = str(r[c.field])
            if i in chosen:
                out.append(keep(r))
            else:
                out.append(drop(r, "stratum not in targets" if s not in counts else f"over the {s} quota"))
        return out
