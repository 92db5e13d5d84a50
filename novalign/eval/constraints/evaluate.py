"""Evaluation with the constraint library: records ``{response, constraints}`` scored by the validators, with
CFBench's constraint- and instruction-level rates (CSR: the share of constraints satisfied; ISR: the share of
records satisfying all of theirs) and the pass rate per type."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from novalign.data.io import DataError, iter_records
from novalign.eval.constraints.library import REGISTRY, ConstraintError, check, validate_params

__all__ = ["read_constrained", "score_records"]


def read_constrained(path: str | os.PathLike[str], response_field: str = "response",
                     constraints_field: str = "constraints") -> list[tuple[str, list[dict]]]:
    """``(response, constraints)`` per line; a bad line raises :class:`DataError` naming file, line and field."""
    out = []
    for line, record in iter_records(path):
        if not isinstance(record.get(response_field), str):
            raise DataError(path, line, response_field, "missing or not a string", reason="bad response")
        cs = record.get(constraints_field)
        if not isinstance(cs, list):
            raise DataError(path, line, constraints_field, "missing or not a list", reason="bad constraints")
        for i, c in enumerate(cs):
            try:
                if not isinstance(c, dict) or not isinstance(c.get("type"), str):
                    raise ConstraintError("must be an object with a string 'type'")
                validate_params(c["type"], c.get("params") or {})
            except ConstraintError as exc:
                raise DataError(path, line, f"{constraints_field}[{i}]", str(exc), reason="bad constraint") from exc
        out.append((record[response_field], cs))
    return out


def score_records(items: list[tuple[str, list[dict]]]) -> dict[str, Any]:
    """CSR, ISR, the pass rate per type, and how many of the library's types occur."""
    per_type: dict[str, list[bool]] = defaultdict(list)
    all_ok = []
    for response, cs in items:
        verdicts = [check(c, response) for c in cs]
        for c, v in zip(cs, verdicts):
            per_type[c["type"]].append(v)
        all_ok.append(all(verdicts))
    flat = [v for vs in per_type.values() for v in vs]
    return {"records": len(items), "constraints": len(flat),
            "constraint_pass_rate": sum(flat) / len(flat) if flat else 0.0,
            "instruction_pass_rate": sum(all_ok) / len(all_ok) if all_ok else 0.0,
            "per_type": {t: sum(v) / len(v) for t, v in sorted(per_type.items())},
            # the share of the library's types the file uses (report 4.1's type coverage of a data set)
            "types_used": len(per_type), "type_coverage": len(set(per_type) & set(REGISTRY)) / len(REGISTRY)}
