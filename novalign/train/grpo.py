"""``novalign grpo``: GRPO as the Baichuan Alignment report runs it (section 2.1, equation (2)).

One iteration, spelled out in :func:`run_grpo`:

1. take the next ``prompts_per_iteration`` prompts (order: a pure function of seed and iteration);
2. sample ``n`` responses per prompt with the current policy (``rollout.engine``: Hugging Face generation,
   :class:`~novalign.train.rl.rollout.HFRollout`, or vLLM with the policy's weights pushed in first,
   :class:`~novalign.train.rl.rollout.VLLMRollout`; seeded per iteration), keeping their log-probabilities as pi_old;
3. score them with the configured weighted reward mix (:mod:`novalign.train.rl.rewards`, built by
   :func:`~novalign.train.rl.inputs.build_reward`: verifiers, a reward model, an LLM judge);
4. per response token, the report's top-k KL (k = 500) of the rollout policy against the frozen reference
   (a copy of the starting model), detached;
5. advantages: group-normalized outcome, then ``-beta * KL_t`` per token, returns with gamma = 1
   (:func:`~novalign.train.rl.grpo_token_advantages` says why the KL enters after the normalization);
6. ``ppo_epochs`` passes over the rollout batch, each split into ``loss.mini_batches`` optimizer steps (1: one
   step over the whole batch): the clipped surrogate summed over the step's response tokens and divided once
   by their count (token-mean), plus, when ``ptx.coef > 0``, the PTX
   top-k KL penalty on one SFT micro-batch (:func:`~novalign.train.rl.ptx_loss_sum`); gradient clipping,
   AdamW, LR schedule per optimizer step;
7. log one record to ``metrics.jsonl``; every ``train.save_every`` iterations an atomic checkpoint
   (:mod:`novalign.train.state`) from which a resumed run continues bit for bit.

Every training forward (loss, reference KL, PTX) runs on rows packed to ``train.pack_tokens`` (0: padded).
The plumbing PPO shares lives in :mod:`novalign.train.rl.loop` and :mod:`novalign.train.rl.inputs`.

Under torchrun (data parallel) each rank rolls out an equal block of the iteration's prompts (with the seeds
one process would use for them), the loss is divided by the token count of the whole iteration, and the
gradients are summed over ranks before each optimizer step (:mod:`novalign.train.dist`), so W processes
train exactly as one. Departures from the issue's full scope, for now: no LoRA; no FSDP; the vLLM engine's
generation is untested here (no GPU).
"""

from __future__ import annotations

import time

import torch

from novalign.config import GRPOConfig
from novalign.train.rl.rewards import RewardFn
from novalign.train.loop import LoopResult
from novalign.train.rl.algorithms import clipped_policy_loss_sum, grpo_token_advantages
from novalign.train.rl.inputs import (
    build_reward,
    load_prompts,
    prompt_batch,
    score_rollouts,
)
from novalign.train.rl.loop import (
    close_step,
    collect_rollouts,
    end_iteration,
    finish_rl,
    optimizer_steps,
    setup_rl,
    start_loop,
)
from novalign.train.rl.rollout import completion_logprobs

__all__ = ["build_reward", "load_prompts", "prompt_batch", "run_grpo", "score_rollouts"]


def run_grpo(cfg: GRPOConfig, reward: RewardFn | None = None, console_print=print) -> LoopResult:
    """``novalign grpo``: train, then write ``<output_dir>/model`` and ``summary.json``.

    Args:
        reward: a reward function to use instead of ``cfg.rewards`` (e.g. a custom verifier or an LLM judge).
            A :class:`~novalign.train.rl.rewards.WeightedMix` also has its components logged.
    """
    run = setup_rl(cfg, reward, "grpo")
    device, t, ro, lc = run.session.device, cfg.train, cfg.rollout, cfg.loss
    policy, autocast = run.policy, run.autocast
    loop = start_loop(run, policy, console_print)
    last_loss: float | None = None
    while loop.state.step < run.iterations:
        t0 = time.perf_counter()
        # 1-4. prompts, rollouts (pi_old = the policy now), rewards, detached top-k KL to the reference
        chosen, batch = collect_rollouts(run, loop.state.step)
        rollouts = batch.rollouts
        # 5. the token-level advantages
        adv = grpo_token_advantages(batch.rewards.view(-1, ro.n), batch.kl, batch.mask, lc.beta,
                                    kl_in_group_norm=lc.kl_in_group_norm, scale_by_std=lc.scale_by_std)
        old_logps, adv, mask = (x.to(device) for x in (batch.old_logps, adv, batch.mask))

        # 6. ppo_epochs passes over the rollout batch, each loss.mini_batches optimizer steps (token-mean per step)
        loss_total = clipped = ptx_total = entropy_total = 0.0
        lr = grad_norm = 0.0
        for step, (epoch, lo, hi, num_tokens) in enumerate(optimizer_steps(run, batch)):
            for s in range(lo, hi, t.micro_batch_size):
                chunk = rollouts[s : min(s + t.micro_batch_size, hi)]
                with autocast():
                    logps, ents = completion_logprobs(policy, [(r.prompt_ids, r.completion_ids) for r in chunk],
                                                      temperature=ro.temperature, batch_size=len(chunk),
                                                      chunk_size=t.loss_chunk_size, return_entropy=True,
                                                      pack_tokens=t.pack_tokens)
                if epoch == 0:  # the first pass (the rollout policy before any step of this iteration when m = 1)
                    entropy_total += float(sum(float(e.sum()) for e in ents))
                logps = torch.nn.utils.rnn.pad_sequence(logps, batch_first=True)  # [s, width], this chunk's longest
                width = logps.shape[1]
                rows = slice(s, s + len(chunk))
                loss_sum, _, num_clipped = clipped_policy_loss_sum(
                    logps, old_logps[rows, :width], adv[rows, :width], mask[rows, :width], lc.eps_low, lc.eps_high)
                (loss_sum / num_tokens).backward()  # token-mean over this step's tokens (all ranks under torchrun)
                loss_total += float(loss_sum.detach())
                clipped += num_clipped
            ptx, lr, grad_norm = close_step(run, loop, policy, step)
            ptx_total += ptx

        # 7. log, checkpoint
        record = end_iteration(run, loop, chosen, batch, adv, per_token_epoch={"loss": loss_total},
                               per_token={"entropy": entropy_total}, clipped=clipped, ptx_total=ptx_total,
                               extra={"lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - t0},
                               console_print=console_print)
        last_loss = record["loss"]

    return finish_rl(run, loop, last_loss, {}, console_print)
