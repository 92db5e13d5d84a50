"""A batching queue: concurrent callers submit work items; one worker thread runs them in batches.

The worker takes the first waiting item, gathers more for up to ``max_wait_s`` (or until the batch holds
``max_batch_size`` rows, an item counting ``size(item)`` rows), and calls ``run(items)`` once for the lot.
This is what turns 32 concurrent HTTP requests to ``novalign serve`` into one ``model.generate``. Callers
wait on a ``concurrent.futures.Future``, so any thread or event loop can submit
(``await asyncio.wrap_future(queue.submit(item))``).

A failing batch does not fail the innocent: when ``run`` raises for a batch of several items, each item is
run again alone, so only the items that fail by themselves get an exception (``retryable(item)`` False
hands the batch's exception to that item instead, e.g. one whose tokens were already streamed). A cancelled
future is skipped, also while it waits in the queue.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

__all__ = ["BatchingQueue"]

I = TypeVar("I")
O = TypeVar("O")
_CLOSE = object()


class BatchingQueue(Generic[I, O]):
    def __init__(self, run: Callable[[list[I]], list[O]], *, max_batch_size: int = 32, max_wait_s: float = 0.005,
                 size: Callable[[I], int] = lambda item: 1, name: str = "novalign-batcher",
                 retryable: Callable[[I], bool] = lambda item: True):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run, self.max_batch_size, self.max_wait_s, self._size = run, max_batch_size, max_wait_s, size
        self._retryable = retryable
        self.isolated_failures = 0  # items that failed alone after their batch failed
        self._queue: queue.Queue = queue.Queue()
        self._carry: tuple[I, Future] | None = None
        self.batches_run = 0
        self.items_run = 0
        self.largest_batch = 0  # in rows
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: I) -> Future:
        """Queue ``item``; the future resolves to its output (or the exception the batch raised)."""
        if not self._thread.is_alive():
            raise RuntimeError("the batching queue is closed")
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def _gather(self) -> list[tuple[I, Future]] | None:
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _CLOSE:
            return None
        batch, rows = [first], self._size(first[0])
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch_size:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if entry is _CLOSE or rows + self._size(entry[0]) > self.max_batch_size:
                self._carry = entry
                break
            batch.append(entry)
            rows += self._size(entry[0])
        return batch

    def _run_checked(self, items: list[I]) -> list[O]:
        outputs = self._run(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"the batch function returned {len(outputs)} outputs for {len(items)} items")
        return outputs

    def _isolate(self, live: list[tuple[I, Future]], exc: BaseException) -> None:
        """The batch of ``live`` raised ``exc``: run each item alone, so one bad item fails only itself."""
        for item, fut in live:
            if len(live) == 1 or not self._retryable(item):
                fut.set_exception(exc)
                continue
            try:
                out = self._run_checked([item])[0]
            except BaseException as alone:  # noqa: BLE001 - this item's own failure, handed to its caller
                self.isolated_failures += 1
                fut.set_exception(alone)
                continue
            self._count([item])
            fut.set_result(out)

    def _count(self, items: list[I]) -> None:
        self.batches_run += 1
        self.items_run += len(items)
        self.largest_batch = max(self.largest_batch, sum(self._size(item) for item in items))

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                outputs = self._run_checked([item for item, _ in live])
            except BaseException as exc:  # noqa: BLE001 - isolated, then handed to the callers that fail alone
                self._isolate(live, exc)
                continue
            self._count([item for item, _ in live])
            for (_, fut), out in zip(live, outputs, strict=True):
                fut.set_result(out)

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the work already queued, then stop the worker."""
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join(timeout)
