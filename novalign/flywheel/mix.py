"""Capability mixtures of SFT data: the training sets of the specialists that model merging combines.

Report section 2.4 merges models "trained on different capabilities". A specialist here is SFT data in which
its focus capabilities appear in full and every other capability is down-sampled to a fraction, so it keeps
some of everything (merging models that forgot the rest works badly).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from novalign.data.io import DataError

__all__ = ["group_by_field", "mix_capabilities"]


def group_by_field(records: Sequence[tuple[str, int, dict]], field: str = "capability") -> dict[str, list[dict]]:
    """``(file, line, record)`` triples grouped by ``record[field]``, groups in sorted order, records in input
    order. A record without the field is a :class:`DataError` naming its file and line."""
    groups: dict[str, list[dict]] = {}
    for path, line, record in records:
        value = record.get(field)
        if not isinstance(value, str) or not value:
            raise DataError(path, line, field, "missing or not a string (a specialist mixes data by this field)",
                            reason="no capability")
        groups.setdefault(value, []).append(record)
    return {k: groups[k] for k in sorted(groups)}


def mix_capabilities(by_capability: Mapping[str, Sequence[dict]], focus: Sequence[str], other_fraction: float,
                     seed: str | int) -> list[dict]:
    """The focus capabilities' records in full plus a seeded sample of ``int(len * other_fraction)`` records of
    every other capability, in the mapping's order.

    >>> mix_capabilities({"a": [{"i": 1}, {"i": 2}], "b": [{"i": 3}, {"i": 4}]}, ["a"], 0.5, 0)[:2]
    [{'i': 1}, {'i': 2}]

    Raises:
        ValueError: a focus capability that the data does not have.
    """
    if unknown := sorted(set(focus) - set(by_capability)):
        raise ValueError(f"focus {unknown}: no such capability in the data; it has {sorted(by_capability)}")
    rng, rows = random.Random(seed), []
    for cap, records in by_capability.items():
        rows += list(records) if cap in focus else rng.sample(list(records), int(len(records) * other_fraction))
    return rows
