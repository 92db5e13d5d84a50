"""Token and cost accounting for a run: per model, split into paid calls and cache hits.

Cost = prompt_tokens * prompt price + completion_tokens * completion price, with prices per million tokens
from a price table keyed by model name (exact name first, then ``fnmatch`` patterns such as ``"gpt-4o*"``).
Cache hits cost nothing and are counted apart. A model with no price has cost ``None`` ("unknown"), not 0.
"""

from __future__ import annotations

import fnmatch
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from novalign.data.io import write_json_atomic

__all__ = ["Price", "ModelUsage", "Accounting"]


@dataclass(frozen=True)
class Price:
    prompt_per_million: float
    completion_per_million: float


@dataclass
class ModelUsage:
    requests: int = 0  # calls answered by the backend (retries and re-asks count once each)
    cached_requests: int = 0  # calls answered entirely from the cache
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0


class Accounting:
    """Accumulates :class:`ModelUsage` per model for one run (thread-safe)."""

    def __init__(self, prices: dict[str, Price] | None = None, run_id: str | None = None):
        self.prices = dict(prices or {})
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.started = time.time()
        self.models: dict[str, ModelUsage] = {}
        self._lock = threading.Lock()

    def record(self, model: str, prompt_tokens: int, completion_tokens: int, *, cached: bool) -> None:
        with self._lock:
            u = self.models.setdefault(model, ModelUsage())
            if cached:
                u.cached_requests += 1
                u.cached_prompt_tokens += prompt_tokens
                u.cached_completion_tokens += completion_tokens
            else:
                u.requests += 1
                u.prompt_tokens += prompt_tokens
                u.completion_tokens += completion_tokens

    def record_failure(self, model: str) -> None:
        with self._lock:
            self.models.setdefault(model, ModelUsage()).failed_requests += 1

    def price(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        return next((p for pattern, p in self.prices.items() if fnmatch.fnmatchcase(model, pattern)), None)

    def cost(self, model: str) -> float | None:
        """Estimated spend on ``model`` in this run (price-table currency), ``None`` if it has no price."""
        price, u = self.price(model), self.models.get(model, ModelUsage())
        if price is None:
            return None
        return (u.prompt_tokens * price.prompt_per_million + u.completion_tokens * price.completion_per_million) / 1e6

    def to_dict(self) -> dict:
        with self._lock:
            models = {m: asdict(u) | {"cost": self.cost(m)} for m, u in sorted(self.models.items())}
        costs = [m["cost"] for m in models.values()]
        total = {k: sum(m[k] for m in models.values()) for k in asdict(ModelUsage())}
        total["cost"] = None if any(c is None for c in costs) and costs else sum(c or 0.0 for c in costs)
        return {"run_id": self.run_id, "started": self.started, "elapsed_s": round(time.time() - self.started, 3),
                "models": models, "total": total}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    def print(self, console=None) -> None:
        """A table of the run's usage (stderr by default)."""
        from rich.console import Console
        from rich.table import Table

        data = self.to_dict()
        table = Table(title=f"LLM usage, run {data['run_id']}")
        for col in ("model", "calls", "cached", "failed", "prompt tok", "completion tok", "cost"):
            table.add_column(col, justify="left" if col == "model" else "right")
        rows = list(data["models"].items()) + ([("total", data["total"])] if len(data["models"]) > 1 else [])
        for name, m in rows:
            cost = "n/a (no price)" if m["cost"] is None else f"{m['cost']:.4f}"
            table.add_row(name, str(m["requests"]), str(m["cached_requests"]), str(m["failed_requests"]),
                          str(m["prompt_tokens"]), str(m["completion_tokens"]), cost)
        (console or Console(stderr=True)).print(table)
