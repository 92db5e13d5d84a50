"""The two all-to-alls of Ulysses sequence parallelism (Jacobs et al. 2023, arXiv:2309.14509) and the active
group. The trainer side (groups, sharding a packed batch) is :mod:`novalign.train.sequence_parallel`."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["activate", "active", "heads_to_sequence", "sequence_to_heads"]

_GROUP = None
_SIZE = 1


def activate(group, size: int) -> None:
    """Make ``group`` (``size`` ranks) the sequence-parallel group of this process (None, 1: off)."""
    global _GROUP, _SIZE
    _GROUP, _SIZE = group, size


def active() -> tuple[object | None, int]:
    return _GROUP, _SIZE


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over the first dimension; its adjoint is the same exchange run backwards, which
    for an equal split is the same call on the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)  # of the contiguous input: empty_like keeps a transposed input's strides
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def sequence_to_heads(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """``[B, H, S, D]`` (all heads, this rank's S tokens) -> ``[B, H / size, size * S, D]`` (this rank's heads,
    all tokens, in rank order)."""
    b, h, s, d = x.shape
    if h % size:
        raise ValueError(f"{h} attention heads cannot be split over sequence_parallel={size} ranks")
    chunks = x.reshape(b, size, h // size, s, d).transpose(0, 1)  # chunk j (heads j*h/size..) goes to rank j
    got = _AllToAll.apply(chunks, group)  # got[i]: rank i's tokens of this rank's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * s, d)


def heads_to_sequence(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """The inverse of :func:`sequence_to_heads`: ``[B, H / size, size * S, D]`` -> ``[B, H, S, D]``."""
    b, hl, length, d = x.shape
    s = length // size
    chunks = x.reshape(b, hl, size, s, d).permute(2, 0, 1, 3, 4)  # token shard j goes back to rank j
    got = _AllToAll.apply(chunks, group)  # got[i]: head chunk i of this rank's tokens
    return got.transpose(0, 1).reshape(b, size * hl, s, d)
