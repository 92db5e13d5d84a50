"""The built-in steps; importing this package registers them (``novalign.flywheel.step.STEP_TYPES``)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from novalign.flywheel.step import STEP_TYPES, Step
from novalign.flywheel.steps import dedup, filters, llm, preference, sampling  # noqa: F401 - registers them
from novalign.flywheel.steps import ifdata  # noqa: F401 - the instruction-following data steps (issue 20)
from novalign.flywheel.steps import control, craft, prefdata  # noqa: F401 - the preference-data chain (issue 18)
from novalign.flywheel.steps import prompt_labels  # noqa: F401 - registers them (issue 16)
from novalign.flywheel.steps import selection  # noqa: F401 - select_diverse, score_quality (issue 17)

__all__ = ["make_step", "describe_step_types"]


def make_step(type_name: str, config: dict[str, Any] | BaseModel, **kwargs: Any) -> Step:
    """A step of a registered type; ``config`` is validated against its config class (pydantic errors)."""
    if type_name not in STEP_TYPES:
        close = difflib.get_close_matches(type_name, list(STEP_TYPES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown step type {type_name!r}{hint}; known: {', '.join(sorted(STEP_TYPES))}")
    cls = STEP_TYPES[type_name]
    cfg = config if isinstance(config, cls.Config) else cls.Config.model_validate(config)
    return cls(cfg, **kwargs)


def describe_step_types() -> list[tuple[str, str, str]]:
    """``(type, module.ConfigClass, summary)`` of every registered step type, sorted by type: the list that
    ``novalign data run --help-config`` prints, read from the registry so it cannot go stale. The summary is
    the first line of the config class's docstring (its step class's when the config has none)."""
    rows = []
    for name in sorted(STEP_TYPES):
        cls = STEP_TYPES[name]
        doc = (cls.Config.__doc__ or "").strip() or (cls.__doc__ or "").strip() or "(no description)"
        rows.append((name, f"{cls.Config.__module__}.{cls.Config.__name__}", " ".join(doc.split("\n\n")[0].split())))
    return rows
