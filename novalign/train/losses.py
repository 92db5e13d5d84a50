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

from novalign.data.chat import IGNORE_INDEX
from novalign.models.forward import chunked_vocab_map


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of predicted tokens.

    Args:
        logits: ``[B, L, V]`` (any float dtype; computed in fp32).
        labels: ``[B, L]`` aligned with the inputs; ``-100`` marks positions that are not targets.
        shifted: the labels are already shifted (``labels[:, t]`` is position t's target), as in a
            sequence-parallel shard (:mod:`novalign.train.sequence_parallel`).

    Returns:
        ``(loss_sum, num_tokens)`` where position t's logits predict ``labels[:, t + 1]``.
    """
    shift_logits = (logits if shifted else logits[:, :-1]).reshape(-1, logits.shape[-1]).float()
    shift_labels = (labels if shifted else labels[:, 1:]).reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift_labels != IGNORE_INDEX).sum())


def _chunk_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss_sum(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 4096,
    shifted: bool = False,
) -> tuple[torch.Tensor, int]:
    """Same value as :func:`causal_lm_loss_sum` on ``hidden @ W^T``, without materializing all logits.

    The vocabulary projection and the cross-entropy are computed ``chunk_size`` tokens at a time, and each
    chunk is recomputed in the backward pass (:func:`~novalign.models.forward.chunked_vocab_map`), so peak
    memory holds the logits of one chunk instead of ``[B * L, V]`` fp32 logits -- for a 150k vocabulary and
    16k-token rows that is the difference between 0.6 GB and 10 GB. Only positions with a target are projected.

    Args:
        hidden: ``[B, L, H]`` final hidden states (after the last norm).
        lm_head_weight: ``[V, H]``.
        labels: ``[B, L]`` aligned labels (already shifted when ``shifted``).
    """
    h = (hidden if shifted else hidden[:, :-1]).reshape(-1, hidden.shape[-1])
    y = (labels if shifted else labels[:, 1:]).reshape(-1)
    keep = torch.nonzero(y != IGNORE_INDEX, as_tuple=False).flatten()
    h, y = h.index_select(0, keep), y.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    for part in chunked_vocab_map(_chunk_ce, h, lm_head_weight, y, chunk_size=chunk_size):
        total = total + part
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


# ------------------------------------------------------------------ preference losses (RM, DPO, KTO)
# Each returns per-pair (or per-sample) losses; the objective sums them, and the loop divides by the pairs
# (samples) of the whole effective batch -- the same sum-then-normalize rule as the token losses above.


def bt_mse_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_targets: torch.Tensor,
    rejected_targets: torch.Tensor,
    alpha: torch.Tensor | float,
) -> torch.Tensor:
    """Equation (1) of the report: Bradley-Terry plus a pointwise MSE to normalized absolute scores.

        loss = -log sigmoid(r_w - r_l) + alpha * ((r_w - rhat_w)^2 + (r_l - rhat_l)^2)

    The report prints ``(r(x, y_w) - rhat_l)^2`` as the second square; that is a typo -- the rejected
    response's reward is fitted to the rejected response's score, ``(r(x, y_l) - rhat_l)^2``, as here.
    The BT term only fixes reward *differences*; the MSE term anchors each reward to an absolute scale, so
    that a gap like S_perfect - S_bad1 keeps its annotated size instead of whatever the ranking allows.

    Args:
        chosen_rewards, rejected_rewards: ``[P]`` rewards of the preferred and the other response.
        chosen_targets, rejected_targets: ``[P]`` targets r-hat; any value (NaN too) where alpha is 0.
        alpha: ``[P]`` or a scalar: the MSE weight per pair, 0 for pairs without scores.

    Returns:
        ``[P]`` per-pair losses (fp32).
    """
    rc, rr = chosen_rewards.float(), rejected_rewards.float()
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=rc.device).expand_as(rc)
    scored = alpha > 0
    # where alpha is 0 the target may be NaN (no score); zero it so that 0 * NaN never reaches the sum
    tc = torch.where(scored, chosen_targets.float(), torch.zeros_like(rc))
    tr = torch.where(scored, rejected_targets.float(), torch.zeros_like(rr))
    mse = torch.where(scored, (rc - tc).square() + (rr - tr).square(), torch.zeros_like(rc))
    return -F.logsigmoid(rc - rr) + alpha * mse


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290), with conservative label smoothing.

    The policy's log-ratio against the reference is an implicit reward, ``beta * (log pi - log pi_ref)``,
    and the BT likelihood of the preference under that reward is maximized:

        z = beta * ((pc - rc) - (pr - rr));  loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)

    ``eps`` (label smoothing) is the assumed rate of flipped labels (cDPO); with eps > 0 the optimum is a
    finite margin instead of an unbounded one.

    Args:
        *_logps: ``[P]`` summed log-probabilities of each response's tokens.

    Returns:
        ``(losses [P], chosen_rewards [P], rejected_rewards [P])``; the rewards are detached.
    """
    z = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)).float()
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach().float()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach().float()
    return losses, chosen_rewards, rejected_rewards


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al., 2024, https://arxiv.org/abs/2402.01306): a prospect-theory value per sample.

    With the implicit reward ``r = log pi(y|x) - log pi_ref(y|x)`` and a reference point ``z0`` (an
    estimate of KL(pi || pi_ref), detached and clamped at 0 by the caller):

        desirable:    loss = lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable:  loss = lambda_U * (1 - sigmoid(beta * (z0 - r)))

    Gains and losses are measured against z0, so the policy cannot raise every reward at once: that
    raises the KL reference point too.

    Args:
        policy_logps, ref_logps: ``[N]`` summed response log-probabilities.
        desirable: ``[N]`` bool.
        kl: the reference point z0 (a scalar).

    Returns:
        ``(losses [N], rewards [N])`` with ``rewards = beta * r`` detached.
    """
    r = (policy_logps - ref_logps).float()
    z0 = torch.as_tensor(kl, dtype=torch.float32, device=r.device)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return losses, beta * r.detach()
