"""The logs of ``novalign grpo`` / ``novalign ppo``: one metrics record per iteration and a sample table.

:func:`base_record` -- reward (mean, std, per source), failed LLM judgments per judge, KL, clip fraction,
response lengths, truncation, advantages; :func:`log_samples` -- every ``train.sample_every`` iterations the
rollouts as prompt / completion / reward rows (``samples.jsonl`` and a TensorBoard text table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from novalign.data.io import append_jsonl, filter_jsonl
from novalign.train.metrics_log import MetricsLog

__all__ = ["base_record", "log_iteration", "log_samples", "truncate_samples_after"]


def base_record(step: int, batch: Any, loss: float, clipped: int, epochs: int, adv: torch.Tensor) -> dict[str, Any]:
    """The log fields GRPO and PPO share: reward (mean, std, per source, judge failures), KL, clip fraction,
    lengths, advantages."""
    n, mask, rewards = batch.num_tokens, batch.mask, batch.rewards
    record: dict[str, Any] = {
        "step": step, "loss": loss, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "kl_mean": float((batch.kl * mask).sum() / n), "clip_fraction": clipped / (n * epochs),
        "response_length": float(mask.sum(1).float().mean()), "truncated_fraction": float(batch.truncated.float().mean()),
        "advantage_std": float(adv.cpu()[mask.bool()].std()) if n > 1 else 0.0,
    }
    for name, values in batch.parts.items():
        v = torch.tensor(values, dtype=torch.float32)
        record[f"reward_{name}_mean"], record[f"reward_{name}_std"] = float(v.mean()), float(v.std())
    for name, count in batch.failures.items():
        record[f"reward_{name}_failures"] = count
    return record


def log_iteration(run: Any, metrics: MetricsLog, record: dict[str, Any], console_print: Callable) -> None:
    t = run.cfg.train
    if record["step"] % t.log_every == 0 or record["step"] == run.iterations:
        metrics.log(record)
        if t.progress:
            failed = sum(v for k, v in record.items() if k.endswith("_failures"))
            console_print(f"iteration {record['step']}/{run.iterations}: reward {record['reward_mean']:.3f}, "
                          f"kl {record['kl_mean']:.4f}, loss {record['loss']:.4f}"
                          + (f", {failed} failed judgments" if failed else ""))


def _prompt_text(messages: list[dict]) -> str:
    """The prompt as shown in the sample table: its last message's content."""
    return str(messages[-1].get("content", "")) if messages else ""


def _md_cell(text: str, limit: int = 500) -> str:
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def log_samples(run: Any, metrics: MetricsLog, step: int, chosen: list, batch: Any) -> None:
    """Every ``train.sample_every`` iterations: this iteration's rollouts as prompt / completion / reward rows
    (each component's reward too), appended to ``<output_dir>/samples.jsonl`` (tagged with the iteration)
    and, when TensorBoard is on, a markdown text table under ``samples``."""
    every = run.cfg.train.sample_every
    if not every or step % every:
        return
    rows = [{"step": step, "prompt_index": r.prompt_index, "sample_index": r.sample_index,
             "prompt": _prompt_text(chosen[r.prompt_index][0]), "completion": r.text,
             "reward": float(reward), "truncated": bool(r.truncated),
             **{f"reward_{name}": values[i] for name, values in batch.parts.items()}}
            for i, (r, reward) in enumerate(zip(batch.rollouts, batch.rewards.tolist()))]
    append_jsonl(run.session.out / "samples.jsonl", rows)
    tb = getattr(metrics, "_tb", None)
    if tb is not None:
        table = ["| prompt | completion | reward |", "| --- | --- | --- |"]
        table += [f"| {_md_cell(r['prompt'])} | {_md_cell(r['completion'])} | {r['reward']:.4g} |" for r in rows]
        tb.add_text("samples", "\n".join(table), step)


def truncate_samples_after(run: Any, step: int) -> None:
    """On resume, drop sample rows newer than the checkpoint (as the metrics log does)."""
    filter_jsonl(run.session.out / "samples.jsonl", lambda r: r.get("step", 0) <= step)
