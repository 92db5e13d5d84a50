"""Reading raw training records from JSON-lines and Parquet files.

Every problem with the data is reported as a :class:`DataError` that names the
file, the line (JSON-lines) or row (Parquet), the offending field and what is
wrong with it, so that a bad record in a million-line file can be found and
fixed directly. :class:`SkipReport` collects such errors when the caller has
chosen to skip invalid records instead of stopping at the first one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "SkipReport",
    "iter_records",
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
]

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)

# Rows handed from Arrow to Python at a time when reading Parquet.
_PARQUET_BATCH_ROWS = 1024


class DataError(ValueError):
    """A problem with one record (or one line) of a data file.

    Attributes:
        path: The file the record came from.
        line: 1-based line number (JSON-lines) or row number (Parquet), or
            ``None`` when the problem concerns the whole file.
        field: Path of the offending field inside the record, e.g.
            ``"messages[2].content"``, or ``None`` if no single field is at fault.
        problem: Human-readable description of what is wrong.
        reason: Short, record-independent category used to group skipped
            records (e.g. ``"wrong role order"``); defaults to ``problem``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        field: str | None,
        problem: str,
        *,
        reason: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.reason = reason if reason is not None else problem
        super().__init__(self._render())

    @property
    def location(self) -> str:
        """``path:line`` for JSON-lines, ``path:row N`` for Parquet, ``path`` if no line."""
        if self.line is None:
            return self.path
        if self.path.lower().endswith(PARQUET_SUFFIXES):
            return f"{self.path}:row {self.line}"
        return f"{self.path}:{self.line}"

    def _render(self) -> str:
        field = f"field '{self.field}': " if self.field else ""
        return f"{self.location}: {field}{self.problem}"

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (e.g. across DataLoader workers) despite
        # the keyword-only argument.
        return (_rebuild_data_error, (self.path, self.line, self.field, self.problem, self.reason))


def _rebuild_data_error(
    path: str, line: int | None, field: str | None, problem: str, reason: str
) -> DataError:
    return DataError(path, line, field, problem, reason=reason)


class SkipReport:
    """Tally of invalid records that were skipped, grouped by reason.

    Keeps the first ``max_examples`` error messages verbatim so the user can
    go and look at concrete offending lines.
    """

    def __init__(self, max_examples: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.max_examples = max_examples

    def add(self, err: DataError) -> None:
        """Record one skipped record."""
        self.counts[err.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(err))

    @property
    def total(self) -> int:
        """Number of records skipped so far."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """Multi-line human-readable summary: counts by reason, then examples."""
        if self.total == 0:
            return "no invalid records skipped"
        noun = "record" if self.total == 1 else "records"
        lines = [f"skipped {self.total} invalid {noun}:"]
        for reason, count in self.counts.most_common():
            lines.append(f"  {count:>7}  {reason}")
        if self.examples:
            lines.append("first examples:")
            lines.extend(f"  {example}" for example in self.examples)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipReport(total={self.total}, counts={dict(self.counts)!r})"


def iter_records(
    path: str | os.PathLike[str], *, skip: SkipReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row, record)`` pairs from a ``.jsonl``/``.json`` or ``.parquet`` file.

    ``.json`` files are read as JSON-lines (one object per line). Blank lines
    are skipped. Line and row numbers are 1-based.

    Args:
        path: The file to read.
        skip: If given, lines that cannot be parsed into an object are recorded
            here and skipped; otherwise they raise :class:`DataError`.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        ValueError: the file extension is not supported.
        DataError: a line is not valid JSON or not a JSON object (unless ``skip``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    if not p.is_file():
        raise FileNotFoundError(f"data path is not a file: {p}")
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(p, skip)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(p)
    else:
        supported = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
        raise ValueError(f"{p}: unsupported data file extension {p.suffix!r} (supported: {supported})")


def _iter_jsonl(path: Path, skip: SkipReport | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON-lines reader; see :func:`iter_records`."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = _parse_json_line(path, lineno, raw)
            except DataError as err:
                if skip is None:
                    raise
                skip.add(err)
                continue
            yield lineno, record


def _parse_json_line(path: Path, lineno: int, raw: bytes) -> dict[str, Any]:
    """Decode and parse one line, raising :class:`DataError` with context on failure."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, lineno, None, f"invalid UTF-8: {exc}", reason="invalid UTF-8") from exc
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]  # tolerate a byte-order mark
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if lineno == 1 and text.lstrip().startswith("["):
            hint = " (the file looks like a JSON array; expected JSON lines, one object per line)"
        raise DataError(
            path,
            lineno,
            None,
            f"malformed JSON: {exc.msg} at column {exc.colno}{hint}",
            reason="malformed JSON",
        ) from exc
    if not isinstance(value, dict):
        hint = ""
        if isinstance(value, list):
            hint = " (expected JSON lines, one object per line, not an array)"
        raise DataError(
            path,
            lineno,
            None,
            f"expected a JSON object, got {_json_type_name(value)}{hint}",
            reason="not a JSON object",
        )
    return value


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parquet reader: converts one record batch at a time to Python dicts."""
    import pyarrow.parquet as pq  # local import: pyarrow is heavy and only needed here

    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(path, None, None, f"cannot read Parquet file: {exc}", reason="unreadable file") from exc
    row = 0
    for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _json_type_name(value: object) -> str:
    """Name a parsed JSON value's type the way JSON does."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
