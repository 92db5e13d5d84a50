"""DPO and KTO: the report's comparison baselines, on the same preference pipeline as the reward model.

Both train the policy directly against a frozen reference (by default the starting policy itself):

* DPO (:func:`~novalign.train.losses.dpo_loss`) on pairs -- the same pairs, packing and units as ``novalign rm``;
* KTO (:func:`~novalign.train.losses.kto_loss`) on single responses labelled desirable or undesirable --
  unpaired records, or both sides of every pair. Each sample travels with a KL partner (its prompt with
  another sample's response, a fixed derangement), whose policy/reference log-ratio, averaged over the
  micro-batch, is KTO's reference point z0.

The reference model's log-probabilities never change, so they are computed once, before training, for
every sequence (training and held-out), kept next to the data (``extras["ref_logp"]``) and saved to
``<output_dir>/reference_logps.pt``; a resumed run reads them back instead of loading the reference again.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from novalign.config import DPOConfig, KTOConfig
from novalign.data.preference import (
    UnpairedSample,
    load_preference_dataset,
    load_unpaired_dataset,
    tokenize_response,
)
from novalign.train import dist as D
from novalign.train.loop import LoopResult, train
from novalign.train.losses import dpo_loss, kto_loss
from novalign.models.packing import Batch
from novalign.train.pairs import UnitSet, read_splits, reference_logprobs, unit_logprobs
from novalign.train.rm import pad_token_id, pair_units, unit_plans
from novalign.train.session import Session, adapt_model, finish, start


@dataclass
class DPOObjective:
    """DPO summed over the pairs of a batch. Metrics: the implicit-reward accuracy and margin, and the
    policy's and the reference's chosen-over-rejected log-ratio (DPO should raise the first above the second)."""

    beta: float
    label_smoothing: float = 0.0
    chunk_size: int = 4096
    metric_names: tuple[str, ...] = ("accuracy", "margin", "chosen_reward", "rejected_reward", "logratio", "ref_logratio")

    def num_loss_tokens(self, batch: Batch) -> int:
        return int(batch.extras["last"].shape[0])  # pairs

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logps = unit_logprobs(model, batch, self.chunk_size)  # [P, 2]
        ref = batch.extras["ref_logp"]  # [P, 2]
        losses, chosen_r, rejected_r = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], self.beta, self.label_smoothing)
        margin = chosen_r - rejected_r
        metrics = {
            "accuracy": float((margin > 0).sum()),
            "margin": float(margin.sum()),
            "chosen_reward": float(chosen_r.sum()),
            "rejected_reward": float(rejected_r.sum()),
            "logratio": float((logps[:, 0] - logps[:, 1]).detach().sum()),
            "ref_logratio": float((ref[:, 0] - ref[:, 1]).sum()),
        }
        return losses.sum(), metrics


@dataclass
class KTOObjective:
    """KTO summed over the samples of a batch; z0 is the micro-batch's mean KL-partner log-ratio, clamped at 0."""

    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    chunk_size: int = 4096
    metric_names: tuple[str, ...] = ("kl", "desirable", "desirable_reward", "undesirable_reward", "accuracy")

    def num_loss_tokens(self, batch: Batch) -> int:
        return int(batch.extras["last"].shape[0])  # samples

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logps = unit_logprobs(model, batch, self.chunk_size)  # [N, 2]: sample, KL partner
        ref = batch.extras["ref_logp"]
        desirable = batch.extras["desirable"] > 0
        kl = (logps[:, 1] - ref[:, 1]).mean().clamp(min=0).detach()
        losses, rewards = kto_loss(logps[:, 0], ref[:, 0], desirable, kl, self.beta, self.desirable_weight, self.undesirable_weight)
        metrics = {
            "kl": float(kl) * len(rewards),
            "desirable": float(desirable.sum()),
            "desirable_reward": float(rewards[desirable].sum()),
            "undesirable_reward": float(rewards[~desirable].sum()),
            "accuracy": float(((rewards > 0) == desirable).sum()),
        }
        return losses.sum(), metrics

    def reduce_metrics(self, sums: dict[str, float], samples: float) -> dict[str, float]:
        """Per-sample means; the two rewards are means over their own class."""
        if not samples:
            return {}
        n_good, n_bad = sums["desirable"], samples - sums["desirable"]
        out = {"kl": sums["kl"] / samples, "accuracy": sums["accuracy"] / samples}
        if n_good:
            out["desirable_reward"] = sums["desirable_reward"] / n_good
        if n_bad:
            out["undesirable_reward"] = sums["undesirable_reward"] / n_bad
        return out


def kto_units(samples: list[UnpairedSample], tokenizer: Any, max_length: int, seed: int) -> UnitSet:
    """Each sample with its KL partner: its own prompt with the response of the next sample in a fixed
    shuffled cycle (a partner that does not fit ``max_length`` falls back to the sample itself)."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    partner = {order[j]: order[(j + 1) % len(order)] for j in range(len(order))}
    sequences = []
    for i, s in enumerate(samples):
        sequences.append((s.sample.input_ids, s.sample.labels))
        try:
            kl = tokenize_response(tokenizer, s.prompt, samples[partner[i]].message, max_length=max_length,
                                   tools=s.tools)
            sequences.append((kl.input_ids, kl.labels))
        except ValueError:
            sequences.append(sequences[-1])
    return UnitSet(
        sequences=sequences,
        members=[(2 * i, 2 * i + 1) for i in range(len(samples))],
        unit_values={"desirable": [1.0 if s.desirable else 0.0 for s in samples]},
    )


def attach_reference_logps(
    session: Session, cfg: DPOConfig | KTOConfig, unit_sets: list[UnitSet], load_reference: Callable[[], nn.Module],
    pad_id: int, console_print: Callable[[str], None] = print,
) -> None:
    """Fill ``sequence_values["ref_logp"]`` of every unit set: read from ``reference_logps.pt`` when it was
    computed for exactly these sequences, else computed now (sharded over ranks) and saved."""
    sequences = [s for u in unit_sets for s in u.sequences]
    digest = hashlib.sha256(json.dumps([cfg.reference_path or cfg.model.path, sequences]).encode()).hexdigest()
    path = session.out / "reference_logps.pt"
    cached = None
    if path.exists():
        blob = torch.load(path, weights_only=True)
        cached = blob["logps"] if blob.get("digest") == digest else None
    # every rank must agree before the (collective) computation
    if D.all_reduce_sum(int(cached is not None), session.info, session.device) < session.info.world_size:
        ref = load_reference()
        row_len = cfg.packing.row_len or 2 * cfg.data.max_length
        cached = reference_logprobs(
            ref, sequences, packed=cfg.packing.enabled, row_len=row_len, micro_batch_size=cfg.train.micro_batch_size,
            pad_id=pad_id, info=session.info, device=session.device, autocast=session.autocast(),
            chunk_size=cfg.train.loss_chunk_size,
        )
        del ref
        if session.info.is_main:
            torch.save({"digest": digest, "logps": cached}, path)
            console_print(f"reference log-probs computed for {len(sequences)} sequences -> {path}")
    elif session.info.is_main:
        console_print(f"reference log-probs read from {path}")
    offset = 0
    for u in unit_sets:
        u.sequence_values["ref_logp"] = cached[offset : offset + len(u.sequences)]
        offset += len(u.sequences)


def _policy_loader(cfg: DPOConfig | KTOConfig, path: str | None = None) -> Callable[[], nn.Module]:
    from novalign.models import attention
    from novalign.models.load import load_model

    return lambda: load_model(path or cfg.model.path, attn_implementation=attention.resolve_backend(cfg.model.attn_backend))


def _run(cfg, session: Session, objective, units: UnitSet, held: UnitSet, tokenizer, stats: dict, console_print) -> LoopResult:
    """Reference log-probs, then the loop, then the model directory -- the part DPO and KTO share."""
    load_policy = _policy_loader(cfg)
    pad_id = pad_token_id(tokenizer)
    policy = load_policy().to(session.device)
    # the default reference is the starting policy itself: score with it before it trains
    load_reference = (lambda: policy) if cfg.reference_path is None else _policy_loader(cfg, cfg.reference_path)
    attach_reference_logps(session, cfg, [units, held], lambda: load_reference().to(session.device), pad_id, console_print)
    plan, eval_plan, train_eval_plan = unit_plans(units, held, cfg, pad_id)
    model = adapt_model(policy, cfg.model, session.device)
    result = train(
        model, objective, plan, train_cfg=cfg.train, optim_cfg=cfg.optim, output_dir=session.out, info=session.info,
        device=session.device, eval_plan=eval_plan, console_print=console_print, train_eval_plan=train_eval_plan,
    )
    finish(session, result, model, tokenizer, load_policy, {**stats, "eval": result.eval_metrics}, console_print)
    return result


def _start_with_data(cfg: DPOConfig | KTOConfig, load_dataset, field: str, console_print):
    """The set-up DPO and KTO share: start the session, load the policy's tokenizer, and read the train and
    held-out splits with ``load_dataset`` (its ``field`` holds the examples). Returns
    ``(session, tokenizer, train, held_out, stats)``."""
    from novalign.models.load import load_tokenizer

    session = start(cfg)
    tokenizer = load_tokenizer(cfg.model.path)

    def read(files):
        d = load_dataset(files, tokenizer, max_length=cfg.data.max_length, pairs=cfg.data.pairs,
                         scores=cfg.scores, skip_invalid=cfg.data.skip_invalid)
        return getattr(d, field), d.skipped, d.num_duplicates

    train_part, held, stats = read_splits(cfg.data, read, seed=cfg.train.seed, console_print=console_print,
                                          is_main=session.info.is_main)
    return session, tokenizer, train_part, held, stats


def run_dpo(cfg: DPOConfig, console_print=print) -> LoopResult:
    """``novalign dpo``: DPO against the starting policy (or ``reference_path``); writes ``<output_dir>/model``."""
    session, tokenizer, train_pairs, eval_pairs, stats = _start_with_data(cfg, load_preference_dataset, "pairs",
                                                                          console_print)
    if session.info.is_main:
        console_print(f"{len(train_pairs)} training pairs, {len(eval_pairs)} held out")
    objective = DPOObjective(cfg.loss.beta, cfg.loss.label_smoothing, cfg.train.loss_chunk_size)
    return _run(cfg, session, objective, pair_units(train_pairs), pair_units(eval_pairs), tokenizer, stats, console_print)


def run_kto(cfg: KTOConfig, console_print=print) -> LoopResult:
    """``novalign kto``: KTO against the starting policy (or ``reference_path``); writes ``<output_dir>/model``."""
    session, tokenizer, train_samples, eval_samples, stats = _start_with_data(cfg, load_unpaired_dataset, "samples",
                                                                              console_print)
    num_good = sum(s.desirable for s in train_samples)
    if session.info.is_main:
        console_print(f"{len(train_samples)} training samples ({num_good} desirable), {len(eval_samples)} held out")
    stats["train_desirable"] = num_good
    objective = KTOObjective(cfg.loss.beta, cfg.loss.desirable_weight, cfg.loss.undesirable_weight, cfg.train.loss_chunk_size)
    units = kto_units(train_samples, tokenizer, cfg.data.max_length, cfg.train.seed)
    held = kto_units(eval_samples, tokenizer, cfg.data.max_length, cfg.train.seed)
    return _run(cfg, session, objective, units, held, tokenizer, stats, console_print)
