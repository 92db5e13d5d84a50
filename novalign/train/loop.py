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
from novalign.train import dist as D
from novalign.train.metrics_log import MetricsLog, plot_loss_curve
from novalign.train.packing import Batch
from novalign.train.schedule import lr_factor
from novalign.train.state import TrainState, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint


class Objective(Protocol):
    """What a trainer plugs into the loop."""

    def num_loss_tokens(self, batch: Batch) -> int:
        """Tokens (or pairs, or samples) this batch contributes to the effective-batch mean."""

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed (not averaged) loss of the batch and extra summed metrics."""


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
    history: list[dict] = field(default_factory=list)


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW([g for g in groups if g["params"]], **kwargs)


def _steps_per_epoch(num_micro: int, per_step: int) -> int:
    return max(1, math.ceil(num_micro / per_step))


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


def evaluate(model: nn.Module, objective: Objective, plan: DataPlan, info: D.DistInfo, device, autocast) -> float | None:
    """Token-mean held-out loss over the whole eval plan (sharded over ranks)."""
    specs = list(plan.micro_batches(0))
    if not specs:
        return None
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for spec in specs[info.rank :: info.world_size]:
            batch = plan.collate(spec).to(device)
            with autocast():
                loss, _ = objective.loss_sum(model, batch)
            total += float(loss)
            tokens += objective.num_loss_tokens(batch)
    model.train(was_training)
    total = D.all_reduce_sum(total, info, device)
    tokens = D.all_reduce_sum(tokens, info, device)
    return total / tokens if tokens else None


def accumulate_gradients(
    model: nn.Module,
    objective: Objective,
    batches: Sequence[Batch],
    scale: float,
    device: torch.device,
    autocast: Callable = contextlib.nullcontext,
    dummies: Sequence[Batch] = (),
) -> tuple[float, int, int, dict[str, float]]:
    """Backpropagate ``loss_sum * scale`` for every micro-batch; gradients add up in ``.grad``.

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
            loss_sum, more = objective.loss_sum(model, batch)
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
    checkpoint_model: nn.Module | None = None,
    console_print: Callable[[str], None] = print,
) -> LoopResult:
    """Run the optimizer loop to the end (or ``max_steps``), resuming from a checkpoint when there is one.

    ``model`` is what the objective calls (possibly FSDP-wrapped); ``checkpoint_model`` (default: ``model``)
    is what gets its trainable parameters saved.
    """
    ckpt_model = checkpoint_model or model
    ckpt_root = output_dir / "checkpoints"
    per_step = train_cfg.grad_accum * info.world_size
    num_micro_epoch0 = len(plan.micro_batches(0))
    if num_micro_epoch0 == 0:
        raise ValueError("no training data: the data plan has no micro-batches")
    steps_per_epoch = _steps_per_epoch(num_micro_epoch0, per_step)
    total_steps = train_cfg.max_steps or steps_per_epoch * train_cfg.epochs
    warmup = int(round(optim_cfg.warmup_ratio * total_steps))

    optimizer = build_optimizer(model, optim_cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, optim_cfg.schedule, optim_cfg.min_lr_ratio)
    )
    state = TrainState()
    resumed_from = latest_checkpoint(ckpt_root) if train_cfg.resume else None
    if resumed_from is not None:
        state, pieces = load_checkpoint(resumed_from, info.rank)
        if "model" in pieces:
            missing = set(pieces["model"]) - set(ckpt_model.state_dict())
            if missing:
                raise ValueError(f"checkpoint {resumed_from} has weights this model lacks: {sorted(missing)[:5]}")
            ckpt_model.load_state_dict(pieces["model"], strict=False)
        if "optimizer" in pieces:
            optimizer.load_state_dict(pieces["optimizer"])
        if "scheduler" in pieces:
            scheduler.load_state_dict(pieces["scheduler"])
        if "rng" in pieces:
            restore_rng(pieces["rng"])
        if info.is_main:
            console_print(f"resumed from {resumed_from} at step {state.step}")

    metrics = MetricsLog(output_dir, enabled=info.is_main, tensorboard=train_cfg.tensorboard)
    metrics.truncate_after(state.step)
    use_bf16 = train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    last_loss: float | None = None
    eval_loss: float | None = None

    def save(step_state: TrainState) -> None:
        from novalign.train.state import trainable_state_dict

        save_checkpoint(
            ckpt_root,
            step_state,
            model_state=trainable_state_dict(ckpt_model) if info.is_main else None,
            optimizer_state=optimizer.state_dict() if info.is_main else None,
            scheduler_state=scheduler.state_dict() if info.is_main else None,
            rank=info.rank,
            is_main=info.is_main,
            barrier=lambda: D.barrier(info),
            keep_last=train_cfg.keep_last,
        )

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
            mine = [plan.collate(s) for s in step_specs[info.rank :: info.world_size]]
            local_tokens = sum(objective.num_loss_tokens(b) for b in mine)
            # FSDP runs collectives inside forward/backward: every rank needs the same number of micro-batches.
            # In the last step of an epoch a rank may be short; it runs zero-weighted copies of the first one.
            num_dummy = 0
            if train_cfg.distributed == "fsdp" and info.world_size > 1:
                num_dummy = math.ceil(len(step_specs) / info.world_size) - len(mine)
            global_tokens = int(D.all_reduce_sum(local_tokens, info, device))
            if global_tokens == 0:
                raise ValueError(f"step {state.step}: no loss tokens in the effective batch")
            dummies = [plan.collate(step_specs[0])] * num_dummy
            loss_total, real_tokens, row_tokens, extra = accumulate_gradients(
                model, objective, mine, 1.0 / global_tokens, device, autocast, dummies=dummies
            )
            if info.world_size > 1 and train_cfg.distributed != "fsdp":
                D.all_reduce_gradients(model, info)
            grad_norm = None
            if optim_cfg.max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, optim_cfg.max_grad_norm))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

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
                record = {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": last_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "loss_tokens": global_tokens,
                    "real_tokens": real_tokens,
                    "utilization": real_tokens / row_tokens if row_tokens else 0.0,
                    "tokens_per_s": tps,
                    **{k: v / global_tokens for k, v in extra.items()},
                }
                metrics.log(record)
            if progress is not None:
                progress.update(task, completed=state.step, loss=f"{last_loss:.4f}", tps=f"{tps:,.0f}")
            if eval_plan is not None and train_cfg.eval_every and state.step % train_cfg.eval_every == 0:
                eval_loss = evaluate(model, objective, eval_plan, info, device, autocast)
                metrics.log({"step": state.step, "eval_loss": eval_loss})
            if train_cfg.save_every and state.step % train_cfg.save_every == 0 and state.step < total_steps:
                save(state)

    if eval_plan is not None and (not train_cfg.eval_every or state.step % train_cfg.eval_every != 0):
        eval_loss = evaluate(model, objective, eval_plan, info, device, autocast)
        metrics.log({"step": state.step, "eval_loss": eval_loss})
    if resumed_from is None or resumed_from.name != f"step-{state.step:08d}":
        save(state)
    history = metrics.records()
    if info.is_main:
        plot_loss_curve(history, output_dir / "loss_curve.png")
    metrics.close()
    return LoopResult(state=state, final_loss=last_loss, eval_loss=eval_loss, resumed_from=resumed_from, history=history)
