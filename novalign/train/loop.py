"""THE training loop. Every trainer (SFT now; RM, DPO, KTO later) supplies an objective and a data plan.

One optimizer step, spelled out (see :func:`train`):

1. the step's micro-batches are the next ``grad_accum * world_size`` entries of the epoch's data plan;
   rank r takes every ``world_size``-th of them, starting at r;
2. the loss tokens of the whole effective batch are counted first (an all-reduce of one number);
3. every micro-batch backpropagates ``loss_sum / tokens_in_effective_batch``, so the gradient is the
   token mean over the effective batch -- not a mean of micro-batch means (see ``losses.py``);
4. gradients are summed over ranks, clipped, and the optimizer and LR schedule step;
5. metrics are logged; held-out loss and checkpoints happen every N steps.

Resume is exact: the data plan of an epoch is a pure function of (seed, epoch), and a checkpoint stores
the model, optimizer, scheduler, RNG states and the step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from novalign.config import OptimConfig, TrainConfig
from novalign.models.packing import Batch
from novalign.train import dist as D
from novalign.train.engine import autocast_factory, start_engine, uses_bf16
from novalign.train.losses import token_mean_scale
from novalign.train.metrics_log import MetricsLog, plot_loss_curve
from novalign.train.state import TrainState


class Objective(Protocol):
    """What a trainer plugs into the loop."""

    def num_loss_tokens(self, batch: Batch) -> int:
        """Tokens (or pairs, or samples) this batch contributes to the effective-batch mean."""

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed (not averaged) loss of the batch and extra summed metrics."""

    # Optional, looked up with getattr:
    #   metric_names: tuple[str, ...] -- the keys loss_sum returns in its metric dict. Declaring them lets
    #       every rank join the same all-reduces even when it saw no micro-batch.
    #   reduce_metrics(sums: dict[str, float], normalizer: float) -> dict[str, float] -- turn metric sums
    #       (over the effective batch or the eval set) into logged values; default: each sum / normalizer.


def reduce_metrics(objective: Objective, sums: dict[str, float], normalizer: float, info: D.DistInfo, device) -> dict[str, float]:
    """Sum an objective's extra metrics over ranks and turn them into logged values (see :class:`Objective`)."""
    names = getattr(objective, "metric_names", None)
    if names is not None:
        sums = {k: D.all_reduce_sum(sums.get(k, 0.0), info, device) for k in names}
    custom = getattr(objective, "reduce_metrics", None)
    if custom is not None:
        return custom(sums, normalizer)
    return {k: v / normalizer for k, v in sums.items()} if normalizer else {}


@dataclass
class DataPlan:
    """Micro-batch specs per epoch (a pure function of the epoch) and how to turn one into a Batch."""

    micro_batches: Callable[[int], Sequence[Any]]
    collate: Callable[[Any], Batch]


@dataclass
class LoopResult:
    state: TrainState
    final_loss: float | None
    eval_loss: float | None
    resumed_from: Path | None
    module: nn.Module | None = None  # the ObjectiveModule that was trained (FSDP-sharded if so configured)
    history: list[dict] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the last eval's metrics, as logged


def _steps_per_epoch(num_micro: int, per_step: int) -> int:
    return max(1, math.ceil(num_micro / per_step))


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def _rank_share(specs: Sequence[Any], info: D.DistInfo, pad: bool) -> tuple[list[Any], int]:
    """This rank's micro-batch specs (every world_size-th, starting at rank) and, when ``pad`` (FSDP: every
    rank must run the same number of forwards), how many zero-weighted repeats of ``specs[0]`` to add."""
    mine = list(specs[info.rank :: info.world_size])
    dummies = math.ceil(len(specs) / info.world_size) - len(mine) if pad and specs else 0
    return mine, dummies


def evaluate(module: nn.Module, objective: Objective, plan: DataPlan, info: D.DistInfo, device, autocast, pad: bool = False) -> float | None:
    """Token-mean held-out loss over the whole eval plan (sharded over ranks)."""
    return evaluate_metrics(module, objective, plan, info, device, autocast, pad)[0]


def _sequence_parallel(train_cfg: TrainConfig, objective: Objective, info: D.DistInfo, fsdp: bool):
    """The data-parallel view of the ranks and the per-batch transform under sequence parallelism (P ranks
    share every row; see :mod:`novalign.train.sequence_parallel`): identity and ``info`` when P = 1."""
    size = getattr(train_cfg, "sequence_parallel", 1)
    if size == 1:
        return info, lambda batch: batch
    from novalign.train import sequence_parallel as SP

    if not getattr(objective, "supports_sequence_parallel", False):
        raise ValueError(f"train.sequence_parallel={size}: {type(objective).__name__} does not support it (SFT does)")
    if fsdp:
        raise ValueError("train.sequence_parallel > 1 works with train.distributed=ddp, not fsdp")
    SP.set_group(info.world_size, info.rank, size)
    data_info = D.DistInfo(rank=info.rank // size, world_size=info.world_size // size, local_rank=info.local_rank)
    return data_info, lambda batch: SP.shard_batch(batch, info.rank % size, size)


def evaluate_metrics(
    module: nn.Module, objective: Objective, plan: DataPlan, info: D.DistInfo, device, autocast, pad: bool = False,
    data_info: D.DistInfo | None = None, shard: Callable[[Batch], Batch] = lambda batch: batch,
) -> tuple[float | None, dict[str, float]]:
    """:func:`evaluate`, plus the objective's extra metrics over the whole plan (see :func:`reduce_metrics`).
    ``data_info`` and ``shard``: the data-parallel ranks and the batch transform of sequence parallelism."""
    specs = list(plan.micro_batches(0))
    if not specs:
        return None, {}
    mine, num_dummy = _rank_share(specs, data_info or info, pad)
    was_training = module.training
    module.eval()
    total, tokens = 0.0, 0
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i, spec in enumerate(mine + [specs[0]] * num_dummy):
            batch = shard(plan.collate(spec)).to(device)
            with autocast():
                loss, more = module(batch)
            if i < len(mine):
                total += float(loss)
                tokens += objective.num_loss_tokens(batch)
                for k, v in more.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
    module.train(was_training)
    total = D.all_reduce_sum(total, info, device)
    tokens = D.all_reduce_sum(tokens, info, device)
    return (total / tokens if tokens else None), reduce_metrics(objective, sums, tokens, info, device)


def accumulate_gradients(
    module: Callable[[Batch], tuple[torch.Tensor, dict]],
    batches: Sequence[Batch],
    scale: float,
    device: torch.device | str,
    autocast: Callable = contextlib.nullcontext,
    dummies: Sequence[Batch] = (),
) -> tuple[float, int, int, dict[str, float]]:
    """Backpropagate ``loss_sum * scale`` for every micro-batch; gradients add up in ``.grad``.

    ``module(batch)`` returns ``(loss_sum, extra_metric_sums)`` (an :class:`~novalign.train.dist.ObjectiveModule`).
    With ``scale = 1 / tokens_in_effective_batch`` the accumulated gradient is the gradient of the token
    mean over all micro-batches (and, after the cross-rank sum, over all ranks). ``dummies`` are run with
    weight 0 (FSDP needs every rank to run the same number of forwards). Returns the summed loss, real and
    row tokens, and the summed extra metrics of the real micro-batches.
    """
    loss_total, real_tokens, row_tokens = 0.0, 0, 0
    extra: dict[str, float] = {}
    for i, batch in enumerate([*batches, *dummies]):
        batch = batch.to(device)
        with autocast():
            loss_sum, more = module(batch)
        if i >= len(batches):
            (loss_sum * 0.0).backward()
            continue
        (loss_sum * scale).backward()
        loss_total += float(loss_sum.detach())
        real_tokens += batch.num_real_tokens
        row_tokens += batch.num_row_tokens
        for k, v in more.items():
            extra[k] = extra.get(k, 0.0) + float(v)
    return loss_total, real_tokens, row_tokens, extra


def uses_fsdp(train_cfg: TrainConfig, info: D.DistInfo, device: torch.device) -> bool:
    mode = train_cfg.distributed
    return info.world_size > 1 and (mode == "fsdp" or (mode == "auto" and device.type == "cuda"))


def train(
    model: nn.Module,
    objective: Objective,
    plan: DataPlan,
    *,
    train_cfg: TrainConfig,
    optim_cfg: OptimConfig,
    output_dir: Path,
    info: D.DistInfo,
    device: torch.device,
    eval_plan: DataPlan | None = None,
    console_print: Callable[[str], None] = print,
    train_eval_plan: DataPlan | None = None,
) -> LoopResult:
    """Run the optimizer loop to the end (or ``max_steps``), resuming from a checkpoint when there is one.

    ``train_eval_plan`` (optional) is a fixed sample of the training data evaluated alongside ``eval_plan``:
    its metrics are logged as ``train_eval_<name>`` and the generalization gap of every extra metric as
    ``gap_<name> = train_eval_<name> - eval_<name>`` (for a reward model, the report's overfitting worry).

    ``model`` is the plain model on ``device``; the loop wraps it with the objective into one
    :class:`~novalign.train.dist.ObjectiveModule` (sharded with FSDP2 when configured) and returns that
    module in the result, for the caller to gather final weights from.
    """
    ckpt_root = output_dir / "checkpoints"
    fsdp = uses_fsdp(train_cfg, info, device)
    data_info, shard = _sequence_parallel(train_cfg, objective, info, fsdp)
    per_step = train_cfg.grad_accum * data_info.world_size
    num_micro_epoch0 = len(plan.micro_batches(0))
    if num_micro_epoch0 == 0:
        raise ValueError("no training data: the data plan has no micro-batches")
    steps_per_epoch = _steps_per_epoch(num_micro_epoch0, per_step)
    total_steps = train_cfg.max_steps or steps_per_epoch * train_cfg.epochs

    module = D.ObjectiveModule(model, objective)
    if fsdp:
        from novalign.models.checkpointing import decoder_layers

        D.apply_fsdp(module, decoder_layers(model), mixed_bf16=uses_bf16(train_cfg, device))
    autocast = autocast_factory(train_cfg, device, fsdp)
    engine = start_engine(module, optim_cfg, train_cfg, total_steps=total_steps, ckpt_root=ckpt_root, info=info,
                          device=device, fsdp=fsdp, console_print=console_print)
    state, resumed_from = engine.state, engine.resumed_from

    metrics = MetricsLog(output_dir, enabled=info.is_main, tensorboard=train_cfg.tensorboard)
    metrics.truncate_after(state.step)
    module.train()
    last_loss: float | None = None
    eval_loss: float | None = None
    eval_metrics: dict[str, float] = {}

    def run_evals() -> None:
        nonlocal eval_loss, eval_metrics
        eval_loss, metrics_now = evaluate_metrics(module, objective, eval_plan, info, device, autocast, pad=fsdp,
                                                  data_info=data_info, shard=shard)
        record = {"step": state.step, "eval_loss": eval_loss, **{f"eval_{k}": v for k, v in metrics_now.items()}}
        if train_eval_plan is not None:
            train_loss, train_metrics = evaluate_metrics(module, objective, train_eval_plan, info, device, autocast,
                                                         pad=fsdp, data_info=data_info, shard=shard)
            record["train_eval_loss"] = train_loss
            record.update({f"train_eval_{k}": v for k, v in train_metrics.items()})
            record.update({f"gap_{k}": train_metrics[k] - v for k, v in metrics_now.items() if k in train_metrics})
        metrics.log(record)
        eval_metrics = {k: v for k, v in record.items() if k != "step"}

    with _progress(train_cfg.progress and info.is_main) as progress:
        task = progress.add_task("train", total=total_steps, completed=state.step, loss="-", tps="-") if progress else None
        while state.step < total_steps:
            specs = plan.micro_batches(state.epoch)
            epoch_steps = _steps_per_epoch(len(specs), per_step)
            if state.step_in_epoch >= epoch_steps:
                state.epoch += 1
                state.step_in_epoch = 0
                continue
            t0 = time.perf_counter()
            step_specs = specs[state.step_in_epoch * per_step : (state.step_in_epoch + 1) * per_step]
            mine_specs, num_dummy = _rank_share(step_specs, data_info, pad=fsdp)
            mine = [shard(plan.collate(s)) for s in mine_specs]
            local_tokens = sum(objective.num_loss_tokens(b) for b in mine)
            global_tokens = int(D.all_reduce_sum(local_tokens, info, device))
            if global_tokens == 0:
                raise ValueError(f"step {state.step}: no loss tokens in the effective batch")
            dummies = [shard(plan.collate(step_specs[0]))] * num_dummy
            loss_total, real_tokens, row_tokens, extra = accumulate_gradients(
                module, mine, token_mean_scale(global_tokens, info.world_size if fsdp else 1), device, autocast, dummies=dummies
            )
            lr, grad_norm = engine.step()

            state.step += 1
            state.step_in_epoch += 1
            state.tokens_seen += global_tokens
            loss_total = D.all_reduce_sum(loss_total, info, device)
            real_tokens = int(D.all_reduce_sum(real_tokens, info, device))
            row_tokens = int(D.all_reduce_sum(row_tokens, info, device))
            last_loss = loss_total / global_tokens
            dt = time.perf_counter() - t0
            tps = real_tokens / dt if dt > 0 else 0.0
            if state.step % train_cfg.log_every == 0 or state.step == total_steps:
                metrics.log(
                    {
                        "step": state.step,
                        "epoch": state.epoch,
                        "loss": last_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "loss_tokens": global_tokens,
                        "real_tokens": real_tokens,
                        "utilization": real_tokens / row_tokens if row_tokens else 0.0,
                        "tokens_per_s": tps,
                        **reduce_metrics(objective, extra, global_tokens, info, device),
                    }
                )
            if progress is not None:
                progress.update(task, completed=state.step, loss=f"{last_loss:.4f}", tps=f"{tps:,.0f}")
            if eval_plan is not None and train_cfg.eval_every and state.step % train_cfg.eval_every == 0:
                run_evals()
            if train_cfg.save_every and state.step % train_cfg.save_every == 0 and state.step < total_steps:
                engine.save()

    if eval_plan is not None and (not train_cfg.eval_every or state.step % train_cfg.eval_every != 0):
        run_evals()
    engine.save_final()
    history = metrics.records()
    if info.is_main:
        plot_loss_curve(history, output_dir / "loss_curve.png")
    metrics.close()
    return LoopResult(
        state=state, final_loss=last_loss, eval_loss=eval_loss, resumed_from=resumed_from, module=module, history=history,
        eval_metrics=eval_metrics,
    )
