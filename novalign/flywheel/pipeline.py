"""A pipeline: sources and a chain of steps, each step's output in its own folder, resumable record by record.

Layout of a run (``run_dir``)::

    steps/<name>-<key>/   one folder per step; <key> hashes the step's type, version, config (and LLM
                          identity) with its input's key, so a changed step -- and everything downstream, whose
                          input key changed -- gets a new folder, and nothing else reruns
        step.json         what the key was made of
        parts.jsonl       map steps: one outcome per input record, appended (fsync) as it arrives
        records.jsonl     the output, in input order (written once the step is complete)
        drops.jsonl       every dropped record with its reason and detail -- nothing vanishes
        stats.json        counts in / out / dropped by reason, wall time, requests, cache hits, cost
        _SUCCESS          the completion marker, written last
    llm-cache.sqlite      the request cache (default), shared by every LLM step and worker
    report.md, funnel.png

A killed run, started again, skips complete steps, and in the step it was in asks only for the records whose
outcome is not in ``parts.jsonl`` (the torn last line of a kill is dropped and counted); requests answered
before the kill come from the request cache, so no request is paid twice. The output is assembled in input
order, so it is byte-identical to an uninterrupted run's.

A source's key is the SHA-256 of its file(s) (with its id field and limit): editing the data reruns the steps.

A recorded LLM failure (an outcome marked ``llm_failed``: the call failed after the client's retries, so no
reply is cached) is final unless the run sets ``retry_failed``: then each map step -- complete ones
reopened -- forgets those outcomes and asks for them again (the rest come from ``parts.jsonl``). If that
changes a complete step's records, every step downstream of it is deleted and rerun; their LLM replies are
in the request cache, so this asks the server only for what changed. ``_REOPENED`` (the old records' hash)
marks a reopened step until its downstream is dealt with, so a kill in between is caught on the next run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from novalign.config.base import ConfigError
from novalign.config.llm import LLMConfig
from novalign.config.pipeline import PipelineConfig, SourceConfig
from novalign.data.io import (
    DataError, KeyedAppender, SkipReport, iter_records, read_keyed, write_json_atomic, write_jsonl,
)
from novalign.flywheel.step import STEP_TYPES, Step, dumps_key
from novalign.flywheel.steps import make_step

__all__ = ["Pipeline", "RunResult", "read_source"]

Rows = list[tuple[int, dict]]  # (line or row number, record)


# --------------------------------------------------------------------------------------------- sources


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _hf_disk_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``datasets`` ``save_to_disk`` folder, in order (its ``state.json`` lists them)."""
    state = folder / "state.json"
    if not state.is_file():
        raise FileNotFoundError(f"{folder}: not a `datasets` save_to_disk folder (no state.json); a DatasetDict "
                                "folder holds one such folder per split: name the split's folder")
    files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: state.json lists missing files {missing}")
    return files


def _iter_hf_disk(files: list[Path]):
    import pyarrow as pa

    row = 0
    for f in files:
        with pa.memory_map(str(f)) as source:
            for batch in pa.ipc.open_stream(source):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record


def read_source(name: str, cfg: SourceConfig, skip: SkipReport | None = None) -> tuple[str, str, Rows]:
    """``(key, path, rows)`` of a source; each record gets ``_id`` (``id_field``'s value, or ``<name>-<line>``).

    Raises:
        DataError: a malformed line (unless ``skip``), a record without ``id_field``, or an id seen twice.
    """
    path = Path(cfg.path)
    if path.is_dir():
        files = _hf_disk_files(path)
        rows_iter = _iter_hf_disk(files)
    else:
        files = [path]
        rows_iter = iter_records(path, skip=skip)
    key = hashlib.sha256(dumps_key({"files": _sha256_files(files), "id": cfg.id_field, "limit": cfg.limit})
                         .encode()).hexdigest()[:16]
    rows: Rows = []
    seen: dict[str, int] = {}
    for line, record in rows_iter:
        if cfg.limit is not None and len(rows) >= cfg.limit:
            break
        if cfg.id_field is not None:
            if cfg.id_field not in record:
                raise DataError(path, line, cfg.id_field, "missing (the source's id_field)", reason="no id")
            rid = str(record[cfg.id_field])
        else:
            rid = f"{name}-{line}"
        if rid in seen:
            raise DataError(path, line, cfg.id_field, f"id {rid!r} also on line {seen[rid]}; ids must be unique",
                            reason="duplicate id")
        seen[rid] = line
        rows.append((line, {**record, "_id": rid}))
    return key, str(path), rows


def _type_names(types: tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list (chat messages)", int: "an integer", float: "a number", bool: "a boolean",
             dict: "an object"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_fields(step: Step, rows: Rows, path: str, skip: bool) -> tuple[Rows, list[tuple[dict, DataError]]]:
    """The rows that have every input field the step declares, and the invalid ones with their error.
    Without ``skip`` the first invalid row raises its :class:`DataError` (``file:line: field: problem``)."""
    wanted = step.input_fields()
    valid: Rows = []
    invalid: list[tuple[dict, DataError]] = []
    for line, record in rows:
        err = None
        for name, types in wanted.items():
            if name not in record or record[name] is None:
                err = DataError(path, line, name, f"missing (step {step.type} reads it)", reason=f"{name}: missing")
            elif not isinstance(record[name], types) or (isinstance(record[name], bool) and bool not in types):
                err = DataError(path, line, name, f"expected {_type_names(types)}, got {type(record[name]).__name__}",
                                reason=f"{name}: wrong type")
            if err is not None:
                break
        if err is None:
            try:
                step.check_record(record, path, line)
            except DataError as exc:
                err = exc
        if err is None:
            valid.append((line, record))
        elif skip:
            invalid.append((record, err))
        else:
            raise err
    return valid, invalid


# --------------------------------------------------------------------------------------------- running


@dataclass
class _Node:
    name: str
    step: Step
    input: str
    skip_invalid: bool


@dataclass
class RunResult:
    run_dir: Path
    steps: list[dict] = field(default_factory=list)  # each step's stats.json
    outputs: dict[str, Path] = field(default_factory=dict)  # step name -> its records.jsonl

    def records(self, step: str) -> list[dict]:
        return [r for _, r in iter_records(self.outputs[step])]


class Pipeline:
    """Sources and steps, run by an executor. In Python::

        p = Pipeline("runs/fw", llm=LLMConfig(base_url=..., model="m"))
        p.source("prompts", "prompts.jsonl")
        p.step("dedup", "exact_dedup", {"field": "prompt"})
        p.step("answers", "llm_generate", {"models": [{"name": "m"}], "n": 2})
        result = p.run()

    or from YAML: ``Pipeline.from_config(load_config(PipelineConfig, "pipeline.yaml"))``.
    """

    def __init__(self, run_dir: str | Path, *, llm: LLMConfig | None = None, executor: str = "local",
                 workers: int = 2, batch_size: int = 256, ray_address: str | None = None, skip_invalid: bool = False,
                 progress: bool = True, retry_failed: bool = False):
        self.run_dir = Path(run_dir)
        llm = llm or LLMConfig()
        if "cache_path" not in llm.model_fields_set:
            llm = llm.model_copy(update={"cache_path": str(self.run_dir / "llm-cache.sqlite")})
        self.llm = llm
        self.executor_name, self.workers, self.batch_size, self.ray_address = executor, workers, batch_size, ray_address
        self.skip_invalid, self.progress, self.retry_failed = skip_invalid, progress, retry_failed
        self.sources: dict[str, SourceConfig] = {}
        self.nodes: list[_Node] = []

    def source(self, name: str, path: str | Path, **options: Any) -> Pipeline:
        self.sources[name] = SourceConfig(path=str(path), **options)
        return self

    def step(self, name: str, step: str | Step, config: dict | None = None, *, input: str | None = None,
             skip_invalid: bool | None = None) -> Pipeline:
        """Add a step (a registered type name and its config, or a :class:`Step`); ``input`` defaults to the
        previous step, or to the only source."""
        if any(n.name == name for n in self.nodes) or name in self.sources:
            raise ValueError(f"step name {name!r} is already taken")
        if isinstance(step, str):
            step = make_step(step, config or {}, llm=self.llm)
        if input is None:
            if self.nodes:
                input = self.nodes[-1].name
            elif len(self.sources) == 1:
                input = next(iter(self.sources))
            else:
                raise ValueError(f"step {name!r}: name its input (one of the sources {sorted(self.sources)})")
        known = list(self.sources) + [n.name for n in self.nodes]
        if input not in known:
            close = difflib.get_close_matches(input, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"step {name!r}: input {input!r} is no source or earlier step{hint}; known: {known}")
        self.nodes.append(_Node(name, step, input, self.skip_invalid if skip_invalid is None else skip_invalid))
        return self

    @classmethod
    def from_config(cls, cfg: PipelineConfig, source: str = "pipeline") -> Pipeline:
        """Build from a :class:`PipelineConfig`; a bad step is a :class:`ConfigError` naming it (did-you-mean)."""
        from novalign.config.loading import format_validation_error

        p = cls(cfg.run_dir, llm=cfg.llm, executor=cfg.executor, workers=cfg.workers, batch_size=cfg.batch_size,
                ray_address=cfg.ray_address, skip_invalid=cfg.skip_invalid, progress=cfg.progress,
                retry_failed=cfg.retry_failed)
        for name, src in cfg.sources.items():
            p.sources[name] = src
        for i, spec in enumerate(cfg.steps):
            where = f"{source}: steps.{i} ({spec.name})"
            if spec.type not in STEP_TYPES:
                close = difflib.get_close_matches(spec.type, list(STEP_TYPES), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{where}: unknown step type {spec.type!r}{hint}; known: {', '.join(sorted(STEP_TYPES))}")
            try:
                step = make_step(spec.type, spec.config, llm=p.llm)
            except ValidationError as err:
                raise ConfigError(format_validation_error(err, STEP_TYPES[spec.type].Config,
                                                          f"{where}.config [{spec.type}]")) from None
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            try:
                p.step(spec.name, step, input=spec.input, skip_invalid=spec.skip_invalid)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return p

    def run(self, *, console_print=None) -> RunResult:
        """Run every step (complete ones are skipped), then write report.md and funnel.png."""
        from novalign.flywheel.executors import make_executor
        from novalign.flywheel.report import print_summary, write_report

        self.run_dir.mkdir(parents=True, exist_ok=True)
        result = RunResult(self.run_dir)
        inputs: dict[str, tuple[str, str, Rows | None]] = {}  # name -> (key, path, rows or None: read lazily)
        skips: dict[str, SkipReport] = {}
        for name, src in self.sources.items():
            skips[name] = SkipReport()
            inputs[name] = read_source(name, src, skips[name] if self.skip_invalid else None)
        executor = make_executor(self.executor_name, workers=self.workers, batch_size=self.batch_size,
                                 address=self.ray_address)
        folders = self._folders({name: v[0] for name, v in inputs.items()})
        try:
            for node in self.nodes:
                in_key, in_path, rows = inputs[node.input]
                key = node.step.key(in_key)
                folder = folders[node.name]
                if self.retry_failed and node.step.mode == "map":
                    _reopen_if_failed(folder)
                if (folder / "_SUCCESS").is_file():
                    stats = json.loads((folder / "stats.json").read_text()) | {"skipped": True}
                else:
                    if rows is None:
                        rows = list(iter_records(in_path))
                    stats = _run_step(node, key, in_key, rows, in_path, folder, executor, self.progress,
                                      self.retry_failed)
                    if node.input in skips and skips[node.input].total:
                        stats["source_skipped"] = dict(skips[node.input].counts)
                    write_json_atomic(folder / "stats.json", stats)
                    write_json_atomic(folder / "_SUCCESS", {"key": key, "finished": time.time()})  # last
                if (folder / "_REOPENED").is_file():  # a retry reopened this step: is what follows it still valid?
                    self._invalidate_downstream(node.name, folder, folders)
                inputs[node.name] = (key, str(folder / "records.jsonl"), None)
                result.steps.append(stats)
                result.outputs[node.name] = folder / "records.jsonl"
        finally:
            executor.close()
        write_report(self.run_dir, result.steps)
        print_summary(result.steps, console_print)
        return result


    def _folders(self, keys: dict[str, str]) -> dict[str, Path]:
        """Each step's folder, by step name (``keys``: the sources' keys)."""
        keys, out = dict(keys), {}
        for node in self.nodes:
            keys[node.name] = node.step.key(keys[node.input])
            out[node.name] = self.run_dir / "steps" / f"{node.name}-{keys[node.name]}"
        return out

    def _invalidate_downstream(self, name: str, folder: Path, folders: dict[str, Path]) -> None:
        """After a reopened step completed: if its records changed, delete every step downstream of it (they
        rerun, their LLM replies from the cache); then drop the ``_REOPENED`` marker."""
        old = json.loads((folder / "_REOPENED").read_text())["records_sha256"]
        if _sha256_files([folder / "records.jsonl"]) != old:
            below = {name}
            for node in self.nodes:  # in order, so a chain is followed to its end
                if node.input in below:
                    below.add(node.name)
                    shutil.rmtree(folders[node.name], ignore_errors=True)
        (folder / "_REOPENED").unlink()


def _failed_ids(folder: Path) -> set[str]:
    """Records whose outcome in ``folder/parts.jsonl`` is a failed LLM call."""
    done, _ = read_keyed(folder / "parts.jsonl", "_id")
    return {k for k, o in done.items() if o.get("llm_failed")}


def _reopen_if_failed(folder: Path) -> None:
    """A complete step with failed LLM calls is made incomplete again, its records' hash kept in ``_REOPENED``
    (written before ``_SUCCESS`` goes, so a kill between leaves a step that still reruns its downstream)."""
    if (folder / "_SUCCESS").is_file() and not (folder / "_REOPENED").is_file() and _failed_ids(folder):
        write_json_atomic(folder / "_REOPENED", {"records_sha256": _sha256_files([folder / "records.jsonl"])})
        (folder / "_SUCCESS").unlink()


def _run_step(node: _Node, key: str, in_key: str, rows: Rows, in_path: str, folder: Path, executor,
              progress: bool, retry_failed: bool = False) -> dict[str, Any]:
    """Run one step into ``folder`` (everything but the marker); returns its stats. ``retry_failed``: the
    outcomes of failed LLM calls already in ``parts.jsonl`` are forgotten first, so they are asked again."""
    from novalign.flywheel.report import StepProgress

    step = node.step
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "step.json", {"name": node.name, "key": key, "input": node.input,
                                             "input_key": in_key, "step": step.identity()})
    started = time.time()
    valid, invalid = check_fields(step, rows, in_path, node.skip_invalid)
    items = list(enumerate(r for _, r in valid))
    resumed = torn = retried = 0
    if step.mode == "map":
        if retry_failed and (failed := _failed_ids(folder)):
            done, _ = read_keyed(folder / "parts.jsonl", "_id")
            write_jsonl(folder / "parts.jsonl", [o for k, o in done.items() if k not in failed])  # atomic
            retried = len(failed)
        with KeyedAppender(folder / "parts.jsonl", "_id") as sink, \
                StepProgress(node.name, len(items), progress) as bar:
            done, torn = dict(sink.done), sink.dropped
            pending = [(pos, r) for pos, r in items if r["_id"] not in done]
            resumed = len(items) - len(pending)
            bar.advance_done(resumed)

            def deliver(outcome):
                sink.append(outcome)
                done[outcome["_id"]] = outcome
                bar.update(outcome)

            executor.run_map(step, pending, deliver)
        missing = [r["_id"] for _, r in items if r["_id"] not in done]
        if missing:
            raise RuntimeError(f"step {node.name}: no outcome for {len(missing)} records (first {missing[:3]})")
        outcomes = [done[r["_id"]] for _, r in items]
    else:
        with StepProgress(node.name, len(items), progress) as bar:
            outcomes = step.run_all([r for _, r in items], executor.pmap)
            if len(outcomes) != len(items):
                raise RuntimeError(f"step {node.name}: {len(outcomes)} outcomes for {len(items)} records")
            for o in outcomes:
                bar.update(o)
    stats = _assemble(node, folder, items, outcomes, invalid, started, resumed, torn, executor.name)
    stats["llm_failed"] = sum(bool(o.get("llm_failed")) for o in outcomes)
    stats["retried_failed"] = retried
    return stats


def _assemble(node: _Node, folder: Path, items, outcomes, invalid, started, resumed, torn, executor) -> dict:
    out, drops, reasons, merged = [], [], Counter(), 0
    usage = {"requests": 0, "cached": 0, "cost": 0.0}
    seen: set[str] = set()
    for (_, record), o in zip(items, outcomes, strict=True):
        for k in usage:
            usage[k] += (o.get("usage") or {}).get(k, 0)
        merged += not o["out"] and o["drop"] is None  # folded into another record's output (a group)
        if o["drop"] is not None:
            reasons[o["drop"]] += 1
            drops.append({"_id": record["_id"], "reason": o["drop"], "detail": o.get("detail"), "record": record})
        for r in o["out"]:
            if r["_id"] in seen:
                raise RuntimeError(f"step {node.name}: output id {r['_id']!r} produced twice")
            seen.add(r["_id"])
            out.append(r)
    for record, err in invalid:
        reasons[f"invalid: {err.reason}"] += 1
        drops.append({"_id": record.get("_id"), "reason": f"invalid: {err.reason}", "detail": {"error": str(err)},
                      "record": record})
    write_jsonl(folder / "records.jsonl", out)
    write_jsonl(folder / "drops.jsonl", drops)
    return {"name": node.name, "type": node.step.type, "key": folder.name.rsplit("-", 1)[1], "executor": executor,
            "records_in": len(items) + len(invalid), "records_out": len(out), "dropped": sum(reasons.values()),
            "dropped_by_reason": dict(reasons.most_common()), "merged": merged, "resumed_records": resumed, "torn_lines_dropped": torn,
            "requests": usage["requests"], "cache_hits": usage["cached"], "cost": round(usage["cost"], 6),
            "wall_s": round(time.time() - started, 3), "skipped": False}
