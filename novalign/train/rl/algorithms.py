"""The maths of GRPO and PPO as the report runs them (section 2.1, equation (2)), as pure tensor functions.

Equation (2) maximizes

    E_{(x,y) ~ pi_theta}[ r(x, y) - beta * KL(pi_theta || pi_ref) ]  +  gamma * KL_{(x,y) ~ D_SFT}(...)

* **Rewards with KL in them.** The report keeps the KL in the token-level reward decomposition ("we did
  not remove the KL term", unlike DeepSeekMath's GRPO, which moves it into the loss): token t of a
  response is rewarded ``-beta * KL_t`` and the last token additionally gets the outcome; returns use
  gamma = 1. :func:`token_level_rewards`, :func:`returns_to_go`.
* **GRPO** (DeepSeekMath, report ref. [74]) replaces the critic with the group of n responses to one
  prompt (the report uses n = 3): :func:`group_normalized_advantages`, :func:`grpo_token_advantages`
  (which documents where the KL enters relative to the group normalization).
* **PPO** (report ref. [73]) uses a value head and GAE: :func:`gae`, :func:`value_loss_sum`.
* Both optimize :func:`clipped_policy_loss_sum` (asymmetric epsilon allowed).
* The **PTX** term on SFT data is a top-k KL penalty: :func:`ptx_loss_sum`.

Shapes: ``S`` responses (sequences), ``T`` response positions (right-padded), ``mask [S, T]`` is 1 on real
response tokens. Losses follow :mod:`novalign.train.losses`: a **sum** over tokens and the token **count**;
the trainer divides once by the tokens of the whole effective batch (token-mean aggregation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from novalign.train.kl import DEFAULT_TOP_K, chunked_topk_kl

# ------------------------------------------------------------------ rewards, returns, advantages


def group_normalized_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's outcome advantage: each reward relative to the other responses to the same prompt.

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     (or without the division, ``scale_by_std=False``)

    ``std`` is the sample standard deviation (``torch.std``, n - 1 in the denominator), as in DeepSeekMath's
    and TRL's implementations. A group whose rewards are all equal gets advantage 0 everywhere: it carries
    no signal about which response is better. Dropping the division (Dr. GRPO) avoids weighting
    low-variance (too easy / too hard) prompts up.

    Args:
        rewards: ``[G, n]`` outcome rewards, one row per prompt (group), n responses each, n >= 2.

    Returns:
        ``[G, n]`` advantages (fp32).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, n] with n >= 2 responses per prompt, got {tuple(rewards.shape)}")
    r = rewards.float()
    centered = r - r.mean(dim=1, keepdim=True)
    return centered / (r.std(dim=1, keepdim=True) + eps) if scale_by_std else centered


def _last_token_onehot(mask: torch.Tensor) -> torch.Tensor:
    """``[S, T]`` 1 at each row's last response token (rows are right-padded), 0 elsewhere."""
    lengths = mask.long().sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("a response with no tokens: it cannot carry an outcome reward")
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]):
        raise ValueError("the response mask must be right-padded: each row's tokens at columns 0 .. length - 1")
    onehot = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    onehot[torch.arange(mask.shape[0], device=mask.device), lengths - 1] = 1.0
    return onehot


def token_level_rewards(outcome: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """The report's token-level reward decomposition: ``-beta * KL_t`` on every response token, plus the
    outcome reward on the last one.

        r_t = -beta * KL_t + [t = last] * outcome

    Args:
        outcome: ``[S]`` outcome reward per response (raw, or group-normalized for GRPO).
        kl: ``[S, T]`` per-token KL (detached; e.g. :func:`~novalign.train.kl.chunked_topk_kl` or k1/k3).
        mask: ``[S, T]`` response-token mask, right-padded.

    Returns:
        ``[S, T]`` rewards, 0 on padding (fp32).
    """
    m = mask.float()
    return (-beta * kl.detach().float() + outcome.detach().float()[:, None] * _last_token_onehot(mask)) * m


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_{s >= t} gamma^(s - t) r_s`` over each row's response tokens; 0 on padding."""
    r = rewards.float() * mask.float()
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * mask.float()


def grpo_token_advantages(
    outcome_rewards: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    *,
    kl_in_group_norm: bool = False,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages per token with the KL kept in the token-level reward (report section 2.1).

    **Where the KL enters (default, ``kl_in_group_norm=False``): after the group normalization.**

        1. A_i = group-normalize the outcome rewards r_i within each prompt's group;
        2. token rewards: r_{i,t} = -beta * KL_{i,t}, plus A_i at the last token;
        3. advantage = return-to-go with gamma = 1:  A_{i,t} = A_i - beta * sum_{s >= t} KL_{i,s}.

    Why this order: the group statistics are those of the *task* reward, so beta keeps one fixed meaning
    (nats of KL per unit of normalized reward) in every group. Normalizing after adding the KL would
    divide the KL by each group's reward spread -- in a group whose outcomes are all equal (std ~ 0) the
    tiny KL differences would be blown up by 1 / eps into the whole advantage -- and it would collapse the
    per-token KL into one number per response, i.e. remove it from the token-level decomposition, which the
    report says it kept. This is also the order of OpenRLHF's ``group_norm`` estimator (normalize the
    rewards, then build the token rewards with the KL, then cumulative returns).

    **Alternative (``kl_in_group_norm=True``):** the KL-penalized sequence return
    ``R_i = r_i - beta * sum_t KL_{i,t}`` is group-normalized and broadcast to every token of response i
    (the KL then only shapes which response of the group is better, not which tokens).

    Args:
        outcome_rewards: ``[G, n]`` outcome rewards; response ``i = g * n + j`` is row i of ``kl`` / ``mask``.
        kl: ``[G * n, T]`` per-token KL (detached).
        mask: ``[G * n, T]`` response-token mask, right-padded.

    Returns:
        ``[G * n, T]`` advantages, 0 on padding (fp32).
    """
    num_groups, n = outcome_rewards.shape
    if kl.shape[0] != num_groups * n or kl.shape != mask.shape:
        raise ValueError(f"kl {tuple(kl.shape)} and mask {tuple(mask.shape)} must be [{num_groups * n}, T]")
    m = mask.float()
    if kl_in_group_norm:
        penalized = outcome_rewards.float() - beta * (kl.detach().float() * m).sum(1).view(num_groups, n)
        adv = group_normalized_advantages(penalized, scale_by_std, eps).reshape(-1)
        return adv[:, None] * m
    adv = group_normalized_advantages(outcome_rewards, scale_by_std, eps).reshape(-1)
    return returns_to_go(token_level_rewards(adv, kl, mask, beta), mask, gamma=1.0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al., 2016, https://arxiv.org/abs/1506.02438).

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last response token = 0: episode ends)
        A_t     = delta_t + gamma * lam * A_{t+1}
        return_t = A_t + V_t                          (the value head's regression target)

    Args:
        rewards: ``[S, T]`` token rewards (e.g. :func:`token_level_rewards`).
        values: ``[S, T]`` value estimates of the rollout (detached); anything on padding.
        mask: ``[S, T]`` response-token mask, right-padded.

    Returns:
        ``(advantages [S, T], returns [S, T])``, 0 on padding (fp32).
    """
    m = mask.float()
    r, v = rewards.float() * m, values.detach().float() * m
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value = v[:, t]
    return adv, (adv + v) * m


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Standardize ``x`` over the masked entries (PPO's advantage normalization); 0 on padding.

        mean = sum(x m) / sum(m),   var = sum((x - mean)^2 m) / sum(m),   out = (x - mean) / sqrt(var + eps)

    ``all_reduce``: sums a tensor over data-parallel ranks (each holding a share of the batch), so that mean
    and var are those of the whole batch; None: this batch alone.
    """
    reduce = all_reduce or (lambda t: t)
    m = mask.float()
    totals = reduce(torch.stack([(x * m).sum(), m.sum()]))
    count = totals[1].clamp_min(1.0)
    mean = totals[0] / count
    var = reduce(((x - mean).square() * m).sum()) / count
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


# ------------------------------------------------------------------ losses (sum over tokens, and the count)


def clipped_policy_loss_sum(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, int, int]:
    """PPO's clipped surrogate, summed over response tokens (token-mean once over the whole batch).

        rho_t = exp(log pi_theta(y_t) - log pi_old(y_t))
        loss_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

    A token is *clipped* when the clipped branch is the smaller one and differs, so its gradient is 0:
    ``A > 0 and rho > 1 + eps_high`` or ``A < 0 and rho < 1 - eps_low``. A larger ``eps_high`` than
    ``eps_low`` (DAPO's "clip-higher") leaves more room to raise unlikely tokens.

    Args:
        logps: ``[S, T]`` current policy log-probabilities of the sampled tokens (with gradient).
        old_logps: ``[S, T]`` the rollout policy's log-probabilities (detached).
        advantages: ``[S, T]`` (detached).
        mask: ``[S, T]`` response-token mask.
        eps_high: defaults to ``eps_low`` (symmetric clipping).

    Returns:
        ``(loss_sum, num_tokens, num_clipped_tokens)``.
    """
    eps_high = eps_low if eps_high is None else eps_high
    m = mask.float()
    adv = advantages.detach().float()
    ratio = torch.exp(logps.float() - old_logps.detach().float())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        was_clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
        num_clipped = int((was_clipped & mask.bool()).sum())
    return (loss * m).sum(), int(mask.bool().sum()), num_clipped


def value_loss_sum(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
) -> tuple[torch.Tensor, int]:
    """The critic's clipped squared error, summed over response tokens.

        V_clip = old_V + clip(V - old_V, -c, c)
        loss_t = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Taking the max makes the clip pessimistic: a value that moved more than ``c`` from the rollout's
    estimate gets no credit for moving towards the return. ``clip_range=None`` gives the plain 0.5 MSE.

    Args:
        values: ``[S, T]`` current value head outputs (with gradient).
        old_values: ``[S, T]`` value estimates at rollout time (detached).
        returns: ``[S, T]`` targets, e.g. from :func:`gae` (detached).
    """
    m = mask.float()
    v, ret = values.float(), returns.detach().float()
    loss = (v - ret).square()
    if clip_range is not None:
        old = old_values.detach().float()
        v_clip = old + torch.clamp(v - old, -clip_range, clip_range)
        loss = torch.maximum(loss, (v_clip - ret).square())
    return 0.5 * (loss * m).sum(), int(mask.bool().sum())


def ptx_loss_sum(
    policy_hidden: torch.Tensor,
    policy_weight: torch.Tensor,
    ref_hidden: torch.Tensor,
    ref_weight: torch.Tensor,
    gamma: float,
    k: int = DEFAULT_TOP_K,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, int]:
    """The PTX term of equation (2) on SFT tokens: ``gamma * sum_t KL_t`` (top-k KL, with gradient), and the count.

    Sign: equation (2) prints ``+ gamma * KL`` inside an objective that is *maximized*, which read literally
    would reward moving away from the reference. The report's text says the KL replaces the usual PTX
    cross-entropy to keep the RL'd (merged) model close to the original one, i.e. it is a regularizer; so
    it is added to the *loss* (minimized) with a positive coefficient. ``gamma = 0`` disables it.

    Args:
        policy_hidden, ref_hidden: ``[N, H]`` hidden states at the SFT positions that predict target tokens.
        policy_weight, ref_weight: ``[V, H]`` output heads.
    """
    num_tokens = int(policy_hidden.shape[0])
    if gamma == 0:
        return policy_hidden.new_zeros((), dtype=torch.float32), num_tokens
    if gamma < 0:
        raise ValueError(f"the PTX coefficient gamma must be >= 0 (it is a penalty), got {gamma}")
    kl = chunked_topk_kl(policy_hidden, policy_weight, ref_hidden, ref_weight, k=k, chunk_size=chunk_size)
    return gamma * kl.sum(), num_tokens
