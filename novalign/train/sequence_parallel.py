"""Ulysses sequence parallelism for packed SFT rows (Jacobs et al. 2023, "DeepSpeed Ulysses", arXiv:2309.14509).

A group of P ranks trains on the same packed rows, each holding 1/P of every row's tokens. Everything in a
decoder layer except attention is per token, so it runs on the local shard unchanged. Attention needs the
whole row, and gets it by two all-to-alls per layer: before the kernel, each rank trades its token shard of
all heads for all tokens of H/P heads; after it, the trade is reversed. Each rank then runs the same varlen
kernel (with the row's global ``cu_seqlens``, so packed samples still never see each other) on its heads.
Activation memory per rank falls by P at the price of 4 all-to-alls of ``q``/``k``/``v``/``out`` per layer.

What makes the split exact:

- **Labels are shifted before the split** (``labels[t] <- labels[t + 1]``), and the batch says so
  (``Batch.labels_shifted``): the target of a shard's last token is the next shard's first token, which the
  shard does not hold. The loss functions then pair position t with label t directly.
- **Positions stay global**: each shard keeps its own slice of ``position_ids``, so rotary embeddings are
  those of the unsplit row.
- **Gradients**: each rank's parameter gradients cover its own tokens (the all-to-all's backward is the
  reverse all-to-all), so the trainer's usual summed all-reduce over all ranks and the division by the
  global number of loss tokens give exactly the single-process token mean.

The group is set once per process with :func:`set_group`; the attention implementation
(:mod:`novalign.models.attention`, with the all-to-alls in :mod:`novalign.models.ulysses`) switches to the
Ulysses path when a packed batch arrives whose ``cu_seqlens`` covers P times the local tokens.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from novalign.data.chat import IGNORE_INDEX
from novalign.models import ulysses
from novalign.models.attention import cu_seqlens_from_position_ids
from novalign.models.packing import Batch

__all__ = ["set_group", "shard_batch", "sp_groups"]


def sp_groups(world_size: int, size: int) -> list[list[int]]:
    """Consecutive ranks form a sequence-parallel group: world 4, size 2 -> [[0, 1], [2, 3]]. The data-parallel
    rank of a process is ``rank // size`` and the number of data-parallel replicas ``world_size // size``."""
    if size < 1 or world_size % size:
        raise ValueError(f"train.sequence_parallel={size} must divide the number of processes ({world_size})")
    return [list(range(g * size, (g + 1) * size)) for g in range(world_size // size)]


def set_group(world_size: int, rank: int, size: int) -> None:
    """Create the sequence-parallel groups (a collective: every rank calls it) and activate this rank's in the
    attention implementation."""
    if size == 1:
        ulysses.activate(None, 1)
        return
    for ranks in sp_groups(world_size, size):
        group = dist.new_group(ranks)  # every rank takes part in creating every group
        if rank in ranks:
            ulysses.activate(group, size)


def shard_batch(batch: Batch, rank: int, size: int) -> Batch:
    """This rank's 1/``size`` of every row of a packed batch, with labels shifted first (see the module notes).

    A row whose length is not a multiple of ``size`` is padded at its end with ignored tokens that form their
    own segment. ``cu_seqlens`` stays that of the whole (padded) rows.

    Example (one row of 6 tokens, two samples ``a1 a2 a3 | b1 b2 b3``, all tokens trained, size 2)::

        labels (aligned)  [-100, a2, a3, -100, b2, b3]   (a sample's first token is never a target)
        shifted           [a2, a3, -100, b2, b3, -100]
        rank 0 gets tokens a1 a2 a3 with targets a2 a3 -100; rank 1 gets b1 b2 b3 with b2 b3 -100
    """
    if batch.cu_seqlens is None:
        raise ValueError("sequence parallelism needs packed rows (packing.enabled: true)")
    ids, labels, pos = batch.input_ids, batch.labels, batch.position_ids
    if not batch.labels_shifted:
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    row_len = ids.shape[1]
    pad = (-row_len) % size
    cu = batch.cu_seqlens
    if pad:
        rows = ids.shape[0]
        ids = F.pad(ids, (0, pad), value=0)
        labels = F.pad(labels, (0, pad), value=IGNORE_INDEX)
        pos = torch.cat([pos, torch.arange(pad, dtype=pos.dtype, device=pos.device).expand(rows, pad)], dim=1)
        cu, _ = cu_seqlens_from_position_ids(pos)
        cu = cu.to(batch.cu_seqlens.device)
    width = ids.shape[1] // size
    part = slice(rank * width, (rank + 1) * width)
    return Batch(
        input_ids=ids[:, part].contiguous(), labels=labels[:, part].contiguous(), position_ids=pos[:, part].contiguous(),
        cu_seqlens=cu, max_seqlen=max(batch.max_seqlen, pad), num_samples=batch.num_samples if rank == 0 else 0,
        num_real_tokens=_real_tokens(batch, rank, size),
        extras=batch.extras, labels_shifted=True,
    )


def _real_tokens(batch: Batch, rank: int, size: int) -> int:
    """Real (non-padding) tokens are counted once, on the group's first rank, so sums over ranks stay right."""
    return batch.num_real_tokens if rank == 0 else 0
