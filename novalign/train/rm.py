"""Reward model training (report section 2.1, equation 1) and scoring.

The reward model is the policy's architecture with a scalar head (:mod:`novalign.models.reward`), read at
the last real token of each response. Its loss is Bradley-Terry plus a pointwise MSE to the normalized
annotated absolute scores, with alpha = 0 for pairs that have none, so annotated data and open pairwise
sets mix in one run (:func:`~novalign.train.losses.bt_mse_loss`). Everything else is the shared loop:

    preference files  ->  pairs (+ targets r-hat)  ->  packed rows, each pair's two sequences side by side
    ->  loop.train(RewardObjective)  ->  <output_dir>/model  (AutoModelForSequenceClassification, 1 label)

Logged: loss, pairwise accuracy, mean margin r_w - r_l and MSE to the targets, on training steps and on
the held-out split; and every eval, the same metrics on a fixed sample of training pairs with the
train-vs-eval gap (``gap_accuracy``) -- the report's worry is that a BT reward model overfits within an epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from novalign.config import RMConfig
from novalign.data.preference import PreferencePair, load_preference_dataset
from novalign.models.reward import load_reward_model, rewards_at
from novalign.train.loop import LoopResult, train
from novalign.train.losses import bt_mse_loss
from novalign.models.packing import Batch
from novalign.train.pairs import UnitSet, make_unit_plan, read_splits, sample_units
from novalign.train.session import adapt_model, finish, start


@dataclass
class RewardObjective:
    """Equation (1) summed over the pairs of a batch; the loop divides by the pairs of the effective batch."""

    alpha: float
    metric_names: tuple[str, ...] = ("accuracy", "margin", "sq_error", "scored")

    def num_loss_tokens(self, batch: Batch) -> int:
        return int(batch.extras["last"].shape[0])  # pairs

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch.extras
        rewards = rewards_at(model, batch, x["last"].reshape(-1)).view(-1, 2)  # [P, 2]: chosen, rejected
        has_target = x["has_target"] > 0
        losses = bt_mse_loss(rewards[:, 0], rewards[:, 1], x["chosen_target"], x["rejected_target"], self.alpha * has_target.float())
        with torch.no_grad():
            margin = rewards[:, 0] - rewards[:, 1]
            targets = torch.stack([x["chosen_target"], x["rejected_target"]], 1)
            sq = torch.where(has_target[:, None], (rewards - targets.nan_to_num()).square(), torch.zeros_like(rewards))
        metrics = {
            "accuracy": float((margin > 0).sum()),
            "margin": float(margin.sum()),
            "sq_error": float(sq.sum()),
            "scored": float(2 * has_target.sum()),
        }
        return losses.sum(), metrics

    def reduce_metrics(self, sums: dict[str, float], pairs: float) -> dict[str, float]:
        """Accuracy and margin per pair; MSE per scored response (only when some pairs have targets)."""
        if not pairs:
            return {}
        out = {"accuracy": sums["accuracy"] / pairs, "margin": sums["margin"] / pairs}
        if sums.get("scored"):
            out["mse"] = sums["sq_error"] / sums["scored"]
        return out


def pair_units(pairs: Sequence[PreferencePair]) -> UnitSet:
    """Every pair is a unit of two sequences (chosen, rejected) with its targets (NaN where none)."""
    nan = math.nan
    return UnitSet(
        sequences=[(s.input_ids, s.labels) for p in pairs for s in (p.chosen, p.rejected)],
        members=[(2 * i, 2 * i + 1) for i in range(len(pairs))],
        unit_values={
            "chosen_target": [nan if p.chosen_target is None else p.chosen_target for p in pairs],
            "rejected_target": [nan if p.rejected_target is None else p.rejected_target for p in pairs],
            "has_target": [1.0 if p.has_targets else 0.0 for p in pairs],
        },
    )


def unit_plans(units: UnitSet, held: UnitSet | None, cfg, pad_id: int):
    """The training plan, the held-out plan and the train-vs-eval sample plan of a preference trainer."""
    row_len = cfg.packing.row_len or 2 * cfg.data.max_length  # a unit holds two sequences

    def plan(u: UnitSet):
        return make_unit_plan(u, packed=cfg.packing.enabled, row_len=row_len, micro_batch_size=cfg.train.micro_batch_size,
                              pad_id=pad_id, seed=cfg.train.seed, window=cfg.packing.window)

    eval_plan = plan(held) if held is not None and len(held) else None
    sample = sample_units(units, cfg.data.train_eval_pairs, cfg.train.seed) if eval_plan is not None else None
    return plan(units), eval_plan, (plan(sample) if sample is not None else None)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def run_rm(cfg: RMConfig, console_print=print) -> LoopResult:
    """``novalign rm``: train a reward model, then write ``<output_dir>/model`` and ``summary.json``."""
    from novalign.models import attention
    from novalign.models.load import load_tokenizer

    session = start(cfg)
    tokenizer = load_tokenizer(cfg.model.path)
    use_scores = cfg.loss.alpha > 0

    def read(files):
        d = load_preference_dataset(files, tokenizer, max_length=cfg.data.max_length, pairs=cfg.data.pairs,
                                    scores=cfg.scores, use_scores=use_scores, skip_invalid=cfg.data.skip_invalid)
        return d.pairs, d.skipped, d.num_duplicates

    train_pairs, eval_pairs, stats = read_splits(cfg.data, read, seed=cfg.train.seed, console_print=console_print,
                                                 is_main=session.info.is_main)
    pad_id = pad_token_id(tokenizer)
    plan, eval_plan, train_eval_plan = unit_plans(pair_units(train_pairs), pair_units(eval_pairs), cfg, pad_id)
    num_scored = sum(p.has_targets for p in train_pairs)
    if session.info.is_main:
        console_print(f"{len(train_pairs)} training pairs ({num_scored} with absolute scores), {len(eval_pairs)} held out")

    def load():
        backend = attention.resolve_backend(cfg.model.attn_backend)
        return load_reward_model(cfg.model.path, attn_implementation=backend, pad_token_id=pad_id)

    model = adapt_model(load(), cfg.model, session.device, task_type="SEQ_CLS")
    result = train(
        model, RewardObjective(cfg.loss.alpha), plan, train_cfg=cfg.train, optim_cfg=cfg.optim, output_dir=session.out,
        info=session.info, device=session.device, eval_plan=eval_plan, console_print=console_print,
        train_eval_plan=train_eval_plan,
    )
    summary = {**stats, "train_pairs_with_scores": num_scored, "alpha": cfg.loss.alpha, "eval": result.eval_metrics}
    finish(session, result, model, tokenizer, load, summary, console_print)
    return result


def score_file(
    model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 16, max_length: int = 4096,
    device: str = "cpu",
) -> int:
    """``novalign rm score``: every input record with a ``reward`` field added, one JSON line each, in order.

    A record is ``{"prompt": ..., "response": ...}`` (text or messages, as in preference files) or
    ``{"messages": [..., assistant]}``. Returns the number of records scored.

    Raises:
        DataError: a record that is not valid, naming file, line and field.
    """
    from novalign.data.io import DataError, iter_records, write_jsonl
    from novalign.data.preference import parse_prompt_response
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import score_conversations

    records, conversations = [], []
    for line, record in iter_records(input_path):
        conversations.append(parse_prompt_response(record, path=str(input_path), line=line))
        records.append((line, record))
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, device=device)
    try:
        rewards = score_conversations(model, tokenizer, conversations, max_length=max_length, batch_size=batch_size)
    except ValueError as exc:  # find the record that cannot be tokenized
        from novalign.data.preference import tokenize_response

        for (line, _), (prompt, response, tools) in zip(records, conversations):
            try:
                tokenize_response(tokenizer, prompt, response, max_length=max_length, tools=tools)
            except ValueError as bad:
                raise DataError(str(input_path), line, None, str(bad), reason="cannot tokenize") from exc
        raise
    return write_jsonl(output_path, ({**record, "reward": reward} for (_, record), reward in zip(records, rewards)))
