"""The optimizer and checkpoint engine that every trainer shares, written once.

:func:`novalign.train.loop.train` (SFT, RM, DPO, KTO) and :mod:`novalign.train.rl.loop` (GRPO, PPO) differ in
how they compute a gradient; everything around it is here:

* the precision rule (:func:`uses_bf16`, :func:`autocast_factory`): bf16 when asked, or on CUDA under
  ``precision: auto``; as autocast over fp32 weights, except under FSDP2, whose mixed-precision policy casts
  the parameters itself;
* AdamW with no decay on 1-D parameters and the LR schedule of :mod:`novalign.train.schedule`
  (:func:`build_optimizer`, :func:`build_scheduler`);
* one optimizer step (:meth:`Engine.step`): gradients summed over data-parallel ranks, clipped, stepped, zeroed;
* atomic checkpoints (:meth:`Engine.save`, :mod:`novalign.train.state`) and exact resume (:meth:`Engine.resume`):
  model, optimizer, scheduler, every RNG and the step counters, in one format for every trainer -- the model and
  optimizer states are the full, name-keyed dicts of :func:`~novalign.train.dist.gather_state` with or without FSDP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from novalign.config import OptimConfig, TrainConfig
from novalign.train import dist as D
from novalign.train.schedule import lr_factor
from novalign.train.state import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def uses_bf16(train_cfg: TrainConfig, device: torch.device) -> bool:
    """``train.precision``: 'bf16' always, 'auto' on CUDA only (CPU bf16 matmuls are slow and gain nothing here)."""
    return train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and device.type == "cuda")


def autocast_factory(train_cfg: TrainConfig, device: torch.device, fsdp: bool = False) -> Callable:
    """A zero-argument context-manager factory for every forward of a run (the loop's and those outside it, e.g.
    reference log-probs): bf16 autocast over fp32 weights when :func:`uses_bf16`, else a no-op. Under FSDP2
    (``fsdp``) the mixed-precision policy already casts the sharded parameters, so no autocast is added."""
    if uses_bf16(train_cfg, device) and not fsdp:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR multiplier of :func:`~novalign.train.schedule.lr_factor` over ``total_steps`` optimizer steps, with
    ``round(warmup_ratio * total_steps)`` warmup steps."""
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule, cfg.min_lr_ratio))


@dataclass
class Engine:
    """The optimizer, schedule, step counters and checkpoints of one run over ``module`` (see :func:`start_engine`).

    ``fsdp``: the module is FSDP2-sharded, which reduces gradients itself; otherwise :meth:`step` sums them over
    the data-parallel ranks first (a no-op in one process), since every loss was divided by the global count.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    info: D.DistInfo
    ckpt_root: Path
    max_grad_norm: float | None = None
    keep_last: int = 2
    fsdp: bool = False
    state: TrainState = field(default_factory=TrainState)
    resumed_from: Path | None = None

    def __post_init__(self) -> None:
        self.params = [p for p in self.module.parameters() if p.requires_grad]

    def resume(self, console_print: Callable[[str], None] = print, unit: str = "step") -> Path | None:
        """Load the newest complete checkpoint under ``ckpt_root``, if any: weights, optimizer, schedule, this
        rank's RNG states and the step counters. Returns its path (also kept as ``resumed_from``)."""
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            return None
        self.state, pieces = load_checkpoint(path, self.info.rank)
        D.load_state(self.module, self.optimizer, pieces.get("model"), pieces.get("optimizer"))
        if "scheduler" in pieces:
            self.scheduler.load_state_dict(pieces["scheduler"])
        if "rng" in pieces:
            restore_rng(pieces["rng"])
        if self.info.is_main:
            console_print(f"resumed from {path} at {unit} {self.state.step}")
        self.resumed_from = path
        return path

    def step(self) -> tuple[float, float | None]:
        """One optimizer step on the accumulated gradients: rank sum (unless FSDP), clip to ``max_grad_norm``,
        AdamW, schedule, zero. Returns ``(lr, grad_norm)`` of the step; the norm is the one before clipping, None
        when clipping is off."""
        if not self.fsdp:
            D.all_reduce_gradients(self.module, self.info)
        grad_norm = None
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, grad_norm

    def save(self) -> Path:
        """Write ``step-<N>`` atomically (all ranks call it: gathering the state is a collective under FSDP)."""
        model_sd, optim_sd = D.gather_state(self.module, self.optimizer)
        main = self.info.is_main
        return save_checkpoint(
            self.ckpt_root, self.state,
            model_state=model_sd if main else None,
            optimizer_state=optim_sd if main else None,
            scheduler_state=self.scheduler.state_dict() if main else None,
            rank=self.info.rank, is_main=main, barrier=lambda: D.barrier(self.info), keep_last=self.keep_last,
        )

    def save_final(self) -> None:
        """The end-of-run checkpoint, unless the run resumed from that very step (nothing changed since)."""
        if self.resumed_from is None or self.resumed_from.name != f"step-{self.state.step:08d}":
            self.save()


def start_engine(
    module: nn.Module, optim_cfg: OptimConfig, train_cfg: TrainConfig, *, total_steps: int, ckpt_root: Path,
    info: D.DistInfo, device: torch.device, fsdp: bool = False, console_print: Callable[[str], None] = print,
    unit: str = "step",
) -> Engine:
    """AdamW and its schedule over ``total_steps`` for ``module``'s trainable parameters, resumed from the newest
    checkpoint under ``ckpt_root`` when ``train.resume`` (``unit`` names a step in the resume message)."""
    optimizer = build_optimizer(module, optim_cfg, device)
    engine = Engine(module, optimizer, build_scheduler(optimizer, optim_cfg, total_steps), info, ckpt_root,
                    max_grad_norm=optim_cfg.max_grad_norm, keep_last=train_cfg.keep_last, fsdp=fsdp)
    if train_cfg.resume:
        engine.resume(console_print, unit)
    return engine
