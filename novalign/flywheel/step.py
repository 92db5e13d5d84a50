"""A step of the data flywheel: a plain function from records to records, with a typed config and a version.

A record is a dict with a unique ``_id``. A step declares the fields it reads (checked on every record before
it runs, so a bad record is reported as ``file:line: field: problem``), the fields it writes, its version
(bump it when the step's behaviour changes: the output folder is keyed by it) and what it needs to run:

* ``resources = "llm"``: it calls models through :mod:`novalign.llm`; the executor runs it on threads (the
  client's own event loop does the concurrency) and gives each Ray worker its own client;
* ``resources = "cpu"``: pure Python work, which the executor spreads over processes or Ray tasks.

Two shapes (``mode``):

* ``"map"``: :meth:`Step.process` turns input records into one :class:`Outcome` each, in any order; the
  pipeline stores each outcome as it arrives, so a killed run resumes record by record;
* ``"global"``: :meth:`Step.run_all` sees every record at once (dedup, sampling) and returns one outcome per
  record in input order; it is cheap next to the LLM steps and reruns whole.

Steps never write files: the pipeline (:mod:`novalign.flywheel.pipeline`) owns every byte on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel

__all__ = ["Outcome", "Step", "TextStep", "STEP_TYPES", "register", "text_of", "dumps_key"]

# An outcome: {"_id": input record id, "out": [output records], "drop": reason or None, "detail": {...} or None,
# "usage": {"requests": backend calls, "cached": cache hits, "cost": estimated spend}, optionally "llm_failed": True
# when an LLM call for the record failed (retried by a run with retry_failed)}. Plain dicts, so they
# are one JSON line in a step's parts file and cross process and Ray boundaries as they are.
Outcome = dict[str, Any]

STEP_TYPES: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step type available to pipelines by its ``type`` name."""
    if cls.type in STEP_TYPES and STEP_TYPES[cls.type] is not cls:
        raise ValueError(f"step type {cls.type!r} registered twice")
    STEP_TYPES[cls.type] = cls
    return cls


def dumps_key(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def text_of(value: Any) -> str:
    """The text of a field: a string as it is; a chat (list of messages) as its contents joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in value)
    raise TypeError(f"expected a string or a list of messages, got {type(value).__name__}")


TEXT = (str, list)  # what a text field may hold: a string or chat messages


class Step:
    """Base of every step; subclasses set ``type``, ``Config``, ``version``, ``resources``, ``mode``."""

    type: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]]
    version: ClassVar[str] = "1"
    resources: ClassVar[str] = "cpu"  # "cpu" or "llm"
    mode: ClassVar[str] = "map"  # "map" or "global"

    def __init__(self, config: BaseModel, **_: Any):
        self.config = config

    # ---- declarations
    def input_fields(self) -> dict[str, tuple[type, ...]]:
        """Fields every input record must have, with the types they may hold."""
        return {}

    def output_fields(self) -> list[str]:
        return []

    def check_record(self, record: dict, path: str, line: int) -> None:
        """Checks beyond :meth:`input_fields` (optional fields with rules of their own); raise a
        :class:`~novalign.data.io.DataError` naming ``path``, ``line`` and the field. Runs before the step."""

    def identity(self) -> dict[str, Any]:
        """What determines the step's output besides its input: type, version, config (hashed into the key)."""
        return {"type": self.type, "version": self.version, "config": self.config.model_dump(mode="json")}

    def key(self, input_key: str) -> str:
        return hashlib.sha256(dumps_key({"step": self.identity(), "input": input_key}).encode()).hexdigest()[:16]

    # ---- running
    def open(self) -> None:
        """Acquire what :meth:`process` needs (LLM clients); called once per worker."""

    def close(self) -> dict[str, Any]:
        """Release it; returns the worker's usage summary (if any)."""
        return {}

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        """``map`` steps: one outcome per ``(input position, record)``, in any order."""
        for _, record in items:
            yield self.process_one(record)

    def process_one(self, record: dict) -> Outcome:
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_one")

    def run_all(self, records: list[dict], pmap: Callable[[Callable, list], list]) -> list[Outcome]:
        """``global`` steps: one outcome per record, in input order. ``pmap(fn, items)`` maps a picklable pure
        function over items on the executor's workers (ordered)."""
        raise NotImplementedError


def keep(record: dict, **fields: Any) -> Outcome:
    """The outcome that keeps ``record`` (with ``fields`` added)."""
    return {"_id": record["_id"], "out": [{**record, **fields} if fields else record], "drop": None, "detail": None}


def drop(record: dict, reason: str, **detail: Any) -> Outcome:
    """The outcome that drops ``record`` for ``reason`` (detail goes to drops.jsonl)."""
    return {"_id": record["_id"], "out": [], "drop": reason, "detail": detail or None}


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TextStep(Step):
    """A step that reads one text field, the one its config's ``field`` names."""

    def input_fields(self) -> dict[str, tuple[type, ...]]:
        return {self.config.field: TEXT}
