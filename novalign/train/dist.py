"""torch.distributed in one place: start-up under torchrun, gradient all-reduce, FSDP2 wrapping.

Data parallelism here is deliberately explicit: every rank accumulates gradients of its micro-batches, then
one summed all-reduce per optimizer step. With the loss scaled by ``1 / tokens_in_effective_batch`` this is
exactly the single-process token mean, whatever number of ranks, micro-batches or packing layout -- and a
rank that has no micro-batch in the last step of an epoch simply contributes zeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Initialize the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def all_reduce_sum(value: float | int, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_gradients(model: nn.Module, info: DistInfo, bucket_bytes: int = 64 << 20) -> None:
    """Sum gradients over ranks, in flat buckets (one collective per bucket)."""
    if not info.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket, size = [], 0

    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= bucket_bytes:
            flush()
    flush()


class ObjectiveModule(nn.Module):
    """The model and its objective as one module: ``forward(batch) = objective.loss_sum(lm, batch)``.

    The loop always trains through this module. Under FSDP2 it is the root unit, so the embeddings, final
    norm and output head are gathered for the whole loss computation (including a chunked cross-entropy
    that calls the decoder and the head separately), whatever the objective does inside.
    """

    def __init__(self, lm: nn.Module, objective) -> None:
        super().__init__()
        self.lm = lm
        self.objective = objective

    def forward(self, batch):
        return self.objective.loss_sum(self.lm, batch)


def apply_fsdp(module: ObjectiveModule, layers: nn.ModuleList, mixed_bf16: bool) -> ObjectiveModule:
    """FSDP2 (``fully_shard``): one unit per decoder layer, then the root. FSDP averages gradients over
    ranks, so the loop scales the loss by ``world_size / global_tokens`` (see ``losses.token_mean_scale``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_bf16 else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    return module


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def gather_state(module: nn.Module, optimizer: torch.optim.Optimizer | None, *, trainable_only: bool = True):
    """Full (unsharded, CPU) model and optimizer state dicts -- a collective under FSDP: all ranks call it.

    Works the same on a plain module, so checkpoints look alike with and without FSDP.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = _options(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    model_sd = get_model_state_dict(module, options=opts)
    optim_sd = get_optimizer_state_dict(module, optimizer, options=opts) if optimizer is not None else None
    return model_sd, optim_sd


def load_state(module: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None, optim_sd: dict | None) -> None:
    """Inverse of :func:`gather_state`: every rank passes the full dicts; FSDP re-shards them."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if model_sd is not None:
        set_model_state_dict(module, model_sd, options=_options(full_state_dict=True, strict=False))
    if optim_sd is not None and optimizer is not None:
        set_optimizer_state_dict(module, optimizer, optim_sd, options=_options(full_state_dict=True))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
