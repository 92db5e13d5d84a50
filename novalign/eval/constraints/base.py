"""The constraint type, its typed parameters and the registry they join (see :mod:`.library`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConstraintError", "ConstraintType", "Param", "REGISTRY", "checked_params", "register"]


class ConstraintError(ValueError):
    """A constraint instance that names an unknown type or gives parameters its type does not accept."""


@dataclass(frozen=True)
class Param:
    """One typed parameter. ``kind``: ``int`` (>= ``minimum``), ``float``, ``str`` (non-empty), ``str_list``
    (a non-empty list of non-empty strings), ``choice`` (one of ``choices``)."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    def check(self, value: Any, where: str) -> Any:
        bad = f"{where}: parameter {self.name!r} must be"
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise ConstraintError(f"{bad} an integer, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise ConstraintError(f"{bad} >= {self.minimum:g}, got {value!r}")
            return int(value)
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConstraintError(f"{bad} a number, got {value!r}")
            return float(value)
        if self.kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise ConstraintError(f"{bad} a non-empty string, got {value!r}")
            return value
        if self.kind == "str_list":
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, str) and v.strip() for v in value)):
                raise ConstraintError(f"{bad} a non-empty list of non-empty strings, got {value!r}")
            return list(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ConstraintError(f"{bad} one of {list(self.choices)}, got {value!r}")
            return value
        raise AssertionError(f"unknown parameter kind {self.kind!r}")


@dataclass(frozen=True)
class ConstraintType:
    name: str
    category: str
    descriptions: tuple[str, ...]
    params: tuple[Param, ...]
    validator: Callable[..., bool]
    cues: tuple[str, ...]
    source: str = "cfbench"  # "ifeval": one of IFEval's 25 verifiers, reused as it is
    example: Mapping[str, Any] = field(default_factory=dict)  # valid parameters, shown to proposing LLMs

    def check(self, response: str, **params: Any) -> bool:
        return bool(self.validator(response, **checked_params(self, params)))


REGISTRY: dict[str, ConstraintType] = {}


def register(ctype: ConstraintType) -> ConstraintType:
    if ctype.name in REGISTRY:
        raise ValueError(f"constraint type {ctype.name!r} registered twice")
    if len(ctype.descriptions) < 2:
        raise ValueError(f"constraint type {ctype.name!r} needs several descriptions")
    checked_params(ctype, dict(ctype.example))
    REGISTRY[ctype.name] = ctype
    return ctype


def checked_params(ctype: ConstraintType, params: Mapping[str, Any] | None) -> dict:
    """``params`` checked against the type's :class:`Param` s: every one present, none extra, each well typed.
    Returns the normalized parameters (integral floats as ints)."""
    name = ctype.name
    params = dict(params or {})
    known = {p.name: p for p in ctype.params}
    extra = sorted(set(params) - set(known))
    if extra:
        raise ConstraintError(f"{name}: unexpected parameter(s) {extra} (it takes: {sorted(known) or 'none'})")
    missing = sorted(set(known) - set(params))
    if missing:
        raise ConstraintError(f"{name}: missing parameter(s) {missing}")
    return {k: known[k].check(v, name) for k, v in params.items()}
