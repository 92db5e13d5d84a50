"""Supervised fine-tuning (report section 2.1), with sample packing (section 2.2).

The objective is next-token cross-entropy on assistant tokens, averaged over every loss token of the
effective batch. Everything else -- optimizer, schedule, accumulation, clipping, checkpoints, resume,
logging, data parallelism -- is the shared loop in ``loop.py``; this file only assembles the pieces:

    tokenizer + chat data  ->  packed rows (best-fit decreasing)  ->  model (+ LoRA, + checkpointing)
    ->  loop.train(SFTObjective)  ->  <output_dir>/model (a Hugging Face directory)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from novalign.config import SFTConfig
from novalign.models import attention
from novalign.train.loop import DataPlan, LoopResult, train
from novalign.models.packing import (
    Batch,
    collate_packed,
    collate_padded,
    plan_packed_rows,
    plan_padded_batches,
    utilization,
)
from novalign.train.session import adapt_model, finish, start
from novalign.train.sft_objective import SFTObjective  # noqa: F401  (re-exported: the objective lives apart so it imports no config)


def make_plan(
    samples: Sequence[tuple[list[int], list[int]]],
    *,
    packed: bool,
    row_len: int,
    micro_batch_size: int,
    pad_id: int,
    seed: int,
    window: int | None = None,
) -> DataPlan:
    """Packed: micro-batch = ``micro_batch_size`` BFD rows. Padded: ``micro_batch_size`` random samples."""
    lengths = [len(ids) for ids, _ in samples]
    if packed:
        too_long = [i for i, n in enumerate(lengths) if n > row_len]
        if too_long:
            raise ValueError(f"{len(too_long)} samples are longer than the packed row length {row_len}")

        def micro_batches(epoch: int):
            rows = plan_packed_rows(lengths, row_len, seed=seed, epoch=epoch, window=window)
            return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]

        return DataPlan(micro_batches, lambda rows: collate_packed(samples, rows, row_len, pad_id))

    def padded(epoch: int):
        return plan_padded_batches(len(samples), micro_batch_size, seed=seed, epoch=epoch)

    return DataPlan(padded, lambda idx: collate_padded([samples[i] for i in idx], pad_id))


def plan_utilization(plan: DataPlan, epoch: int = 0) -> float:
    real = rows = 0
    for spec in plan.micro_batches(epoch):
        b = plan.collate(spec)
        real += b.num_real_tokens
        rows += b.num_row_tokens
    return utilization(real, rows)


def prepare_model(cfg: SFTConfig, device: torch.device) -> nn.Module:
    """Load the model with the configured attention backend, LoRA and gradient checkpointing."""
    from novalign.models.load import load_model

    model = load_model(cfg.model.path, dtype="float32", attn_implementation=attention.resolve_backend(cfg.model.attn_backend))
    return adapt_model(model, cfg.model, device)


def run_sft(cfg: SFTConfig, console_print=print) -> LoopResult:
    """``novalign sft``: train, then write ``<output_dir>/model`` and ``<output_dir>/summary.json``."""
    from novalign.data.chat import load_chat_dataset
    from novalign.data.io import SkipReport
    from novalign.data.text import load_text_dataset
    from novalign.models.load import load_model, load_tokenizer

    if not cfg.data.train_files and not cfg.data.text_files:
        raise ValueError("data.train_files and data.text_files are empty: give at least one JSONL or Parquet file")
    session = start(cfg)
    device, info = session.device, session.info
    tokenizer = load_tokenizer(cfg.model.path)
    train_samples, skipped = load_chat_dataset(
        cfg.data.train_files, tokenizer, max_length=cfg.data.max_length, train_on=cfg.data.train_on, skip_invalid=cfg.data.skip_invalid
    ) if cfg.data.train_files else ([], SkipReport())
    if cfg.data.text_files:  # plain text (pretraining / replay): every token trained
        text_samples, text_skipped = load_text_dataset(
            cfg.data.text_files, tokenizer, max_length=cfg.data.max_length, skip_invalid=cfg.data.skip_invalid)
        train_samples = train_samples + text_samples
        skipped.counts.update(text_skipped.counts)
        skipped.examples.extend(text_skipped.examples)
    if skipped.total and info.is_main:
        console_print(f"training data: {skipped.summary()}")
    if not train_samples:
        raise ValueError("no valid training samples left after reading " + ", ".join(cfg.data.train_files))
    eval_samples = []
    if cfg.data.eval_files:
        eval_samples, eval_skipped = load_chat_dataset(
            cfg.data.eval_files, tokenizer, max_length=cfg.data.max_length, train_on=cfg.data.train_on, skip_invalid=cfg.data.skip_invalid
        )
        if eval_skipped.total and info.is_main:
            console_print(f"eval data: {eval_skipped.summary()}")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    row_len = cfg.packing.row_len or cfg.data.max_length
    as_pairs = [(s.input_ids, s.labels) for s in train_samples]
    plan = make_plan(
        as_pairs, packed=cfg.packing.enabled, row_len=row_len, micro_batch_size=cfg.train.micro_batch_size,
        pad_id=pad_id, seed=cfg.train.seed, window=cfg.packing.window,
    )
    eval_plan = None
    if eval_samples:
        eval_plan = make_plan(
            [(s.input_ids, s.labels) for s in eval_samples], packed=cfg.packing.enabled, row_len=row_len,
            micro_batch_size=cfg.train.micro_batch_size, pad_id=pad_id, seed=cfg.train.seed, window=cfg.packing.window,
        )
    util = plan_utilization(plan)
    if info.is_main:
        mode = "packed" if cfg.packing.enabled else "padded"
        console_print(f"{len(train_samples)} training samples, {mode}, token utilization {util:.3f}")

    model = prepare_model(cfg, device)
    result = train(
        model, SFTObjective(cfg.train.loss_chunk_size), plan, train_cfg=cfg.train, optim_cfg=cfg.optim,
        output_dir=session.out, info=info, device=device, eval_plan=eval_plan, console_print=console_print,
    )
    summary = {
        "train_samples": len(train_samples),
        "skipped_invalid": skipped.total,
        "skipped_by_reason": dict(skipped.counts),
        "packing": cfg.packing.enabled,
        "token_utilization": util,
    }
    finish(session, result, model, tokenizer, lambda: load_model(cfg.model.path, dtype="float32"), summary, console_print)
    return result
