"""The plumbing ``novalign grpo`` and ``novalign ppo`` share (report section 2.1, equation (2)).

Both trainers (:mod:`novalign.train.grpo`, :mod:`novalign.train.ppo`) run the same skeleton and differ only
in the advantage estimate and the critic:

* :func:`setup_rl` -- prompts, session, tokenizer, reward mix, policy + frozen reference (a copy of the
  starting model), the rollout engine ``rollout.engine`` names (:func:`~novalign.train.rl.rollout.make_rollout_engine`),
  the PTX data;
* :func:`start_loop` -- the optimizer engine (:mod:`novalign.train.engine`: AdamW, LR schedule, resume) and
  the metrics log;
* :func:`collect_rollouts` -- one iteration's prompts, rollouts (pi_old), rewards (per source, with the LLM
  judge's failures counted) and the detached per-token top-k KL to the reference (:func:`rollout_kl`);
* :func:`ptx_backward` -- the PTX penalty of eq. (2) on one SFT micro-batch;
* :func:`end_iteration`, :func:`finish_rl` -- logs (:mod:`novalign.train.rl.logs`; under torchrun gathered
  from every rank), checkpoints, the final model.

Every training forward here -- reference KL, PTX on policy and reference -- runs on the same packed rows as
the policy's loss forward (``train.pack_tokens``, :func:`~novalign.train.rl.rollout.label_hidden`), or on
right-padded batches when it is 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from novalign.data.chat import IGNORE_INDEX
from novalign.train.rl.rewards import RewardFn
from novalign.train import dist as D
from novalign.models.forward import output_weight
from novalign.train.kl import chunked_topk_kl
from novalign.train.engine import Engine, start_engine
from novalign.train.loop import LoopResult
from novalign.train.metrics_log import MetricsLog
from novalign.models.packing import plan_padded_batches
from novalign.train.rl.algorithms import ptx_loss_sum
from novalign.train.rl.inputs import (
    PromptRecord,
    build_reward,
    close_reward,
    load_prompts,
    required_fields,
    prompt_batch,
    score_rollouts,
)
from novalign.train.rl.logs import (
    base_record,
    log_iteration,
    log_samples,
    truncate_samples_after,
)
from novalign.train.rl.rollout import (
    Rollout,
    completion_hidden,
    completion_tensors,
    group_by_prompt,
    label_hidden,
    make_rollout_engine,
)
from novalign.train.session import finish, start
from novalign.train.state import TrainState

__all__ = [
    "PTXData", "RLLoop", "RLRun", "RolloutBatch", "base_record", "close_step", "collect_rollouts", "end_iteration",
    "mini_batch_bounds", "mini_batch_tokens", "optimizer_steps",
    "finish_rl", "gather_batch", "tensor_all_reduce",
    "log_samples", "ptx_backward", "ptx_data", "rollout_kl", "setup_rl", "start_loop",
]


@dataclass
class PTXData:
    """SFT samples for the PTX term: ``micro_batch_size`` random samples per optimizer step, reshuffled per epoch."""

    samples: list[tuple[list[int], list[int]]]
    micro_batch_size: int
    seed: int

    def step_samples(self, step: int) -> list[tuple[list[int], list[int]]]:
        """The ``(input_ids, labels)`` samples of optimizer step ``step`` (a pure function of the step)."""
        per_epoch = math.ceil(len(self.samples) / self.micro_batch_size)
        epoch, index = divmod(step, per_epoch)
        chosen = plan_padded_batches(len(self.samples), self.micro_batch_size, seed=self.seed, epoch=epoch)[index]
        return [self.samples[i] for i in chosen]


@dataclass
class RLRun:
    """What ``run_grpo`` and ``run_ppo`` set up the same way (:func:`setup_rl`)."""

    cfg: Any  # GRPOConfig or PPOConfig
    prompts: list[PromptRecord]
    session: Any
    tokenizer: Any
    mix: RewardFn
    owns_reward: bool  # built from cfg.rewards (its LLM clients are closed at the end)
    load: Callable[[], nn.Module]
    policy: nn.Module
    ref: nn.Module
    engine: Any  # HFRollout or VLLMRollout
    ptx: PTXData | None
    iterations: int
    autocast: Callable


@dataclass
class RolloutBatch:
    """One iteration's rollouts, rows ordered ``g * n + j``, with their rewards and detached KL."""

    rollouts: list[Rollout]
    rewards: torch.Tensor  # [S] total reward (truncated_reward applied)
    parts: dict[str, list[float]]
    failures: dict[str, int]  # failed LLM judgments of this batch, per judge component (scored on_failure)
    truncated: torch.Tensor  # [S] bool
    old_logps: torch.Tensor  # [S, T] pi_old (the rollout's), CPU
    mask: torch.Tensor  # [S, T], CPU
    kl: torch.Tensor  # [S, T] top-k KL to the reference, detached, CPU
    global_tokens: int  # response tokens of the whole iteration, all data-parallel ranks together
    first_prompt: int = 0  # index of this rank's first prompt in the iteration's prompts

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


@dataclass
class RLLoop:
    """The training state of a run (:func:`start_loop`): the optimizer engine (``engine.save()`` writes an atomic
    checkpoint) and the metrics log."""

    engine: Engine  # trains the policy, or PPO's actor-critic
    metrics: MetricsLog

    @property
    def state(self) -> TrainState:
        return self.engine.state


def ptx_data(cfg: Any, tokenizer: Any) -> PTXData:
    """The PTX term's SFT samples from ``ptx.train_files`` (tokenized as SFT does, labels on assistant turns)."""
    from novalign.data.chat import load_chat_dataset

    if not cfg.ptx.train_files:
        raise ValueError("ptx.coef > 0 needs ptx.train_files (SFT chat data for the PTX KL term)")
    sft, _ = load_chat_dataset(cfg.ptx.train_files, tokenizer, max_length=cfg.ptx.max_length)
    if not sft:
        raise ValueError("no SFT samples for the PTX term in " + ", ".join(cfg.ptx.train_files))
    return PTXData([(s.input_ids, s.labels) for s in sft], cfg.ptx.micro_batch_size, cfg.train.seed)


def setup_rl(cfg: Any, reward: RewardFn | None, stage: str) -> RLRun:
    """Prompts, session, tokenizer, reward mix, policy + frozen reference, rollout engine, PTX data."""
    from novalign.models import attention
    from novalign.models.load import load_model, load_tokenizer

    if cfg.model.lora is not None:
        raise ValueError(f"novalign {stage} does not support LoRA yet: unset model.lora")
    prompts = load_prompts(cfg.prompt_files, required=required_fields(cfg.rewards) if reward is None else (),
                           skip_invalid=cfg.skip_invalid)
    # data parallel under torchrun: explicit gradient all-reduce ('auto' means ddp here; RL has no FSDP)
    session = start(cfg if cfg.train.distributed == "ddp" else
                    cfg.model_copy(update={"train": cfg.train.model_copy(update={"distributed": "ddp"})}))
    world = session.info.world_size
    if cfg.rollout.prompts_per_iteration % world:
        raise ValueError(f"rollout.prompts_per_iteration ({cfg.rollout.prompts_per_iteration}) must be a multiple of the "
                         f"{world} torchrun processes: each rolls out an equal share of the prompts")
    device, t, ro = session.device, cfg.train, cfg.rollout
    tokenizer = load_tokenizer(cfg.model.path)

    def load() -> nn.Module:
        return load_model(cfg.model.path, attn_implementation=attention.resolve_backend(cfg.model.attn_backend))

    policy = load().to(device)
    ref = load().to(device).eval().requires_grad_(False)  # frozen copy of the starting model
    engine = make_rollout_engine(ro, policy, tokenizer, cfg.model.path, chunk_size=t.loss_chunk_size,
                                 pack_tokens=t.pack_tokens)
    ptx = ptx_data(cfg, tokenizer) if cfg.ptx.coef > 0 else None
    mix = reward if reward is not None else build_reward(cfg.rewards, device.type)
    iterations = t.max_steps or t.epochs * math.ceil(len(prompts) / ro.prompts_per_iteration)
    return RLRun(cfg, prompts, session, tokenizer, mix, reward is None, load, policy, ref, engine, ptx, iterations,
                 session.autocast())


def start_loop(run: RLRun, module: nn.Module, console_print: Callable) -> RLLoop:
    """AdamW + LR schedule over ``iterations * ppo_epochs * mini_batches`` steps for ``module``'s parameters, resumed from the
    newest checkpoint when ``train.resume``; the metrics and sample logs cut back to the resumed iteration."""
    cfg, out, info = run.cfg, run.session.out, run.session.info
    steps = run.iterations * cfg.loss.ppo_epochs * cfg.loss.mini_batches
    engine = start_engine(module, cfg.optim, cfg.train, total_steps=steps, ckpt_root=out / "checkpoints", info=info,
                          device=run.session.device, console_print=console_print, unit="iteration")
    metrics = MetricsLog(out, enabled=info.is_main, tensorboard=cfg.train.tensorboard)
    metrics.truncate_after(engine.state.step)
    if info.is_main:
        truncate_samples_after(run, engine.state.step)
    module.train()
    return RLLoop(engine, metrics)


# ------------------------------------------------------------------ one iteration


@torch.no_grad()
def rollout_kl(policy: nn.Module, ref: nn.Module, rollouts: list[Rollout], k: int, batch_size: int, chunk_size: int,
               autocast: Callable, pack_tokens: int = 0) -> torch.Tensor:
    """``[S, T]`` per-token top-k KL(pi_policy || pi_ref) of every response (right-padded with 0), detached.

    Both forwards run on the same rows: packed to ``pack_tokens`` per row as the loss forward, or padded (0).
    """
    was_training = policy.training
    policy.eval()
    rows = []
    for s in range(0, len(rollouts), batch_size):
        pairs = [(r.prompt_ids, r.completion_ids) for r in rollouts[s : s + batch_size]]
        with autocast():
            h_pol, _ = completion_hidden(policy, pairs, pack_tokens)
            h_ref, _ = completion_hidden(ref, pairs, pack_tokens)
            kl = chunked_topk_kl(h_pol, output_weight(policy), h_ref, output_weight(ref), k=k, chunk_size=chunk_size)
        rows.extend(kl.float().cpu().split([len(c) for _, c in pairs]))
    policy.train(was_training)
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


def collect_rollouts(run: RLRun, iteration: int) -> tuple[list[PromptRecord], RolloutBatch]:
    """Steps 1-4 of an iteration: prompts, rollouts (pi_old = the policy now), rewards, detached top-k KL."""
    cfg = run.cfg
    t, ro, lc = cfg.train, cfg.rollout, cfg.loss
    info = run.session.info
    chosen = [run.prompts[i] for i in prompt_batch(len(run.prompts), ro.prompts_per_iteration, iteration, t.seed)]
    share = ro.prompts_per_iteration // info.world_size  # this rank's prompts: one contiguous block
    first = info.rank * share
    chosen = chosen[first : first + share]
    rollouts = run.engine.generate([m for m, _ in chosen], ro.n, temperature=ro.temperature, top_p=ro.top_p,
                                   top_k=ro.top_k, max_new_tokens=ro.max_new_tokens, seed=t.seed * 1_000_003 + iteration,
                                   first_prompt=first, tools=[f.get("tools") for _, f in chosen])
    index = group_by_prompt(rollouts)  # [G, n]
    rollouts = [rollouts[i] for i in index.flatten().tolist()]  # row g * n + j
    totals, parts, failures = score_rollouts(run.mix, chosen, rollouts)
    truncated = torch.tensor([r.truncated for r in rollouts])
    rewards = torch.tensor(totals, dtype=torch.float32)
    if lc.truncated_reward is not None:
        rewards = torch.where(truncated, torch.full_like(rewards, lc.truncated_reward), rewards)
    _, old_logps, mask = completion_tensors(rollouts)  # [S, T] each
    kl = rollout_kl(run.policy, run.ref, rollouts, lc.kl_top_k, ro.batch_size, t.loss_chunk_size, run.autocast,
                    t.pack_tokens)
    total = int(D.all_reduce_sum(int(mask.sum()), info, run.session.device))
    return chosen, RolloutBatch(rollouts, rewards, parts, failures, truncated, old_logps, mask, kl, total, first)


def ptx_backward(policy: nn.Module, ref: nn.Module, ptx: PTXData, step: int, cfg: Any, autocast: Callable,
                 info: D.DistInfo = D.DistInfo()) -> float:
    """Backpropagate the PTX term of eq. (2) on optimizer step ``step``'s SFT micro-batch; returns its token mean.

    It is a *penalty*: ``gamma * top-k KL(pi_theta || pi_ref)`` added to the minimized loss (see
    :func:`~novalign.train.rl.ptx_loss_sum` for why the printed ``+ gamma KL`` is read this way). Policy and
    reference run on the same rows, packed to ``train.pack_tokens`` (or padded when 0). Under data
    parallelism each rank takes every ``world_size``-th sample of the micro-batch and divides by the whole
    micro-batch's token count, so the summed gradients are the single-process token mean.
    """
    samples = ptx.step_samples(step)[info.rank :: info.world_size]
    device = next(policy.parameters()).device
    local = sum(1 for _, labels in samples for t in list(labels)[1:] if t != IGNORE_INDEX)
    total = max(1, int(D.all_reduce_sum(local, info, device)))
    ptx_sum = 0.0
    if samples:
        with autocast():
            h_pol, _ = label_hidden(policy, samples, cfg.train.pack_tokens)
            with torch.no_grad():
                h_ref, _ = label_hidden(ref, samples, cfg.train.pack_tokens)
            loss_sum, _ = ptx_loss_sum(h_pol, output_weight(policy), h_ref, output_weight(ref), cfg.ptx.coef,
                                       k=cfg.loss.kl_top_k, chunk_size=cfg.train.loss_chunk_size)
        (loss_sum / total).backward()
        ptx_sum = float(loss_sum.detach())
    return D.all_reduce_sum(ptx_sum, info, device) / total


def mini_batch_bounds(num_rows: int, mini_batches: int) -> list[tuple[int, int]]:
    """``mini_batches`` contiguous row ranges covering ``num_rows`` rollouts, as equal as possible.

    >>> mini_batch_bounds(10, 3)
    [(0, 3), (3, 7), (7, 10)]

    Raises:
        ValueError: more mini-batches than rollouts.
    """
    if mini_batches > num_rows:
        raise ValueError(f"loss.mini_batches = {mini_batches} but this rank has only {num_rows} rollouts per iteration")
    cuts = [round(i * num_rows / mini_batches) for i in range(mini_batches + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def optimizer_steps(run: RLRun, batch: RolloutBatch) -> Iterator[tuple[int, int, int, float]]:
    """``(epoch, lo, hi, num_tokens)`` of each optimizer step of an iteration, in order: ``ppo_epochs`` passes
    over the rollout rows, each split by :func:`mini_batch_bounds`; ``num_tokens`` (:func:`mini_batch_tokens`)
    divides that step's summed loss. The step's index within the iteration is its position in this sequence."""
    bounds = mini_batch_bounds(len(batch.rollouts), run.cfg.loss.mini_batches)
    for epoch in range(run.cfg.loss.ppo_epochs):
        for lo, hi in bounds:
            yield epoch, lo, hi, mini_batch_tokens(run, batch, lo, hi)


def mini_batch_tokens(run: RLRun, batch: RolloutBatch, lo: int, hi: int) -> float:
    """Response tokens of rows ``lo:hi`` summed over the data-parallel ranks (each rank's mini-batch ``i``);
    the whole batch's ``global_tokens`` when there is one mini-batch."""
    if run.cfg.loss.mini_batches == 1:
        return batch.global_tokens
    return D.all_reduce_sum(float(batch.mask[lo:hi].sum()), run.session.info, run.session.device)


def close_step(run: RLRun, loop: RLLoop, policy: nn.Module, index: int) -> tuple[float, float, float]:
    """End of the iteration's optimizer step number ``index`` (its position in :func:`optimizer_steps`): the PTX
    backward (when ``ptx.coef > 0``) on this optimizer step's SFT samples, then the engine's step (gradients
    summed over ranks -- each loss was divided by the global count --, clipped, stepped).
    Returns ``(ptx_loss or 0, lr, grad_norm)``."""
    ptx = 0.0
    if run.ptx is not None:
        step = loop.state.step * run.cfg.loss.ppo_epochs * run.cfg.loss.mini_batches + index
        ptx = ptx_backward(policy, run.ref, run.ptx, step, run.cfg, run.autocast, run.session.info)
    return (ptx, *loop.engine.step())


def tensor_all_reduce(run: RLRun) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function summing a tensor over the data-parallel ranks (None in a single process)."""
    info, device = run.session.info, run.session.device
    if not info.enabled:
        return None

    def reduce(t: torch.Tensor) -> torch.Tensor:
        u = t.detach().to(device, torch.float64).clone()
        torch.distributed.all_reduce(u)
        return u.to(t.device, t.dtype)

    return reduce


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[S_i, T_i]`` tensors -> ``[sum S_i, max T_i]``, right-padded with 0."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def gather_batch(run: RLRun, chosen: list[PromptRecord], batch: RolloutBatch,
                 adv: torch.Tensor) -> tuple[list[PromptRecord], RolloutBatch, torch.Tensor]:
    """The whole iteration's prompts, rollouts and advantages from every rank's share, on every rank, for the
    logs (the identity in a single process). Rollouts keep their prompt numbering across ranks."""
    if not run.session.info.enabled:
        return chosen, batch, adv
    mine = (chosen, batch.rollouts, batch.rewards, batch.parts, batch.failures, batch.truncated, batch.mask, batch.kl,
            adv.detach().cpu(), batch.first_prompt)
    shares: list[Any] = [None] * run.session.info.world_size
    torch.distributed.all_gather_object(shares, mine)
    prompts = [p for share in shares for p in share[0]]
    rollouts = [dataclasses.replace(r, prompt_index=r.prompt_index + share[9]) for share in shares for r in share[1]]
    parts = {name: [v for share in shares for v in share[3][name]] for name in batch.parts}
    failures = {name: sum(share[4][name] for share in shares) for name in batch.failures}
    cat = torch.cat
    merged = RolloutBatch(rollouts, cat([x[2] for x in shares]), parts, failures, cat([x[5] for x in shares]),
                          torch.zeros(0), _pad_cat([x[6] for x in shares]), _pad_cat([x[7] for x in shares]),
                          batch.global_tokens)
    return prompts, merged, _pad_cat([x[8] for x in shares])


def end_iteration(run: RLRun, loop: RLLoop, chosen: list[PromptRecord], batch: RolloutBatch, adv: torch.Tensor, *,
                  per_token_epoch: dict[str, float], per_token: dict[str, float], clipped: int, ptx_total: float,
                  extra: dict[str, Any], console_print: Callable) -> dict[str, Any]:
    """Count the iteration, build and log its record, log samples, checkpoint every ``save_every``.

    ``per_token_epoch`` are sums over this rank's response tokens and all ``ppo_epochs`` (``loss`` among them),
    ``per_token`` sums over its response tokens once; both are summed over ranks and divided by the iteration's
    token count (times ``ppo_epochs``), as is ``clipped``. Returns the record.
    """
    epochs, info = run.cfg.loss.ppo_epochs, run.session.info
    names = list(per_token_epoch) + list(per_token)
    sums = [*per_token_epoch.values(), *per_token.values(), float(clipped)]
    reduce = tensor_all_reduce(run)
    if reduce is not None:
        sums = reduce(torch.tensor(sums, dtype=torch.float64)).tolist()
    n = batch.global_tokens
    values = {k: v / (n * epochs) if k in per_token_epoch else v / max(1, n) for k, v in zip(names, sums)}
    loop.state.step += 1
    loop.state.tokens_seen += n
    chosen, batch, adv = gather_batch(run, chosen, batch, adv)
    record = base_record(loop.state.step, batch, values.pop("loss"), int(round(sums[-1])), epochs, adv)
    record.update(values)
    record.update(extra)
    if run.ptx is not None:
        record["ptx_loss"] = ptx_total / (epochs * run.cfg.loss.mini_batches)  # mean over the optimizer steps
    if info.is_main:
        log_iteration(run, loop.metrics, record, console_print)
        log_samples(run, loop.metrics, loop.state.step, chosen, batch)
    t = run.cfg.train
    if t.save_every and loop.state.step % t.save_every == 0 and loop.state.step < run.iterations:
        loop.engine.save()
    return record


# ------------------------------------------------------------------ logs, checkpoints, the end


def finish_rl(run: RLRun, loop: RLLoop, last_loss: float | None, summary: dict, console_print: Callable) -> LoopResult:
    """Final checkpoint (unless resumed at the end), ``model/`` and ``summary.json``; closes the judges' clients."""
    state = loop.state
    loop.engine.save_final()
    history = loop.metrics.records()
    loop.metrics.close()
    if run.owns_reward:
        close_reward(run.mix)
    result = LoopResult(state=state, final_loss=last_loss, eval_loss=None, resumed_from=loop.engine.resumed_from,
                        history=history)
    summary = {"iterations": state.step, "prompts": len(run.prompts), "n": run.cfg.rollout.n, "beta": run.cfg.loss.beta,
               "ptx_coef": run.cfg.ptx.coef, "rollout_engine": run.cfg.rollout.engine, **summary}
    finish(run.session, result, run.policy, run.tokenizer, run.load, summary, console_print)
    return result
