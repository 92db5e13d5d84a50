"""Pure loss functions.

SFT (report section 2.1) is next-token cross-entropy on assistant tokens. Two rules matter for packing and
gradient accumulation to be *equivalent* to plain training:

1. A loss is returned as a **sum** over tokens together with the **count** of tokens it covers; the mean is
   taken once, over the whole effective batch (all micro-batches of an optimizer step, on all ranks).
   A mean of per-micro-batch means would weight a token in a short micro-batch more than one in a long
   micro-batch, so packing (which changes how tokens fall into micro-batches) would change the objective.
2. Labels are aligned with inputs; the shift happens here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from novalign.data.chat import IGNORE_INDEX


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of predicted tokens.

    Args:
        logits: ``[B, L, V]`` (any float dtype; computed in fp32).
        labels: ``[B, L]`` aligned with the inputs; ``-100`` marks positions that are not targets.

    Returns:
        ``(loss_sum, num_tokens)`` where position t's logits predict ``labels[:, t + 1]``.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def _chunk_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss_sum(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096
) -> tuple[torch.Tensor, int]:
    """Same value as :func:`causal_lm_loss_sum` on ``hidden @ W^T``, without materializing all logits.

    The vocabulary projection and the cross-entropy are computed ``chunk_size`` tokens at a time, and each
    chunk is recomputed in the backward pass (activation checkpointing), so peak memory holds the logits of
    one chunk instead of ``[B * L, V]`` fp32 logits -- for a 150k vocabulary and 16k-token rows that is the
    difference between 0.6 GB and 10 GB. Only positions with a target are projected at all.

    Args:
        hidden: ``[B, L, H]`` final hidden states (after the last norm).
        lm_head_weight: ``[V, H]``.
        labels: ``[B, L]`` aligned labels.
    """
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = torch.nonzero(y != IGNORE_INDEX, as_tuple=False).flatten()
    h, y = h.index_select(0, keep), y.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, y.numel(), chunk_size):
        hs, ys = h[start : start + chunk_size], y[start : start + chunk_size]
        if torch.is_grad_enabled() and (hs.requires_grad or lm_head_weight.requires_grad):
            total = total + checkpoint(_chunk_ce, hs, lm_head_weight, ys, use_reentrant=False)
        else:
            total = total + _chunk_ce(hs, lm_head_weight, ys)
    return total, int(y.numel())


def token_mean_scale(num_tokens_global: int, world_size: int = 1) -> float:
    """Factor that turns a rank's summed loss into its share of the effective-batch token mean.

    Every micro-batch of an optimizer step backpropagates ``loss_sum * scale``; gradients add up over the
    micro-batches of a rank. If the ranks' gradients are then *summed* (our all-reduce), ``world_size`` is
    1 here; if they are *averaged* (FSDP's reduce-scatter), pass the real world size so that
    ``scale = world_size / num_tokens_global`` still gives exactly ``sum over all tokens / num_tokens_global``.
    """
    if num_tokens_global <= 0:
        raise ValueError("an optimizer step with no loss tokens")
    return world_size / num_tokens_global
