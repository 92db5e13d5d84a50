"""Records in and out: JSON-lines and Parquet readers, and the one place that writes record files.

Reading: every problem with the data is reported as a :class:`DataError` that names the
file, the line (JSON-lines) or row (Parquet), the offending field and what is
wrong with it, so that a bad record in a million-line file can be found and
fixed directly. :class:`SkipReport` collects such errors when the caller has
chosen to skip invalid records instead of stopping at the first one.

Writing (every stage writes through these, so that a kill never leaves a half-written file behind):

* :func:`write_jsonl` / :func:`write_json_atomic` -- a whole file, written to a hidden temporary file beside
  it, fsynced and renamed over it: readers see the old file or the new one, never a mix.
* :func:`atomic_directory` -- the same for a folder (a saved model, a merge).
* :class:`KeyedAppender` -- a resumable JSON-lines file keyed by one field, one durable line (flush + fsync)
  per record, for runs that write results as they finish and skip finished keys on a rerun;
  :func:`append_jsonl` appends without a key (logs) and :func:`filter_jsonl` cuts a log back on resume.
* :func:`repair_tail` -- what a kill mid-write leaves is a last line without its newline: it is cut off with
  a warning and counted. Damage anywhere else is a :class:`DataError` naming file and line, never skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "DataError",
    "SkipReport",
    "iter_records",
    "read_valid",
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "write_jsonl",
    "write_json_atomic",
    "atomic_directory",
    "clean_stale",
    "OutputLocked",
    "output_lock",
    "append_jsonl",
    "filter_jsonl",
    "repair_tail",
    "read_keyed",
    "KeyedAppender",
]

log = logging.getLogger("novalign.data.io")
T = TypeVar("T")

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


def read_valid(paths: Iterable[str | os.PathLike[str]], convert: Callable[[dict[str, Any], str, int], T], *,
               skip_invalid: bool) -> tuple[list[T], SkipReport]:
    """``convert(record, path, line)`` of every record of ``paths``, in order. A :class:`DataError` (a line that
    is not a JSON object, or one ``convert`` raises) is raised, or with ``skip_invalid`` counted in the returned
    report and its record left out: the one skip-or-raise rule of the loaders. A file with no records at all
    (empty, or only blank lines) is a :class:`DataError` naming it: it is almost always the wrong path."""
    report = SkipReport()
    out: list[T] = []
    for raw_path in paths:
        path = str(raw_path)
        seen = False
        for line, record in iter_records(path, skip=report if skip_invalid else None):
            seen = True
            try:
                out.append(convert(record, path, line))
            except DataError as err:
                if not skip_invalid:
                    raise
                report.add(err)
        if not seen and not report.total:
            raise DataError(path, None, None, "the file holds no records", reason="empty file")
    return out, report


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


# ------------------------------------------------------------------------------------------------ writing


def _json_line(record: Any, default: Callable[[Any], Any] | None, where: str) -> bytes:
    """One record as a UTF-8 JSON line; a value JSON cannot hold fails here, before anything is written."""
    try:
        return (json.dumps(record, ensure_ascii=False, default=default) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: cannot be written as JSON: {exc}") from exc


@contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle on a hidden temporary file beside ``path``; on success it is fsynced and renamed over
    ``path`` (one ``os.replace``), on any error deleted. The name carries pid and thread, so two writers of
    the same file never share a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Any], *,
                default: Callable[[Any], Any] | None = None) -> int:
    """Write ``records`` as UTF-8 JSON lines (non-ASCII kept as is), atomically; returns how many.

    ``default`` is passed to :func:`json.dumps` (e.g. ``str`` for values JSON has no type for); without it
    such a value is a ``TypeError`` naming the file and the record's index, and the old file is untouched.
    """
    path = Path(path)
    n = 0
    with _atomic_file(path) as fh:
        for n, record in enumerate(records, start=1):
            fh.write(_json_line(record, default, f"{path}: record {n}"))
    return n


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write one JSON document (with a final newline), atomically; returns ``path``."""
    path = Path(path)
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=default) + "\n"
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{path}: cannot be written as JSON: {exc}") from exc
    with _atomic_file(path) as fh:
        fh.write(text.encode("utf-8"))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove what killed writers of ``out`` left: ``.<name>.tmp-<pid>`` folders of dead pids. A dead pid's
    ``.<name>.old-<pid>`` is the previous ``out``, moved aside just before the new one went in: deleted when
    ``out`` exists, renamed back to ``out`` when it does not (the kill fell between the two renames).
    Returns the paths removed or restored."""
    done = []
    for kind in ("tmp", "old"):
        for stale in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = stale.name.rsplit("-", 1)[1]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(stale, out)
            else:
                shutil.rmtree(stale, ignore_errors=True)
            done.append(stale)
    return done


@contextmanager
def atomic_directory(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it replaces ``out`` in one rename, on any error
    (or Ctrl-C) it is deleted. A SIGKILL leaves only a hidden ``.<name>.tmp-<pid>`` folder, never a partial
    ``out``; the next writer of ``out`` cleans it (:func:`clean_stale`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)  # a killed run's leftovers are never cleaned otherwise
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_tree(tmp)  # a rename is only durable once the data it points at is on disk
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and every folder (so their entries are durable too), bottom-up. Files
    that libraries wrote (``torch.save``, safetensors) are not fsynced by them."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


class OutputLocked(RuntimeError):
    """Another process is writing the same output folder."""


@contextmanager
def output_lock(folder: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``<folder>/.novalign.lock``, ``flock``) while a command writes it.

    Two processes appending to one run's files interleave their records and corrupt them; the second one is
    refused at once, naming the folder and the pid that holds it. The kernel drops the lock when the holder
    exits, however it exits, so a killed run never leaves a stale lock behind.

    Raises:
        OutputLocked: the lock is held by another process.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".novalign.lock"
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid, _, holder = fh.read().strip().partition(" ")
            raise OutputLocked(f"{folder}: another `{holder or 'novalign'}` (pid {pid or 'unknown'}) is writing this "
                               f"folder; wait for it to finish or use another output folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {command}")  # who holds it, for the refusal message
        fh.flush()
        yield path
    finally:
        fh.close()  # closing the descriptor releases the lock


# ------------------------------------------------------------------------------------ appending, resuming

_TAIL_BLOCK = 1 << 16  # bytes read at a time when looking backwards for the last newline


def _end_of_last_line(fh: IO[bytes], size: int) -> int:
    """Offset just after the file's last ``\\n`` (0 if there is none), reading backwards block by block so
    that a large file is not read whole."""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        fh.seek(start)
        i = fh.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Make a JSON-lines file safe to append to; returns how many torn last lines were dropped (0 or 1).

    Every writer here ends a record with its newline, so a last line without one was cut short by a kill
    mid-write. If that line still parses as JSON (only the newline was lost) the newline is added; otherwise
    the line is cut off the file, with a warning naming file and line. Nothing else is looked at: damage
    before the last line is found by the reader, which names it as a :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        cut = _end_of_last_line(fh, size)
        fh.seek(cut)
        tail = fh.read()
        try:
            json.loads(tail.decode("utf-8"))
            complete = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete:
            fh.write(b"\n")
        else:
            fh.seek(0)
            lineno = fh.read(cut).count(b"\n") + 1  # only on this rare path is the file read whole
            log.warning("%s:%d: dropped a truncated last record (%d bytes, cut short by an interrupted write)",
                        path, lineno, len(tail))
            fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    return 0 if complete else 1


def read_keyed(path: str | os.PathLike[str], key: str) -> tuple[dict[str, dict[str, Any]], int]:
    """The records a resumable file holds, by ``str(record[key])``, and how many torn last lines were dropped.

    The tail is repaired first (:func:`repair_tail`). A missing file is no records. Any other bad line -- not
    JSON, not an object, no ``key``, a key written twice -- is a :class:`DataError` naming file and line.
    """
    path = Path(path)
    dropped = repair_tail(path)
    done: dict[str, dict[str, Any]] = {}
    first: dict[str, int] = {}
    if not path.is_file():
        return done, dropped
    for line, record in _iter_jsonl(path, None):
        if key not in record:
            raise DataError(path, line, key, f"a record without its key field {key!r}", reason="record without key")
        value = str(record[key])
        if value in done:
            raise DataError(path, line, key, f"{key} {value!r} written twice (also on line {first[value]}; two runs "
                            "writing at once?)", reason="duplicate key")
        done[value], first[value] = record, line
    return done, dropped


def append_jsonl(path: str | os.PathLike[str], records: Iterable[Any], *,
                 default: Callable[[Any], Any] | None = None) -> int:
    """Append ``records`` to a JSON-lines log (no key, no read-back); durable when it returns (one fsync).

    A torn last line left by an earlier kill is dropped first (:func:`repair_tail`), so the new lines do not
    glue onto it. Returns how many records were written.
    """
    path = Path(path)
    lines = [_json_line(r, default, f"{path}: appended record {i}") for i, r in enumerate(records, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    with open(path, "ab") as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)


def filter_jsonl(path: str | os.PathLike[str], keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite a JSON-lines file (atomically) with only the records ``keep`` accepts; returns how many went.

    Used on resume to cut a log back to its checkpoint. A torn last line is dropped first (:func:`repair_tail`);
    any other bad line is a :class:`DataError`. A missing file is left missing (0).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    repair_tail(path)
    records = [record for _, record in _iter_jsonl(path, None)]
    kept = [r for r in records if keep(r)]
    if len(kept) < len(records):
        write_jsonl(path, kept)
    return len(records) - len(kept)


class KeyedAppender:
    """A resumable JSON-lines file keyed by one field: each :meth:`append` is on disk when it returns.

    Opening reads back what an earlier run wrote (:func:`read_keyed`): ``done`` maps each finished key to its
    record and ``dropped`` counts the torn last line cut off (0 or 1), so a rerun asks only for the keys not in
    ``done``. ``fresh=True`` starts the file over instead. The file is created by its first record.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> with KeyedAppender(path, "id") as sink:
    ...     sink.append({"id": 1, "answer": "4"})
    >>> sorted(KeyedAppender(path, "id").done)
    ['1']
    """

    def __init__(self, path: str | os.PathLike[str], key: str, *, fresh: bool = False,
                 default: Callable[[Any], Any] | None = None) -> None:
        self.path, self.key, self.default = Path(path), key, default
        if fresh:
            self.path.unlink(missing_ok=True)
            self.done, self.dropped = {}, 0
        else:
            self.done, self.dropped = read_keyed(self.path, key)
        self.count = 0  # records appended through this object
        self._seen = set(self.done)  # apart from ``done``, which callers may be iterating while we append
        self._fh: IO[bytes] | None = None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then flush and fsync. A record without the key, or with a key
        already in the file, is a ``ValueError`` and writes nothing."""
        if not isinstance(record, dict):
            raise TypeError(f"{self.path}: a record must be a dict, got {type(record).__name__}")
        if self.key not in record:
            raise ValueError(f"{self.path}: a record without its key field {self.key!r}")
        value = str(record[self.key])
        if value in self._seen:
            raise ValueError(f"{self.path}: {self.key} {value!r} written twice")
        line = _json_line(record, self.default, f"{self.path}: the record with {self.key} {value!r}")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - held until close(); see __exit__
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._seen.add(value)
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> KeyedAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
