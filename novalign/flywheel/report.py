"""What a user sees of a run: a progress bar per step, a summary table at the end, and ``report.md`` with a
funnel chart (``funnel.png``: records left after each step)."""

from __future__ import annotations

from pathlib import Path
from novalign.data.io import write_json_atomic

__all__ = ["StepProgress", "print_summary", "write_report", "funnel_rows"]


class StepProgress:
    """A rich progress bar for one step: records done / total, LLM calls, cache hits, cost."""

    def __init__(self, name: str, total: int, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.calls = self.cached = 0
        self.cost = 0.0
        self.name = name
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[llm]}"), console=Console(stderr=True), disable=not enabled)
        self.task = self.bar.add_task(name, total=total, llm="")

    def __enter__(self) -> StepProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def advance_done(self, n: int) -> None:
        """Records finished by an earlier run."""
        if n:
            self.bar.update(self.task, advance=n, description=f"{self.name} ({n} resumed)")

    def update(self, outcome: dict) -> None:
        usage = outcome.get("usage") or {}
        self.calls += usage.get("requests", 0)
        self.cached += usage.get("cached", 0)
        self.cost += usage.get("cost", 0.0)
        llm = f"calls {self.calls} · cache hits {self.cached} · cost {self.cost:.4f}" if self.calls or self.cached else ""
        self.bar.update(self.task, advance=1, llm=llm)


def _reasons(stats: dict) -> str:
    return "; ".join(f"{reason}: {n}" for reason, n in stats["dropped_by_reason"].items()) or "-"


def print_summary(steps: list[dict], console_print=None) -> None:
    """The end-of-run table (stderr), or plain lines through ``console_print``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pipeline summary")
    for col in ("step", "type", "in", "out", "dropped (by reason)", "wall s", "requests", "cache hits", "cost", ""):
        table.add_column(col, justify="left" if col in ("step", "type", "dropped (by reason)", "") else "right")
    for s in steps:
        table.add_row(s["name"], s["type"], str(s["records_in"]), str(s["records_out"]), _reasons(s), f"{s['wall_s']:.1f}",
                      str(s["requests"]), str(s["cache_hits"]), f"{s['cost']:.4f}",
                      "complete before" if s.get("skipped") else (f"resumed {s['resumed_records']}" if s["resumed_records"] else ""))
    Console(stderr=True).print(table)
    if console_print is not None:
        for s in steps:
            console_print(f"{s['name']}: {s['records_in']} in, {s['records_out']} out, {s['dropped']} dropped")


def funnel_rows(steps: list[dict]) -> list[tuple[str, int]]:
    """``(label, records)`` bars of the funnel: the first step's input, then each step's output."""
    if not steps:
        return []
    return [("input", steps[0]["records_in"])] + [(s["name"], s["records_out"]) for s in steps]


def _funnel_png(path: Path, rows: list[tuple[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    labels = [label for label, _ in rows][::-1]
    values = [v for _, v in rows][::-1]
    ax.barh(labels, values, color="#4c72b0")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center")
    ax.set_xlabel("records")
    ax.set_title("records after each step")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_report(run_dir: Path, steps: list[dict]) -> Path:
    """``report.md`` (per step: counts in / out / dropped by reason, wall time, requests, cache hits, cost),
    ``funnel.png`` and ``summary.json`` in ``run_dir``."""
    lines = ["# Pipeline report", "", "![funnel](funnel.png)", "",
             "| step | type | in | out | dropped | by reason | wall s | requests | cache hits | cost |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in steps:
        lines.append(f"| {s['name']} | {s['type']} | {s['records_in']} | {s['records_out']} | {s['dropped']} | "
                     f"{_reasons(s)} | {s['wall_s']:.1f} | {s['requests']} | {s['cache_hits']} | {s['cost']:.4f} |")
    lines += ["", "Each step's folder (`steps/<name>-<key>/`) holds records.jsonl, drops.jsonl (every dropped record "
              "with its reason) and stats.json.", ""]
    _funnel_png(run_dir / "funnel.png", funnel_rows(steps))
    write_json_atomic(run_dir / "summary.json", {"steps": steps})
    out = run_dir / "report.md"
    with open(out.with_name(".report.md.tmp"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    out.with_name(".report.md.tmp").replace(out)
    return out

