"""Absolute annotation scores -> the normalized targets r-hat of equation (1) (report sections 2.1 and 3.3).

Annotators rate every response on a few dimensions, each on its own scale -- the report names
helpfulness, writing fluency and safety. A reward model cannot fit "7 out of 10 helpful, 4 out of 5
fluent" directly, and two annotators (or two datasets) rarely use a scale the same way. So, per dimension
``d`` and per group ``g`` (an input file, or an annotator; ``ScoreConfig.group_by``)::

    minmax:  n_d = (v - min_g,d) / (max_g,d - min_g,d)        in [0, 1]; 0.5 when the group has one value
    range:   n_d = (v - lo_d) / (hi_d - lo_d)                  over the declared range, no statistics
    zscore:  n_d = (v - mean_g,d) / std_g,d                    population std; 0 when std is 0
    none:    n_d = v

and the target is the weighted mean over dimensions, ``r_hat = sum_d w_d * n_d / sum_d w_d``.

Checking a raw score (a number, or an object of dimensions; declared ranges) is :func:`parse_score`; it
raises :class:`ScoreProblem`, which the reader turns into a :class:`~novalign.data.io.DataError`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from novalign.config import ScoreConfig

PLAIN = "score"
"""Name of the single dimension of a one-number score."""


class ScoreProblem(ValueError):
    """A raw score that does not match the declared scheme; ``field`` is relative to the score's own field."""

    def __init__(self, field: str | None, problem: str, reason: str) -> None:
        self.field = field
        self.problem = problem
        self.reason = reason
        super().__init__(problem)


@dataclass(frozen=True)
class ScoreObservation:
    """One response's checked raw score and the group whose statistics normalize it."""

    values: dict[str, float]
    group: str


def _number(value: Any, field: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScoreProblem(field, f"a score must be a number, got {type(value).__name__}", "non-numeric score")
    if not math.isfinite(value):
        raise ScoreProblem(field, f"a score must be finite, got {value}", "non-numeric score")
    return float(value)


def _check_range(value: float, bounds: tuple[float, float] | None, field: str | None) -> None:
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ScoreProblem(
            field, f"score {value:g} is outside its declared range [{bounds[0]:g}, {bounds[1]:g}]", "score out of declared range"
        )


def parse_score(raw: Any, cfg: ScoreConfig) -> dict[str, float]:
    """Check a raw score against the declared scheme and return ``{dimension: value}``.

    A one-number score (no ``cfg.dimensions``) becomes ``{"score": value}``. With dimensions, ``raw`` must
    be an object holding every declared dimension and no other.

    Raises:
        ScoreProblem: not a number, a missing or unknown dimension, or a value outside its declared range.
    """
    if not cfg.dimensions:
        if isinstance(raw, dict):
            raise ScoreProblem(
                None, "an object of score dimensions needs scores.dimensions in the config", "undeclared score dimensions"
            )
        value = _number(raw, None)
        _check_range(value, cfg.range, None)
        return {PLAIN: value}
    if not isinstance(raw, dict):
        names = ", ".join(cfg.dimensions)
        raise ScoreProblem(None, f"expected an object with the dimensions {names}", "wrong score type")
    unknown = sorted(set(raw) - set(cfg.dimensions))
    if unknown:
        raise ScoreProblem(unknown[0], f"unknown score dimension (declared: {', '.join(cfg.dimensions)})", "unknown score dimension")
    values: dict[str, float] = {}
    for name, dim in cfg.dimensions.items():
        if raw.get(name) is None:
            raise ScoreProblem(name, "missing score dimension", "missing score dimension")
        values[name] = _number(raw[name], name)
        _check_range(values[name], dim.range, name)
    return values


def _weights(cfg: ScoreConfig) -> dict[str, float]:
    if not cfg.dimensions:
        return {PLAIN: 1.0}
    weights = {name: dim.weight for name, dim in cfg.dimensions.items()}
    if sum(weights.values()) <= 0:
        raise ValueError("scores.dimensions: the weights sum to 0")
    return weights


def _declared_range(cfg: ScoreConfig, name: str) -> tuple[float, float]:
    bounds = cfg.range if name == PLAIN else cfg.dimensions[name].range
    if bounds is None or bounds[1] <= bounds[0]:
        where = "scores.range" if name == PLAIN else f"scores.dimensions.{name}.range"
        raise ValueError(f"scores.normalize='range' needs {where} = [min, max] with min < max")
    return bounds


def normalize_scores(observations: Sequence[ScoreObservation], cfg: ScoreConfig) -> list[float]:
    """The target r-hat of every observation (see the module docstring for the formulas).

    >>> from novalign.config import ScoreConfig
    >>> obs = [ScoreObservation({"score": v}, "a") for v in (2.0, 4.0, 6.0)]
    >>> normalize_scores(obs, ScoreConfig(normalize="minmax"))
    [0.0, 0.5, 1.0]
    """
    weights = _weights(cfg)
    method = cfg.normalize
    stats: dict[tuple[str, str], tuple[float, float]] = {}
    if method in ("minmax", "zscore"):
        by_group: dict[tuple[str, str], list[float]] = defaultdict(list)
        for obs in observations:
            for name, value in obs.values.items():
                by_group[(obs.group, name)].append(value)
        for key, values in by_group.items():
            if method == "minmax":
                stats[key] = (min(values), max(values))
            else:
                mean = sum(values) / len(values)
                stats[key] = (mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)))

    def one(name: str, value: float, group: str) -> float:
        if method == "none":
            return value
        if method == "range":
            lo, hi = _declared_range(cfg, name)
            return (value - lo) / (hi - lo)
        a, b = stats[(group, name)]
        if method == "minmax":
            return (value - a) / (b - a) if b > a else 0.5
        return (value - a) / b if b > 0 else 0.0

    total = sum(weights.values())
    return [sum(w * one(name, obs.values[name], obs.group) for name, w in weights.items()) / total for obs in observations]
