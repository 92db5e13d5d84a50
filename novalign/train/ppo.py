"""``novalign ppo``: PPO with a value head (report section 2.1; Schulman et al. 2017, report ref. [73]).

Everything but the advantage estimate and the critic is GRPO's (:mod:`novalign.train.grpo` -- prompts,
rollouts, the reward mix, the detached top-k KL to the frozen reference, PTX, checkpoints, logs): both
trainers call the same :func:`~novalign.train.grpo.setup_rl`, :func:`~novalign.train.grpo.collect_rollouts`,
:func:`~novalign.train.grpo.optimizer_and_resume`, :func:`~novalign.train.grpo.base_record` and
:func:`~novalign.train.grpo.finish_rl`.

**The critic** is a scalar linear head on the policy's final hidden states (:class:`ActorCritic`): one shared
trunk, one forward gives the log-probabilities and the values, and no second model is held in memory. The
head starts at zero (V = 0 everywhere). Its value at the position that predicts response token t is
V(s_t), the value of the state before token t is emitted. Checkpoints hold the policy and the head (keys
``policy.*`` and ``value_head.*``); the final ``model/`` is the policy alone, the head goes to
``value_head.safetensors`` next to it.

One iteration:

1. rollouts, rewards, per-token top-k KL as in GRPO (``rollout.n`` responses per prompt, default 1);
2. V_old of every response token (no gradient);
3. token rewards ``r_t = -beta * KL_t``, plus the outcome reward (the mix) at the last token
   (:func:`~novalign.train.rl.token_level_rewards`); GAE(gamma, lambda) gives advantages and the value
   targets (returns); the advantages are whitened over the batch's response tokens;
4. ``ppo_epochs`` optimizer steps, each over the whole batch: clipped policy surrogate +
   ``vf_coef`` * clipped value loss, both summed over tokens and divided once by the token count
   (token-mean), plus PTX when ``ptx.coef > 0``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from novalign.config import PPOConfig
from novalign.rewards import RewardFn
from novalign.train.forward import output_weight
from novalign.train.grpo import (
    base_record,
    collect_rollouts,
    finish_rl,
    log_iteration,
    log_samples,
    optimizer_and_resume,
    optimizer_step,
    ptx_backward,
    setup_rl,
    truncate_samples_after,
)
from novalign.train.loop import LoopResult
from novalign.train.metrics_log import MetricsLog
from novalign.train.rl import (
    clipped_policy_loss_sum,
    gae,
    masked_whiten,
    token_level_rewards,
    value_loss_sum,
)
from novalign.train.rollout import chunked_logps_entropy, completion_hidden

__all__ = ["ActorCritic", "logps_and_values", "run_ppo"]


class ActorCritic(nn.Module):
    """The policy and a scalar value head on its final hidden states (fp32, zero-initialized)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1, device=next(policy.parameters()).device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)


def logps_and_values(model: ActorCritic, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                     temperature: float = 1.0, chunk_size: int = 4096, return_entropy: bool = False,
                     pack_tokens: int = 0):
    """One forward: right-padded ``(logps [S, T], values [S, T])`` of the completions of ``(prompt, completion)`` pairs.

    With ``return_entropy``, a third right-padded ``[S, T]`` tensor: the detached per-token entropy of the
    temperature-scaled policy, from the same vocabulary projection.
    ``pack_tokens > 0``: the forward runs on packed rows of that token budget instead of a padded batch
    (:func:`~novalign.train.rollout.completion_hidden`).

    Runs under the caller's grad mode. Only completion positions are projected onto the vocabulary,
    ``chunk_size`` at a time.
    """
    if any(len(p) == 0 for p, _ in sequences):
        raise ValueError("logps_and_values needs a non-empty prompt for every sequence")
    h, y = completion_hidden(model.policy, sequences, pack_tokens)  # [N, H], each sequence's completion positions in order
    weight, scale = output_weight(model.policy), temperature if temperature > 0 else 1.0
    logps, ents = chunked_logps_entropy(h, weight, y, scale, chunk_size, return_entropy)
    values = model.value_head(h.float()).float().squeeze(-1)
    lengths = [len(c) for _, c in sequences]
    pad = torch.nn.utils.rnn.pad_sequence
    out = (pad(list(logps.split(lengths)), batch_first=True), pad(list(values.split(lengths)), batch_first=True))
    if return_entropy:
        return (*out, pad(list(ents.split(lengths)), batch_first=True))
    return out


def run_ppo(cfg: PPOConfig, reward: RewardFn | None = None, console_print=print) -> LoopResult:
    """``novalign ppo``: train, then write ``<output_dir>/model``, ``value_head.safetensors`` and ``summary.json``.

    Args:
        reward: a reward function to use instead of ``cfg.rewards`` (as in :func:`~novalign.train.grpo.run_grpo`).
    """
    from safetensors.torch import save_file

    run = setup_rl(cfg, reward, "ppo")
    device, t, ro, lc = run.session.device, cfg.train, cfg.rollout, cfg.loss
    actor, autocast = ActorCritic(run.policy), run.autocast
    optimizer, scheduler, state, resumed_from, save = optimizer_and_resume(run, actor, console_print)
    metrics = MetricsLog(run.session.out, tensorboard=t.tensorboard)
    metrics.truncate_after(state.step)
    truncate_samples_after(run, state.step)
    params = [p for p in actor.parameters() if p.requires_grad]
    last_loss: float | None = None
    actor.train()

    def forward(chunk, return_entropy: bool = False):
        with autocast():
            return logps_and_values(actor, [(r.prompt_ids, r.completion_ids) for r in chunk], temperature=ro.temperature,
                                    chunk_size=t.loss_chunk_size, return_entropy=return_entropy,
                                    pack_tokens=t.pack_tokens)

    while state.step < run.iterations:
        t0 = time.perf_counter()
        # 1. rollouts, rewards, detached top-k KL (shared with GRPO)
        chosen, batch = collect_rollouts(run, state.step)
        rollouts, num_tokens = batch.rollouts, batch.num_tokens
        # 2. V_old
        with torch.no_grad():
            old_values = torch.zeros_like(batch.mask)
            for s in range(0, len(rollouts), ro.batch_size):
                v = forward(rollouts[s : s + ro.batch_size])[1].cpu()
                old_values[s : s + v.shape[0], : v.shape[1]] = v
        # 3. token rewards (-beta KL_t, outcome at the last token), GAE, whitening
        rewards = token_level_rewards(batch.rewards, batch.kl, batch.mask, lc.beta)
        adv, returns = gae(rewards, old_values, batch.mask, gamma=lc.gamma, lam=lc.lam)
        raw_adv_mean = float((adv * batch.mask).sum() / num_tokens)
        if lc.whiten_advantages:
            adv = masked_whiten(adv, batch.mask)
        old_logps, adv, mask, old_values, returns = (x.to(device) for x in (batch.old_logps, adv, batch.mask, old_values, returns))

        # 4. ppo_epochs optimizer steps over the whole rollout batch (token-mean)
        pol_total = val_total = clipped = ptx_total = entropy_total = 0.0
        lr = grad_norm = 0.0
        for epoch in range(lc.ppo_epochs):
            for s in range(0, len(rollouts), t.micro_batch_size):
                chunk = rollouts[s : s + t.micro_batch_size]
                logps, values, ents = forward(chunk, return_entropy=True)
                rows, width = slice(s, s + len(chunk)), logps.shape[1]
                if epoch == 0:  # the rollout policy (no optimizer step yet this iteration)
                    entropy_total += float((ents * mask[rows, :width]).sum())
                pol_sum, _, num_clipped = clipped_policy_loss_sum(
                    logps, old_logps[rows, :width], adv[rows, :width], mask[rows, :width], lc.eps_low, lc.eps_high)
                val_sum, _ = value_loss_sum(values, old_values[rows, :width], returns[rows, :width], mask[rows, :width],
                                            lc.value_clip)
                ((pol_sum + lc.vf_coef * val_sum) / num_tokens).backward()
                pol_total += float(pol_sum.detach())
                val_total += float(val_sum.detach())
                clipped += num_clipped
            if run.ptx_plan is not None:
                ptx_total += ptx_backward(actor.policy, run.ref, run.ptx_plan, state.step * lc.ppo_epochs + epoch, cfg, autocast)
            lr, grad_norm = optimizer_step(run, params, optimizer, scheduler)

        # 5. log, checkpoint
        state.step += 1
        state.tokens_seen += num_tokens
        denom = num_tokens * lc.ppo_epochs
        last_loss = (pol_total + lc.vf_coef * val_total) / denom
        record: dict[str, Any] = base_record(state.step, batch, last_loss, clipped, lc.ppo_epochs, adv)
        m = batch.mask
        record.update({
            "policy_loss": pol_total / denom, "value_loss": val_total / denom, "advantage_mean_raw": raw_adv_mean,
            "value_mean": float((old_values.cpu() * m).sum() / num_tokens),
            "return_mean": float((returns.cpu() * m).sum() / num_tokens),
            "entropy": entropy_total / max(1, num_tokens),
            "lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - t0,
        })
        if run.ptx_plan is not None:
            record["ptx_loss"] = ptx_total / lc.ppo_epochs
        log_iteration(run, metrics, record, console_print)
        log_samples(run, metrics, state.step, chosen, batch)
        if t.save_every and state.step % t.save_every == 0 and state.step < run.iterations:
            save()

    result = finish_rl(run, metrics, state, resumed_from, save, last_loss,
                       {"gamma": lc.gamma, "lam": lc.lam, "vf_coef": lc.vf_coef}, console_print)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.value_head.state_dict().items()},
              str(run.session.out / "value_head.safetensors"))
    return result
