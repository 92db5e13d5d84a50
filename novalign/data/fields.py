"""Dotted field paths into records: the one reader the flywheel's steps use for options such as
``bucket_field: labels.ability`` (a step takes the path as config, so it works on any record layout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["get_path"]


def get_path(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """``record["labels"]["ability"]`` for ``"labels.ability"``; ``default`` where any part is missing or a part
    on the way is not a mapping.

    >>> get_path({"labels": {"ability": "Math"}}, "labels.ability")
    'Math'
    >>> get_path({"labels": "Math"}, "labels.ability", "none")
    'none'
    """
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value
