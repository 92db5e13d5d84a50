"""``novalign ppo``: PPO with a value head (report section 2.1; Schulman et al. 2017, report ref. [73]).

Everything but the advantage estimate and the critic is GRPO's (prompts, rollouts through ``rollout.engine``,
the reward mix, the detached top-k KL to the frozen reference, PTX, checkpoints, logs): both trainers call
the same functions of :mod:`novalign.train.rl.loop` -- :func:`~novalign.train.rl.loop.setup_rl`,
:func:`~novalign.train.rl.loop.start_loop`, :func:`~novalign.train.rl.loop.collect_rollouts`,
:func:`~novalign.train.rl.loop.close_step`, :func:`~novalign.train.rl.loop.end_iteration` and
:func:`~novalign.train.rl.loop.finish_rl`.

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

import torch
from torch import nn

from novalign.config import PPOConfig
from novalign.train.rl.rewards import RewardFn
from novalign.models.forward import output_weight
from novalign.train.loop import LoopResult
from novalign.train.rl.algorithms import (
    clipped_policy_loss_sum,
    gae,
    masked_whiten,
    token_level_rewards,
    value_loss_sum,
)
from novalign.train.rl.loop import (
    close_step,
    collect_rollouts,
    end_iteration,
    finish_rl,
    optimizer_steps,
    setup_rl,
    start_loop,
    tensor_all_reduce,
)
from novalign.train.rl.rollout import chunked_logps_entropy, completion_hidden

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
    (:func:`~novalign.train.rl.rollout.completion_hidden`).

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
    loop = start_loop(run, actor, console_print)
    state = loop.state
    last_loss: float | None = None

    def forward(chunk, return_entropy: bool = False):
        with autocast():
            return logps_and_values(actor, [(r.prompt_ids, r.completion_ids) for r in chunk], temperature=ro.temperature,
                                    chunk_size=t.loss_chunk_size, return_entropy=return_entropy,
                                    pack_tokens=t.pack_tokens)

    while state.step < run.iterations:
        t0 = time.perf_counter()
        # 1. rollouts, rewards, detached top-k KL (shared with GRPO)
        chosen, batch = collect_rollouts(run, state.step)
        rollouts = batch.rollouts
        # 2. V_old
        with torch.no_grad():
            old_values = torch.zeros_like(batch.mask)
            for s in range(0, len(rollouts), ro.batch_size):
                v = forward(rollouts[s : s + ro.batch_size])[1].cpu()
                old_values[s : s + v.shape[0], : v.shape[1]] = v
        # 3. token rewards (-beta KL_t, outcome at the last token), GAE, whitening
        rewards = token_level_rewards(batch.rewards, batch.kl, batch.mask, lc.beta)
        adv, returns = gae(rewards, old_values, batch.mask, gamma=lc.gamma, lam=lc.lam)
        raw_adv_sum = float((adv * batch.mask).sum())
        if lc.whiten_advantages:  # over the whole iteration's tokens (summed over ranks under torchrun)
            adv = masked_whiten(adv, batch.mask, all_reduce=tensor_all_reduce(run))
        old_logps, adv, mask, old_values, returns = (x.to(device) for x in (batch.old_logps, adv, batch.mask, old_values, returns))

        # 4. ppo_epochs passes over the rollout batch, each loss.mini_batches optimizer steps (token-mean per step)
        pol_total = val_total = clipped = ptx_total = entropy_total = 0.0
        lr = grad_norm = 0.0
        for step, (epoch, lo, hi, num_tokens) in enumerate(optimizer_steps(run, batch)):
            for s in range(lo, hi, t.micro_batch_size):
                chunk = rollouts[s : min(s + t.micro_batch_size, hi)]
                logps, values, ents = forward(chunk, return_entropy=True)
                rows, width = slice(s, s + len(chunk)), logps.shape[1]
                if epoch == 0:  # the first pass (the rollout policy before any step of this iteration when m = 1)
                    entropy_total += float((ents * mask[rows, :width]).sum())
                pol_sum, _, num_clipped = clipped_policy_loss_sum(
                    logps, old_logps[rows, :width], adv[rows, :width], mask[rows, :width], lc.eps_low, lc.eps_high)
                val_sum, _ = value_loss_sum(values, old_values[rows, :width], returns[rows, :width],
                                            mask[rows, :width], lc.value_clip)
                # token-mean over this step's tokens (all ranks under torchrun)
                ((pol_sum + lc.vf_coef * val_sum) / num_tokens).backward()
                pol_total += float(pol_sum.detach())
                val_total += float(val_sum.detach())
                clipped += num_clipped
            ptx, lr, grad_norm = close_step(run, loop, actor.policy, step)
            ptx_total += ptx

        # 5. log, checkpoint
        m = batch.mask
        record = end_iteration(
            run, loop, chosen, batch, adv, per_token_epoch={"loss": pol_total + lc.vf_coef * val_total,
                                                            "policy_loss": pol_total, "value_loss": val_total},
            per_token={"advantage_mean_raw": raw_adv_sum, "value_mean": float((old_values.cpu() * m).sum()),
                       "return_mean": float((returns.cpu() * m).sum()), "entropy": entropy_total},
            clipped=int(clipped), ptx_total=ptx_total,
            extra={"lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - t0}, console_print=console_print)
        last_loss = record["loss"]

    result = finish_rl(run, loop, last_loss, {"gamma": lc.gamma, "lam": lc.lam, "vf_coef": lc.vf_coef}, console_print)
    if run.session.info.is_main:
        save_file({k: v.detach().cpu().contiguous() for k, v in actor.value_head.state_dict().items()},
                  str(run.session.out / "value_head.safetensors"))
    return result
