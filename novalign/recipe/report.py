"""The report of ``novalign run``: ``report.md``, ``summary.json`` and PNG charts in ``<runs_dir>/<name>/``.

``summary.json`` holds ``{"stages": {model: {capability: pass rate, ..., "mean": ...}}, "wall_s": {stage:
seconds}, "eval_format": {model: "plain few-shot" | "chat"}, "prefs": {...}, "pas": {"<model>+pas": {"complemented":
{capability: share}}}}`` -- a Table-1-style view of how each stage changed each capability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from novalign.data.io import write_json_atomic
from novalign.eval.report import bar_chart, table
from novalign.recipe.context import read_done, stage_models

__all__ = ["collect", "deltas", "markdown_table", "write_report"]

# trainers whose metrics.jsonl go into the training-curves chart: label -> folder relative to the run
_CURVES = {"pretrain": "pretrain", "sft": "sft", "rm": "rm", "grpo": "grpo"}


def collect(ctx) -> dict[str, Any]:
    """Pass rates of every evaluated model, wall seconds of every finished stage, preference statistics."""
    rates, formats = {}, {}
    for label in stage_models(ctx):
        path = ctx.dir("eval") / f"{label}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            rates[label], formats[label] = data["rates"], data["format"]
    wall = {}
    for stage in ctx.keys:  # every stage of the recipe, in pipeline order
        done = read_done(ctx.dir(stage))
        if done is not None:
            wall[stage] = round(done["wall_s"], 1)
    prefs = ctx.dir("prefs") / "stats.json"
    env = ctx.run_dir / "environment.json"
    return {"stages": rates, "wall_s": wall, "eval_format": formats,
            "environment": json.loads(env.read_text()) if env.is_file() else None,
            "prefs": json.loads(prefs.read_text()) if prefs.is_file() else None, "pas": _pas_stats(ctx, rates)}


def _pas_stats(ctx, rates: dict) -> dict[str, Any] | None:
    """For each ``<model>+pas``: the share of prompts per capability that PAS complemented (the rest it left
    unchanged), read from the eval replies."""
    out = {}
    for label in rates:
        path = ctx.dir("eval") / f"{label}_replies.jsonl"
        if not label.endswith("+pas") or not path.is_file():
            continue
        added: dict[str, list[bool]] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            added.setdefault(row["capability"], []).append(bool(row.get("complement")))
        out[label] = {"complemented": {c: sum(v) / len(v) for c, v in added.items()}}
    return out or None


def deltas(rates: dict[str, dict[str, float]], against: str) -> dict[str, dict[str, float]]:
    """Pass-rate differences of every other model against model ``against``, per capability.

    >>> deltas({"base": {"math": 0.2}, "sft": {"math": 0.5}}, "base")
    {'sft': {'math': 0.3}}
    """
    if against not in rates:
        return {}
    ref = rates[against]
    return {m: {c: round(r[c] - ref[c], 6) for c in r if c in ref} for m, r in rates.items() if m != against}


def markdown_table(rates: dict[str, dict[str, float]], fmt: str = "{:.0%}") -> str:
    if not rates:
        return "(no models evaluated)\n"
    caps = list(next(iter(rates.values())))
    rows = [[model, *(fmt.format(row.get(c, float("nan"))) for c in caps)] for model, row in rates.items()]
    return "\n".join(table(["model", *caps], rows)) + "\n"


def _bars(path: Path, rates: dict[str, dict[str, float]], title: str, ylabel: str) -> None:
    caps = list(next(iter(rates.values())))
    bar_chart(path, title, caps, {model: [row.get(c) for c in caps] for model, row in rates.items()}, ylabel)


def _curves(ax, run_dir: Path) -> None:
    for label, folder in _CURVES.items():
        path = run_dir / folder / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
        if label == "grpo":
            pts = [(r["step"], r["reward_mean"]) for r in rows if "reward_mean" in r]
            label = "grpo reward"
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
    ax.set_xlabel("step")
    ax.set_yscale("symlog")
    ax.set_title("training curves (loss; GRPO: mean reward)")
    ax.legend(fontsize=7)


def _charts(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates, made = summary["stages"], []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=90)
        plt.close(fig)
        made.append(name)

    def bars(name: str, data: dict, title: str, ylabel: str) -> None:
        _bars(run_dir / name, data, title, ylabel)
        made.append(name)

    if rates:
        bars("pass_rates.png", rates, "pass rate per capability (held-out prompts)", "pass rate")
        for against, name in (("base", "deltas.png"), ("sft", "deltas_vs_sft.png")):
            d = {m: r for m, r in deltas(rates, against).items() if against == "base" or not m.startswith("base")}
            if d:
                bars(name, d, f"pass-rate delta vs {against}", "delta")
        merged = {m: r for m, r in rates.items() if m == "sft" or m.startswith(("spec_", "merge_"))}
        if len(merged) > 1:
            bars("merge.png", merged, "merge comparison: specialists and merges", "pass rate")
    fig, ax = plt.subplots(figsize=(7, 4))
    _curves(ax, run_dir)
    save(fig, "training_curves.png")
    if summary["wall_s"]:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh(list(summary["wall_s"]), list(summary["wall_s"].values()))
        ax.set_xlabel("wall seconds")
        ax.set_title(f"stage wall time (total {sum(summary['wall_s'].values()):.0f} s)")
        save(fig, "wall_times.png")
    return made


def prefs_chain_text(p: dict) -> str:
    """The prefs stage's funnel in one paragraph (its ``stats.json`` from :mod:`novalign.recipe.prefs_chain`)."""
    models = ", ".join(f"{m} {k}" for m, k in p["samples_by_model"].items())
    steps = []
    for f in p["funnel"]:
        why = "; ".join(f"{n} {r}" for r, n in f["dropped"].items())
        steps.append(f"{f['step']} {f['out']}" + (f" ({why})" if why else ""))
    rates = ", ".join(f"{c} {r:.0%}" for c, r in p["sample_pass_rate"].items())
    return (f"The preference-data chain on {p['prompts']} prompts, {p['samples']} samples ({models}): "
            + " -> ".join(steps) + f"; {p['groups']} RM groups. SFT sample pass rate (the RL starting point): {rates}")


def write_report(ctx) -> dict[str, Any]:
    """Write ``summary.json``, the charts and ``report.md`` for the run; returns the summary."""
    summary = collect(ctx)
    run_dir = ctx.run_dir
    write_json_atomic(run_dir / "summary.json", summary, indent=1)
    charts = _charts(run_dir, summary)
    rates = summary["stages"]
    if ctx.cfg.data.eval_suites is None:
        intro = ("Pass rate per capability on held-out world prompts (greedy; every answer graded by the world's "
                 f"checkers; {ctx.cfg.world.eval_per_capability} prompts per capability). The base model is evaluated "
                 f"with plain-text few-shot prompts in its pretraining format ({ctx.cfg.world.few_shot} solved examples "
                 "per prompt); every other model with its chat template.")
    else:
        intro = ("Every model on the recipe's eval suites (`novalign eval`; columns are `<suite>.<metric>`, per-sample "
                 "records under `eval/suites/`).")
    lines = [f"# novalign run: {ctx.cfg.name}", "", intro, "", markdown_table(rates)]
    for against in ("base", "sft"):
        d = deltas(rates, against)
        if against == "sft":  # the models SFT came from are not compared against it
            d = {m: r for m, r in d.items() if not m.startswith("base")}
        if d:
            lines += [f"## Delta against {against}", "", markdown_table(d, "{:+.0%}")]
    if summary["prefs"] and summary["prefs"].get("chain"):
        lines += ["## Preference data", "", prefs_chain_text(summary["prefs"]), ""]
    elif summary["prefs"]:
        p = summary["prefs"]
        lines += ["## Preference data", "", f"{p['groups']} groups from {p['prompts']} prompts x {p['samples'] // max(1, p['prompts'])} "
                  f"samples; {p['dropped_near_duplicates']} near-duplicates (ROUGE-L) and {p.get('dropped_empty', 0)} empty "
                  f"replies dropped; {p['groups_without_signal']} "
                  "prompts had no score difference. SFT sample pass rate (the RL starting point): "
                  + ", ".join(f"{c} {r:.0%}" for c, r in p["sample_pass_rate"].items()), ""]
    for label, stats in (summary.get("pas") or {}).items():
        model = label.removesuffix("+pas")
        share = stats["complemented"]
        implicit = (f" On the implicit-requirement prompts the pass rate goes from {rates[model]['implicit']:.0%} "
                    f"({model}) to {rates[label]['implicit']:.0%} ({label}).") if "implicit" in rates.get(model, {}) else ""
        lines += [f"## PAS in front of {model}", "",
                  f"`{label}` is `{model}` unchanged, with the PAS model rewriting each last user turn first (report "
                  "section 4.6; abstain -> the prompt goes through unchanged). Share of prompts PAS complemented: "
                  + ", ".join(f"{c} {r:.0%}" for c, r in share.items()) + "." + implicit, ""]
    lines += ["## Stage wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {w:.1f} |" for s, w in summary["wall_s"].items()]
    lines += [f"| total | {sum(summary['wall_s'].values()):.1f} |", ""]
    if env := summary.get("environment"):
        versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines += ["## Environment", "", f"{env['cpu']}, torch CPU kernels {env['torch_cpu_capability']}, "
                  f"{env['torch_threads']} threads; Python {env['python']}, {versions}. The numbers are reproducible "
                  "given the seed, these versions and this kernel set (see `novalign.recipe.context.environment`).", ""]
    lines += [f"![{c}]({c})" for c in charts]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    ctx.print(f"report written to {run_dir / 'report.md'}")
    return summary
