"""Metrics out: a JSONL log (the source of truth), TensorBoard events, and a PNG loss curve at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from novalign.data.io import append_jsonl, filter_jsonl, iter_records


class MetricsLog:
    """Appends one JSON object per record to ``<dir>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    On resume, :meth:`truncate_after` drops records newer than the checkpoint so that the log reads as one
    uninterrupted run.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(out_dir / "tensorboard"))
                except ImportError:  # tensorboard is a dependency, but never fail a run over logging
                    self._tb = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled:
            return
        filter_jsonl(self.path, lambda r: r.get("step", 0) <= step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, [record])
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [record for _, record in iter_records(self.path)]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_loss_curve(records: list[dict[str, Any]], out_png: Path, title: str = "training loss") -> Path | None:
    """Train (and eval, if logged) loss against step, as a PNG."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over the effective batch)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
