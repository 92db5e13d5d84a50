"""Where steps run: :class:`LocalExecutor` (this machine) and :class:`RayExecutor` (Ray Data, any cluster).

Both offer the same two calls to the pipeline, and give the same outcomes for the same input:

* ``run_map(step, items, deliver)`` -- a map step over ``(position, record)`` items; ``deliver(outcome)`` is
  called in the driver for every outcome as it arrives (the pipeline appends it to the step's parts file);
* ``pmap(fn, items)`` -- a picklable pure function over items, results in order (the per-record work of a
  global step: MinHash signatures).

Local: LLM steps run in this process on threads (the LLM client's event loop does the concurrency); CPU steps
over a process pool in chunks of ``batch_size`` records. Ray: map steps as ``map_batches`` over a Ray Dataset
with one actor per worker, each actor holding its own step -- for LLM steps its own client, all of them on the
one SQLite request cache (a path every worker can open: the same machine, or a shared filesystem); ``pmap``
as Ray tasks. Records cross into Ray as JSON strings, so any record shape survives Arrow's typing.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from novalign.flywheel.step import Outcome, Step, chunks

__all__ = ["LocalExecutor", "RayExecutor", "make_executor"]

Deliver = Callable[[Outcome], None]


def _run_chunk(step: Step, items: Sequence[tuple[int, dict]]) -> list[Outcome]:
    step.open()
    try:
        return list(step.process(items))
    finally:
        step.close()


def _in_process(step: Step, items: Sequence[tuple[int, dict]], deliver: Deliver) -> dict[str, Any]:
    step.open()
    try:
        for outcome in step.process(items):
            deliver(outcome)
    finally:
        usage = step.close()
    return usage


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 2, batch_size: int = 256):
        self.workers, self.batch_size = workers, batch_size
        self._pool: ProcessPoolExecutor | None = None

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:  # fork: the workers start at once and inherit the imported step code
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        return self._pool

    def run_map(self, step: Step, items: Sequence[tuple[int, dict]], deliver: Deliver) -> None:
        if step.resources == "llm" or self.workers == 1 or len(items) <= self.batch_size:
            _in_process(step, items, deliver)
            return
        futures = [self._processes().submit(_run_chunk, step, chunk) for chunk in chunks(items, self.batch_size)]
        for future in as_completed(futures):
            for outcome in future.result():
                deliver(outcome)

    def pmap(self, fn: Callable[[Any], Any], items: list) -> list:
        if self.workers == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._processes().map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class _RayStep:
    """A Ray Data actor: one step instance (and so one LLM client) per worker."""

    def __init__(self, step: Step):
        self.step = step
        step.open()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        items = [tuple(json.loads(x)) for x in batch["item"]]
        outcomes = [json.dumps(o, ensure_ascii=False) for o in self.step.process(items)]
        return {"outcome": np.array(outcomes, dtype=object)}

    def __del__(self):
        try:
            self.step.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class RayExecutor:
    """Ray Data executor. ``address=None`` starts a local Ray with ``workers`` CPUs (tests: 2); give a cluster
    address (``ray://...`` or ``auto``) for a real cluster."""

    name = "ray"

    def __init__(self, workers: int = 2, batch_size: int = 256, address: str | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the ray executor needs Ray Data: pip install 'novalign[ray]'") from exc
        self.workers, self.batch_size = workers, batch_size
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = workers
            ray.init(address=address, **kwargs)
            self._started = True
        else:
            self._started = False

    def run_map(self, step: Step, items: Sequence[tuple[int, dict]], deliver: Deliver) -> None:
        import ray

        if not items:
            return
        rows = [{"item": json.dumps([pos, rec], ensure_ascii=False)} for pos, rec in items]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // self.batch_size + 1, 64)))
        # LLM actors wait on the network, not the CPU: half a CPU each, so the read tasks still get one
        ds = ds.map_batches(_RayStep, fn_constructor_args=(step,), batch_size=self.batch_size, batch_format="numpy",
                            concurrency=self.workers, num_cpus=0.5 if step.resources == "llm" else 1)
        for row in ds.iter_rows():
            deliver(json.loads(row["outcome"]))

    def pmap(self, fn: Callable[[Any], Any], items: list) -> list:
        import ray

        task = ray.remote(fn)
        return ray.get([task.remote(x) for x in items])

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()


def make_executor(name: str, *, workers: int = 2, batch_size: int = 256, address: str | None = None):
    if name == "local":
        return LocalExecutor(workers, batch_size)
    if name == "ray":
        return RayExecutor(workers, batch_size, address)
    raise ValueError(f"unknown executor {name!r}; use 'local' or 'ray'")
