"""``novalign grpo``: GRPO as the Baichuan Alignment report runs it (section 2.1, equation (2)).

One iteration, spelled out in :func:`run_grpo`:

1. take the next ``prompts_per_iteration`` prompts (order: a pure function of seed and iteration);
2. sample ``n`` responses per prompt with the current policy (:class:`~novalign.train.rollout.HFRollout`,
   seeded per iteration), keeping their log-probabilities as pi_old;
3. score them with the configured weighted reward mix (:mod:`novalign.rewards`);
4. per response token, the report's top-k KL (k = 500) of the rollout policy against the frozen reference
   (a copy of the starting model), detached;
5. advantages: group-normalized outcome, then ``-beta * KL_t`` per token, returns with gamma = 1
   (:func:`~novalign.train.rl.grpo_token_advantages` says why the KL enters after the normalization);
6. ``ppo_epochs`` optimizer steps, each over the whole rollout batch: the clipped surrogate summed over all
   response tokens and divided once by their count (token-mean), plus, when ``ptx.coef > 0``, the PTX
   top-k KL penalty on one SFT micro-batch (:func:`~novalign.train.rl.ptx_loss_sum`); gradient clipping,
   AdamW, LR schedule per optimizer step;
7. log one record to ``metrics.jsonl``; every ``train.save_every`` iterations an atomic checkpoint
   (:mod:`novalign.train.state`) from which a resumed run continues bit for bit.

Departures from the issue's full scope, for now: single process only (raises under torchrun); no LoRA; no
vLLM engine (HFRollout only); no LLM-judge reward from the config (use :func:`run_grpo`'s ``reward``);
the PTX forwards use SFT's padded batches, not packed rows.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from novalign.config import GRPOConfig, RewardComponentConfig
from novalign.rewards import (
    RewardFn,
    WeightedMix,
    compute_rewards,
    exact_answer_reward,
    reward_model_reward,
    verifier_reward,
    weighted_mix,
)
from novalign.train.forward import decoder_hidden_states, output_weight
from novalign.train.kl import chunked_topk_kl
from novalign.train.loop import LoopResult, build_optimizer
from novalign.train.metrics_log import MetricsLog
from novalign.train.packing import collate_padded
from novalign.train.rl import (
    clipped_policy_loss_sum,
    grpo_token_advantages,
    ptx_loss_sum,
)
from novalign.train.rollout import (
    HFRollout,
    Rollout,
    completion_logprobs,
    completion_tensors,
    group_by_prompt,
)
from novalign.train.schedule import lr_factor
from novalign.train.session import finish, start
from novalign.train.state import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

__all__ = [
    "PromptRecord",
    "RLRun",
    "RolloutBatch",
    "base_record",
    "build_reward",
    "collect_rollouts",
    "finish_rl",
    "load_prompts",
    "log_iteration",
    "optimizer_and_resume",
    "optimizer_step",
    "prompt_batch",
    "ptx_backward",
    "rollout_kl",
    "run_grpo",
    "score_rollouts",
    "setup_rl",
]

PromptRecord = tuple[list[dict], dict[str, Any]]  # (messages ending in a user turn, fields for the rewards)


# ------------------------------------------------------------------ prompts and rewards


def load_prompts(files: list[str]) -> list[PromptRecord]:
    """Prompt records: ``messages`` (a last assistant turn is dropped) or ``prompt`` (text or messages).

    Raises:
        ValueError: no files, or no prompts in them. DataError: a malformed record (file and line named).
    """
    from novalign.data.chat import normalize_messages
    from novalign.data.io import DataError, iter_records

    if not files:
        raise ValueError("prompt_files is empty: give at least one JSONL or Parquet prompt file")
    out: list[PromptRecord] = []
    for path in files:
        for line, record in iter_records(path):
            raw = record.get("messages", record.get("prompt"))
            if raw is None:
                raise DataError(str(path), line, None, "a prompt record needs `messages` or `prompt`", reason="no prompt")
            msgs = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
            # the chat validator insists on a final assistant turn: validate with a placeholder, then drop it
            ends_with_answer = bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant"
            checked = normalize_messages({"messages": msgs if ends_with_answer else msgs + [{"role": "assistant", "content": "."}]},
                                         path=str(path), line=line)
            out.append((checked[:-1], {k: v for k, v in record.items() if k not in ("messages", "prompt")}))
    if not out:
        raise ValueError("no prompts in " + ", ".join(files))
    return out


def prompt_batch(num_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices of ``iteration``: consecutive slices of a stream of per-epoch shuffles (pure function)."""
    out = []
    for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, offset = divmod(pos, num_prompts)
        order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(order[offset]))
    return out


def _component(c: RewardComponentConfig, device: str) -> RewardFn:
    if c.type == "exact_answer":
        return exact_answer_reward(c.mode)
    if c.type == "ifeval":
        from novalign.eval.ifeval import ifeval_reward

        return verifier_reward(ifeval_reward, name="ifeval")
    if c.path is None:
        raise ValueError("a reward_model reward component needs `path` (a `novalign rm` output model directory)")
    return reward_model_reward(c.path, device=device)


def build_reward(components: list[RewardComponentConfig], device: str = "cpu") -> WeightedMix:
    """The configured weighted mix; its :meth:`~novalign.rewards.WeightedMix.evaluate` gives each component too."""
    if not components:
        raise ValueError("rewards is empty: configure at least one reward component")
    return weighted_mix([(_component(c, device), c.weight) for c in components])


# ------------------------------------------------------------------ forwards over rollouts


def _response_hidden(model: nn.Module, rollouts: list[Rollout]) -> torch.Tensor:
    """``[N, H]`` final hidden states at the positions that predict each response token, rollout-major."""
    from novalign.data.chat import IGNORE_INDEX

    samples = [(r.prompt_ids + r.completion_ids, [IGNORE_INDEX] * len(r.prompt_ids) + r.completion_ids) for r in rollouts]
    return _label_hidden(model, collate_padded(samples, 0).to(next(model.parameters()).device))


@torch.no_grad()
def rollout_kl(policy: nn.Module, ref: nn.Module, rollouts: list[Rollout], k: int, batch_size: int, chunk_size: int,
               autocast: Callable) -> torch.Tensor:
    """``[S, T]`` per-token top-k KL(pi_policy || pi_ref) of every response (right-padded with 0), detached."""
    was_training = policy.training
    policy.eval()
    rows = []
    for s in range(0, len(rollouts), batch_size):
        chunk = rollouts[s : s + batch_size]
        with autocast():
            kl = chunked_topk_kl(_response_hidden(policy, chunk), output_weight(policy), _response_hidden(ref, chunk),
                                 output_weight(ref), k=k, chunk_size=chunk_size)
        rows.extend(kl.float().cpu().split([len(r.completion_ids) for r in chunk]))
    policy.train(was_training)
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


# ------------------------------------------------------------------ shared by GRPO and PPO (novalign.train.ppo)


@dataclass
class RLRun:
    """What ``run_grpo`` and ``run_ppo`` set up the same way (:func:`setup_rl`)."""

    cfg: Any  # GRPOConfig or PPOConfig
    prompts: list[PromptRecord]
    session: Any
    tokenizer: Any
    mix: RewardFn
    load: Callable[[], nn.Module]
    policy: nn.Module
    ref: nn.Module
    engine: HFRollout
    ptx_plan: Any
    iterations: int
    autocast: Callable


@dataclass
class RolloutBatch:
    """One iteration's rollouts, rows ordered ``g * n + j``, with their rewards and detached KL."""

    rollouts: list[Rollout]
    rewards: torch.Tensor  # [S] total reward (truncated_reward applied)
    parts: dict[str, list[float]]
    truncated: torch.Tensor  # [S] bool
    old_logps: torch.Tensor  # [S, T] pi_old (the rollout's), CPU
    mask: torch.Tensor  # [S, T], CPU
    kl: torch.Tensor  # [S, T] top-k KL to the reference, detached, CPU

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def setup_rl(cfg: Any, reward: RewardFn | None, stage: str) -> RLRun:
    """Prompts, session, tokenizer, reward mix, policy + frozen reference, rollout engine, PTX plan."""
    from novalign.models import attention
    from novalign.models.load import load_model, load_tokenizer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"novalign {stage} runs in a single process for now; launch it without torchrun")
    if cfg.model.lora is not None:
        raise ValueError(f"novalign {stage} does not support LoRA yet: unset model.lora")
    prompts = load_prompts(cfg.prompt_files)
    session = start(cfg)
    device, t, ro = session.device, cfg.train, cfg.rollout
    tokenizer = load_tokenizer(cfg.model.path)
    mix = reward if reward is not None else build_reward(cfg.rewards, device.type)

    def load() -> nn.Module:
        return load_model(cfg.model.path, attn_implementation=attention.resolve_backend(cfg.model.attn_backend))

    policy = load().to(device)
    ref = load().to(device).eval().requires_grad_(False)  # frozen copy of the starting model
    engine = HFRollout(policy, tokenizer, batch_size=ro.batch_size, chunk_size=t.loss_chunk_size, pack_tokens=t.pack_tokens)
    ptx_plan = _ptx_plan(cfg, tokenizer) if cfg.ptx.coef > 0 else None
    iterations = t.max_steps or t.epochs * math.ceil(len(prompts) / ro.prompts_per_iteration)
    return RLRun(cfg, prompts, session, tokenizer, mix, load, policy, ref, engine, ptx_plan, iterations, session.autocast())


def optimizer_and_resume(run: RLRun, module: nn.Module, console_print: Callable):
    """AdamW + LR schedule over ``iterations * ppo_epochs`` steps for ``module``'s parameters; resume when asked.

    Returns ``(optimizer, scheduler, state, resumed_from, save)``; ``save()`` writes an atomic checkpoint
    of ``module``, the optimizer, the scheduler and the RNG states.
    """
    cfg, out = run.cfg, run.session.out
    total_steps = run.iterations * cfg.loss.ppo_epochs
    optimizer = build_optimizer(module, cfg.optim, run.session.device)
    warmup = int(round(cfg.optim.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.optim.schedule, cfg.optim.min_lr_ratio))
    state = TrainState()
    resumed_from = latest_checkpoint(out / "checkpoints") if cfg.train.resume else None
    if resumed_from is not None:
        state, pieces = load_checkpoint(resumed_from, rank=0)
        module.load_state_dict(pieces["model"])
        optimizer.load_state_dict(pieces["optimizer"])
        scheduler.load_state_dict(pieces["scheduler"])
        restore_rng(pieces["rng"])
        console_print(f"resumed from {resumed_from} at iteration {state.step}")

    def save() -> None:
        save_checkpoint(out / "checkpoints", state, model_state=module.state_dict(), optimizer_state=optimizer.state_dict(),
                        scheduler_state=scheduler.state_dict(), rank=0, is_main=True, keep_last=cfg.train.keep_last)

    return optimizer, scheduler, state, resumed_from, save


def collect_rollouts(run: RLRun, iteration: int) -> tuple[list[PromptRecord], RolloutBatch]:
    """Steps 1-4 of an iteration: prompts, rollouts (pi_old = the policy now), rewards, detached top-k KL."""
    cfg = run.cfg
    t, ro, lc = cfg.train, cfg.rollout, cfg.loss
    chosen = [run.prompts[i] for i in prompt_batch(len(run.prompts), ro.prompts_per_iteration, iteration, t.seed)]
    rollouts = run.engine.generate([m for m, _ in chosen], ro.n, temperature=ro.temperature, top_p=ro.top_p,
                                   top_k=ro.top_k, max_new_tokens=ro.max_new_tokens, seed=t.seed * 1_000_003 + iteration)
    index = group_by_prompt(rollouts)  # [G, n]
    rollouts = [rollouts[i] for i in index.flatten().tolist()]  # row g * n + j
    totals, parts = score_rollouts(run.mix, chosen, rollouts)
    truncated = torch.tensor([r.truncated for r in rollouts])
    rewards = torch.tensor(totals, dtype=torch.float32)
    if lc.truncated_reward is not None:
        rewards = torch.where(truncated, torch.full_like(rewards, lc.truncated_reward), rewards)
    _, old_logps, mask = completion_tensors(rollouts)  # [S, T] each
    kl = rollout_kl(run.policy, run.ref, rollouts, lc.kl_top_k, ro.batch_size, t.loss_chunk_size, run.autocast)
    return chosen, RolloutBatch(rollouts, rewards, parts, truncated, old_logps, mask, kl)


def optimizer_step(run: RLRun, params: list, optimizer, scheduler) -> tuple[float, float]:
    """Clip gradients (``optim.max_grad_norm``), step, schedule, zero; returns ``(lr, grad_norm)`` of the step."""
    grad_norm = 0.0
    if run.cfg.optim.max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.max_grad_norm))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr, grad_norm


def base_record(step: int, batch: RolloutBatch, loss: float, clipped: int, epochs: int, adv: torch.Tensor) -> dict[str, Any]:
    """The log fields GRPO and PPO share: reward (mean, std, per source), KL, clip fraction, lengths, advantages."""
    n, mask, rewards = batch.num_tokens, batch.mask, batch.rewards
    record: dict[str, Any] = {
        "step": step, "loss": loss, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "kl_mean": float((batch.kl * mask).sum() / n), "clip_fraction": clipped / (n * epochs),
        "response_length": float(mask.sum(1).float().mean()), "truncated_fraction": float(batch.truncated.float().mean()),
        "advantage_std": float(adv.cpu()[mask.bool()].std()) if n > 1 else 0.0,
    }
    for name, values in batch.parts.items():
        v = torch.tensor(values, dtype=torch.float32)
        record[f"reward_{name}_mean"], record[f"reward_{name}_std"] = float(v.mean()), float(v.std())
    return record


def log_iteration(run: RLRun, metrics: MetricsLog, record: dict[str, Any], console_print: Callable) -> None:
    t = run.cfg.train
    if record["step"] % t.log_every == 0 or record["step"] == run.iterations:
        metrics.log(record)
        if t.progress:
            console_print(f"iteration {record['step']}/{run.iterations}: reward {record['reward_mean']:.3f}, "
                          f"kl {record['kl_mean']:.4f}, loss {record['loss']:.4f}")


def _prompt_text(messages: list[dict]) -> str:
    """The prompt as shown in the sample table: its last message's content."""
    return str(messages[-1].get("content", "")) if messages else ""


def _md_cell(text: str, limit: int = 500) -> str:
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def log_samples(run: RLRun, metrics: MetricsLog, step: int, chosen: list[PromptRecord], batch: RolloutBatch) -> None:
    """Every ``train.sample_every`` iterations: this iteration's rollouts as prompt / completion / reward rows,
    appended to ``<output_dir>/samples.jsonl`` (tagged with the iteration) and, when TensorBoard is on, a
    markdown text table under ``samples``."""
    every = run.cfg.train.sample_every
    if not every or step % every:
        return
    rows = [{"step": step, "prompt_index": r.prompt_index, "sample_index": r.sample_index,
             "prompt": _prompt_text(chosen[r.prompt_index][0]), "completion": r.text,
             "reward": float(reward), "truncated": bool(r.truncated)}
            for r, reward in zip(batch.rollouts, batch.rewards.tolist())]
    with open(run.session.out / "samples.jsonl", "a") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    tb = getattr(metrics, "_tb", None)
    if tb is not None:
        table = ["| prompt | completion | reward |", "| --- | --- | --- |"]
        table += [f"| {_md_cell(r['prompt'])} | {_md_cell(r['completion'])} | {r['reward']:.4g} |" for r in rows]
        tb.add_text("samples", "\n".join(table), step)


def truncate_samples_after(run: RLRun, step: int) -> None:
    """On resume, drop sample rows newer than the checkpoint (as the metrics log does)."""
    path = run.session.out / "samples.jsonl"
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in kept))


def finish_rl(run: RLRun, metrics: MetricsLog, state: TrainState, resumed_from, save: Callable, last_loss: float | None,
              summary: dict, console_print: Callable) -> LoopResult:
    """Final checkpoint (unless resumed at the end), ``model/`` and ``summary.json``."""
    if resumed_from is None or resumed_from.name != f"step-{state.step:08d}":
        save()
    history = metrics.records()
    metrics.close()
    result = LoopResult(state=state, final_loss=last_loss, eval_loss=None, resumed_from=resumed_from, history=history)
    summary = {"iterations": state.step, "prompts": len(run.prompts), "n": run.cfg.rollout.n, "beta": run.cfg.loss.beta,
               "ptx_coef": run.cfg.ptx.coef, **summary}
    finish(run.session, result, run.policy, run.tokenizer, run.load, summary, console_print)
    return result


# ------------------------------------------------------------------ the trainer


def run_grpo(cfg: GRPOConfig, reward: RewardFn | None = None, console_print=print) -> LoopResult:
    """``novalign grpo``: train, then write ``<output_dir>/model`` and ``summary.json``.

    Args:
        reward: a reward function to use instead of ``cfg.rewards`` (e.g. a custom verifier or an LLM judge).
            A :class:`~novalign.rewards.WeightedMix` also has its components logged.
    """
    run = setup_rl(cfg, reward, "grpo")
    device, t, ro, lc = run.session.device, cfg.train, cfg.rollout, cfg.loss
    policy, autocast = run.policy, run.autocast
    optimizer, scheduler, state, resumed_from, save = optimizer_and_resume(run, policy, console_print)
    metrics = MetricsLog(run.session.out, tensorboard=t.tensorboard)
    metrics.truncate_after(state.step)
    truncate_samples_after(run, state.step)
    params = [p for p in policy.parameters() if p.requires_grad]
    last_loss: float | None = None
    policy.train()
    while state.step < run.iterations:
        t0 = time.perf_counter()
        # 1-4. prompts, rollouts (pi_old = the policy now), rewards, detached top-k KL to the reference
        chosen, batch = collect_rollouts(run, state.step)
        rollouts = batch.rollouts
        # 5. the token-level advantages
        adv = grpo_token_advantages(batch.rewards.view(-1, ro.n), batch.kl, batch.mask, lc.beta,
                                    kl_in_group_norm=lc.kl_in_group_norm, scale_by_std=lc.scale_by_std)
        num_tokens = batch.num_tokens
        old_logps, adv, mask = (x.to(device) for x in (batch.old_logps, adv, batch.mask))

        # 6. ppo_epochs optimizer steps over the whole rollout batch (token-mean over all its response tokens)
        loss_total = clipped = ptx_total = entropy_total = 0.0
        lr = grad_norm = 0.0
        for epoch in range(lc.ppo_epochs):
            for s in range(0, len(rollouts), t.micro_batch_size):
                chunk = rollouts[s : s + t.micro_batch_size]
                with autocast():
                    logps, ents = completion_logprobs(policy, [(r.prompt_ids, r.completion_ids) for r in chunk],
                                                      temperature=ro.temperature, batch_size=len(chunk),
                                                      chunk_size=t.loss_chunk_size, return_entropy=True,
                                                      pack_tokens=t.pack_tokens)
                if epoch == 0:  # the rollout policy (no optimizer step yet this iteration)
                    entropy_total += float(sum(float(e.sum()) for e in ents))
                logps = torch.nn.utils.rnn.pad_sequence(logps, batch_first=True)  # [s, width], this chunk's longest
                width = logps.shape[1]
                rows = slice(s, s + len(chunk))
                loss_sum, _, num_clipped = clipped_policy_loss_sum(
                    logps, old_logps[rows, :width], adv[rows, :width], mask[rows, :width], lc.eps_low, lc.eps_high)
                (loss_sum / num_tokens).backward()
                loss_total += float(loss_sum.detach())
                clipped += num_clipped
            if run.ptx_plan is not None:
                ptx_total += ptx_backward(policy, run.ref, run.ptx_plan, state.step * lc.ppo_epochs + epoch, cfg, autocast)
            lr, grad_norm = optimizer_step(run, params, optimizer, scheduler)

        # 7. log, checkpoint
        state.step += 1
        state.tokens_seen += num_tokens
        last_loss = loss_total / (num_tokens * lc.ppo_epochs)
        record = base_record(state.step, batch, last_loss, clipped, lc.ppo_epochs, adv)
        record.update({"entropy": entropy_total / max(1, num_tokens), "lr": lr, "grad_norm": grad_norm,
                       "seconds": time.perf_counter() - t0})
        if run.ptx_plan is not None:
            record["ptx_loss"] = ptx_total / lc.ppo_epochs
        log_iteration(run, metrics, record, console_print)
        log_samples(run, metrics, state.step, chosen, batch)
        if t.save_every and state.step % t.save_every == 0 and state.step < run.iterations:
            save()

    return finish_rl(run, metrics, state, resumed_from, save, last_loss, {}, console_print)


def _label_hidden(model: nn.Module, batch) -> torch.Tensor:
    """``[N, H]`` hidden states at the positions that predict an SFT batch's labelled tokens."""
    from novalign.data.chat import IGNORE_INDEX

    hidden = decoder_hidden_states(model, batch)[:, :-1]
    keep = torch.nonzero(batch.labels[:, 1:].reshape(-1) != IGNORE_INDEX, as_tuple=False).flatten()
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)


def score_rollouts(mix: RewardFn, chosen: list[PromptRecord], rollouts: list[Rollout]) -> tuple[list[float], dict[str, list[float]]]:
    """Total reward of every rollout, and each component's rewards when ``mix`` is a :class:`WeightedMix`.

    Each rollout's prompt record fields (``answer``, ...) go to the rewards, ``None`` where a record lacks one.
    Raises :class:`~novalign.rewards.RewardError` for a reward that fails or returns a non-number.
    """
    owners = [chosen[r.prompt_index] for r in rollouts]
    keys = sorted({k for _, fields in chosen for k in fields})
    fields = {k: [f.get(k) for _, f in owners] for k in keys}
    prompts, texts = [m for m, _ in owners], [r.text for r in rollouts]
    if isinstance(mix, WeightedMix):
        scored = mix.evaluate(prompts, texts, **fields)
        return scored.total, scored.components
    return compute_rewards(mix, prompts, texts, **fields), {}


def _ptx_plan(cfg: GRPOConfig, tokenizer: Any):
    """SFT's padded data plan over ``ptx.train_files``: one micro-batch per optimizer step."""
    from novalign.data.chat import load_chat_dataset
    from novalign.train.sft import make_plan

    if not cfg.ptx.train_files:
        raise ValueError("ptx.coef > 0 needs ptx.train_files (SFT chat data for the PTX KL term)")
    sft, _ = load_chat_dataset(cfg.ptx.train_files, tokenizer, max_length=cfg.ptx.max_length)
    if not sft:
        raise ValueError("no SFT samples for the PTX term in " + ", ".join(cfg.ptx.train_files))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return make_plan([(s.input_ids, s.labels) for s in sft], packed=False, row_len=cfg.ptx.max_length,
                     micro_batch_size=cfg.ptx.micro_batch_size, pad_id=pad, seed=cfg.train.seed)


def ptx_backward(policy: nn.Module, ref: nn.Module, plan, step: int, cfg: GRPOConfig, autocast: Callable) -> float:
    """Backpropagate the PTX term of eq. (2) on optimizer step ``step``'s SFT micro-batch; returns its token mean.

    It is a *penalty*: ``gamma * top-k KL(pi_theta || pi_ref)`` added to the minimized loss (see
    :func:`~novalign.train.rl.ptx_loss_sum` for why the printed ``+ gamma KL`` is read this way).
    """
    per_epoch = len(plan.micro_batches(0))
    batch = plan.collate(plan.micro_batches(step // per_epoch)[step % per_epoch]).to(next(policy.parameters()).device)
    with autocast():
        ptx_sum, num_tokens = ptx_loss_sum(_label_hidden(policy, batch), output_weight(policy), _label_hidden(ref, batch),
                                           output_weight(ref), cfg.ptx.coef, k=cfg.loss.kl_top_k,
                                           chunk_size=cfg.train.loss_chunk_size)
    (ptx_sum / max(1, num_tokens)).backward()
    return float(ptx_sum.detach()) / max(1, num_tokens)
