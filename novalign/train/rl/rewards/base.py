"""What every RL reward is: the :class:`RewardFn` protocol, and :func:`compute_rewards`, which checks a result.

Bad rewards are never passed on silently: :func:`compute_rewards` raises a :class:`RewardError` naming the
function when it raises, returns the wrong number of values, a non-number or a NaN / infinity.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["Messages", "RewardError", "RewardFn", "as_reward", "check_fields", "compute_rewards", "log", "reward_name"]

log = logging.getLogger("novalign.train.rl.rewards")  # one logger for every reward (tests and users filter on it)

Messages = list[dict]


class RewardFn(Protocol):
    """``(prompts, completions, **sample_fields) -> rewards``: one float per completion.

    ``sample_fields`` are per-sample lists (as long as ``completions``); a reward reads the ones it needs
    and must accept (and ignore) the others.
    """

    def __call__(self, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]: ...


class RewardError(ValueError):
    """A reward function failed or returned something that is not one finite number per completion."""


def reward_name(fn: Any) -> str:
    """A readable name for logs and errors: ``fn.name``, ``fn.__name__`` or the class name."""
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


def as_reward(value: Any, name: str, index: int) -> float:
    """``value`` as a finite float (bools count as 0 / 1), or a :class:`RewardError` naming ``name``."""
    if isinstance(value, bool):
        return float(value)
    number = None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__float__"):  # int, float, numpy / 0-d torch
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None:
        raise RewardError(f"reward {name!r} returned a non-number for sample {index}: {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise RewardError(f"reward {name!r} returned {number} for sample {index}; rewards must be finite numbers")
    return number


def check_fields(name: str, num: int, fields: Mapping[str, Any]) -> None:
    """Every per-sample field is a list of ``num`` values, or a :class:`RewardError` naming ``name``."""
    for key, values in fields.items():
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or len(values) != num:
            got = len(values) if isinstance(values, Sequence) else type(values).__name__
            raise RewardError(f"reward {name!r}: sample field {key!r} must be a list of {num} values (one per "
                              f"completion), got {got}")


def compute_rewards(fn: RewardFn, prompts: list[Messages], completions: list[str], **sample_fields: Any) -> list[float]:
    """Call ``fn`` and check its result: exactly one finite number per completion.

    Raises:
        RewardError: the inputs disagree in length, ``fn`` raised, or it returned a wrong-length list, a
            non-number, NaN or an infinity -- the message names the reward function.
    """
    name = reward_name(fn)
    if len(prompts) != len(completions):
        raise RewardError(f"reward {name!r}: {len(prompts)} prompts but {len(completions)} completions")
    check_fields(name, len(completions), sample_fields)
    try:
        values = fn(prompts, completions, **sample_fields)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise RewardError(f"reward {name!r} must return a list of floats, got {type(values).__name__}")
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if not isinstance(values, list):  # a 0-d array / tensor
        raise RewardError(f"reward {name!r} must return one value per completion, got a scalar {values!r}")
    if len(values) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
    return [as_reward(v, name, i) for i, v in enumerate(values)]
