"""Batches for preference training: sequences that must meet in one micro-batch, packed or padded.

A pairwise loss needs both responses of a pair in the same forward pass; KTO needs each sample next to its
KL partner (the same prompt with another prompt's response). Such a group of sequences is a *unit*. The
data plan of :mod:`novalign.train.loop` works on units:

* packed -- a unit's sequences sit back to back in one row (best-fit decreasing over unit lengths), each
  with its own positions and its own ``cu_seqlens`` segment, so no sequence attends to another;
* padded -- every sequence is its own right-padded row, a unit's sequences adjacent.

Either way the collated :class:`~novalign.models.packing.Batch` carries in ``extras``:

* ``last``  ``[U, k]`` -- where each member sequence's last real token sits in the flattened
  ``rows * row_len`` stream (a reward model reads its score there);
* ``slot``  ``[rows, row_len]`` -- which member (``u * k + m``) each token belongs to, ``-1`` on padding
  (summed log-probabilities per sequence, for DPO and KTO);
* ``unit``  ``[U]`` -- the units' indices in the :class:`UnitSet`;
* every per-unit value ``[U]`` and per-sequence value ``[U, k]`` of the set (targets, labels, cached
  reference log-probabilities).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from novalign.data.chat import IGNORE_INDEX
from novalign.data.io import SkipReport
from novalign.data.preference import split_by_prompt
from novalign.train import dist as D
from novalign.models.forward import chunked_vocab_map, decoder_hidden_states, output_weight
from novalign.train.loop import DataPlan
from novalign.models.packing import (
    Batch,
    collate_packed,
    collate_padded,
    plan_packed_rows,
    plan_padded_batches,
)

Seq = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class UnitSet:
    """Sequences and the units they form; every unit has the same number ``k`` of members."""

    sequences: list[Seq]
    members: list[tuple[int, ...]]
    unit_values: dict[str, list[float]] = field(default_factory=dict)
    sequence_values: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def arity(self) -> int:
        return len(self.members[0]) if self.members else 0

    def unit_length(self, u: int) -> int:
        return sum(len(self.sequences[s][0]) for s in self.members[u])

    def subset(self, units: Sequence[int]) -> "UnitSet":
        """The same sequences, only the given units (e.g. a sample of training pairs to re-evaluate)."""
        return UnitSet(
            self.sequences,
            [self.members[u] for u in units],
            {k: [v[u] for u in units] for k, v in self.unit_values.items()},
            self.sequence_values,
        )


def collate_units(units: UnitSet, spec: Sequence, *, packed: bool, row_len: int, pad_id: int) -> Batch:
    """One micro-batch: ``spec`` is a list of rows of unit indices (packed) or a list of unit indices (padded)."""
    k = units.arity
    unit_ids = [u for row in spec for u in row] if packed else list(spec)
    if packed:
        batch = collate_packed(units.sequences, [[s for u in row for s in units.members[u]] for row in spec], row_len, pad_id)
    else:
        batch = collate_padded([units.sequences[s] for u in unit_ids for s in units.members[u]], pad_id)
    width = batch.input_ids.shape[1]
    last = torch.empty((len(unit_ids), k), dtype=torch.long)
    slot = torch.full(batch.input_ids.shape, -1, dtype=torch.long)
    local = 0  # the unit's index within this batch
    for r, row in enumerate(spec if packed else [[u] for u in unit_ids]):
        offset = 0
        for u in row:
            for m, s in enumerate(units.members[u]):
                n = len(units.sequences[s][0])
                row_idx, start = (r, offset) if packed else (local * k + m, 0)  # padded: one sequence per row
                slot[row_idx, start : start + n] = local * k + m
                last[local, m] = row_idx * width + start + n - 1
                offset += n
            local += 1
    extras = {"last": last, "slot": slot, "unit": torch.tensor(unit_ids, dtype=torch.long)}
    for name, values in units.unit_values.items():
        extras[name] = torch.tensor([values[u] for u in unit_ids], dtype=torch.float32)
    for name, values in units.sequence_values.items():
        extras[name] = torch.tensor([[values[s] for s in units.members[u]] for u in unit_ids], dtype=torch.float32)
    batch.extras = extras
    return batch


def make_unit_plan(
    units: UnitSet, *, packed: bool, row_len: int, micro_batch_size: int, pad_id: int, seed: int, window: int | None = None
) -> DataPlan:
    """Packed: a micro-batch is ``micro_batch_size`` rows of whole units. Padded: ``micro_batch_size`` units."""
    if packed:
        lengths = [units.unit_length(u) for u in range(len(units))]
        too_long = [u for u, n in enumerate(lengths) if n > row_len]
        if too_long:
            raise ValueError(
                f"{len(too_long)} units (a pair's two sequences, or a sample and its KL partner) are longer than "
                f"the packed row length {row_len}; raise packing.row_len (a unit must fit in one row)"
            )

        def micro_batches(epoch: int):
            rows = plan_packed_rows(lengths, row_len, seed=seed, epoch=epoch, window=window)
            return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
    else:

        def micro_batches(epoch: int):
            return plan_padded_batches(len(units), micro_batch_size, seed=seed, epoch=epoch)

    return DataPlan(micro_batches, lambda spec: collate_units(units, spec, packed=packed, row_len=row_len, pad_id=pad_id))


# ------------------------------------------------------------------ per-sequence log-probabilities


def _chunk_logps(logits: torch.Tensor, labels: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -F.cross_entropy(logits, labels, reduction="none"), slots


def sequence_logprobs(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, slot: torch.Tensor, num_slots: int,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Summed log-probability of the labelled tokens of every sequence: ``[num_slots]`` (fp32).

    Position t predicts ``labels[:, t + 1]``, which belongs to sequence ``slot[:, t + 1]``. As in
    :func:`~novalign.train.losses.chunked_causal_lm_loss_sum`, only labelled positions are projected onto
    the vocabulary, ``chunk_size`` at a time and recomputed in the backward pass.

    Args:
        hidden: ``[B, L, H]`` final hidden states.
        lm_head_weight: ``[V, H]``.
        labels: ``[B, L]`` aligned labels (``-100`` where not a response token).
        slot: ``[B, L]`` sequence index of every token (``-1`` on padding).
    """
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    s = slot[:, 1:].reshape(-1)
    keep = torch.nonzero(y != IGNORE_INDEX, as_tuple=False).flatten()
    h, y, s = h.index_select(0, keep), y.index_select(0, keep), s.index_select(0, keep)
    out = hidden.new_zeros(num_slots, dtype=torch.float32)
    for lp, slots in chunked_vocab_map(_chunk_logps, h, lm_head_weight, y, s, chunk_size=chunk_size):
        out = out.index_add(0, slots, lp)
    return out


def unit_logprobs(model: nn.Module, batch: Batch, chunk_size: int = 4096) -> torch.Tensor:
    """``[U, k]`` summed response log-probabilities of every member of every unit in the batch."""
    last = batch.extras["last"]
    hidden = decoder_hidden_states(model, batch)
    flat = sequence_logprobs(hidden, output_weight(model), batch.labels, batch.extras["slot"], last.numel(), chunk_size)
    return flat.view_as(last.float())


@torch.no_grad()
def reference_logprobs(
    model: nn.Module,
    sequences: list[Seq],
    *,
    packed: bool,
    row_len: int,
    micro_batch_size: int,
    pad_id: int,
    info: D.DistInfo,
    device: torch.device,
    autocast: Callable = contextlib.nullcontext,
    chunk_size: int = 4096,
) -> list[float]:
    """The reference model's summed response log-probability of every sequence, computed once.

    The micro-batches are shared out over ranks and the results summed, so every rank ends with all of them.
    """
    units = UnitSet(sequences, [(i,) for i in range(len(sequences))])
    plan = make_unit_plan(units, packed=packed, row_len=row_len, micro_batch_size=micro_batch_size, pad_id=pad_id, seed=0)
    out = torch.zeros(len(sequences), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for spec in list(plan.micro_batches(0))[info.rank :: info.world_size]:
        batch = plan.collate(spec).to(device)
        with autocast():
            lp = unit_logprobs(model, batch, chunk_size)
        out[batch.extras["unit"]] = lp[:, 0].double()
    model.train(was_training)
    if info.enabled:
        torch.distributed.all_reduce(out)
    return out.tolist()


# ------------------------------------------------------------------ reading the train / eval splits


def read_splits(
    data_cfg: Any,
    read: Callable[[Sequence[str]], tuple[list, SkipReport, int]],
    *,
    seed: int,
    console_print: Callable[[str], None] = print,
    is_main: bool = True,
) -> tuple[list, list, dict]:
    """Training and held-out items (pairs or KTO samples) as ``data_cfg`` says, and their counts for the summary.

    ``read(files)`` returns ``(items, skip_report, duplicates_removed)``. Held-out items come from
    ``eval_files``, or else from ``eval_split`` of the training prompts (no prompt on both sides).
    """
    if not data_cfg.train_files:
        raise ValueError("data.train_files is empty: give at least one JSONL or Parquet preference file")
    train, skipped, duplicates = read(data_cfg.train_files)
    if is_main and skipped.total:
        console_print(f"training data: {skipped.summary()}")
    if is_main and duplicates:
        console_print(f"training data: removed {duplicates} duplicates (same prompt and responses)")
    if not train:
        raise ValueError("no valid training pairs left after reading " + ", ".join(data_cfg.train_files))
    held: list = []
    if data_cfg.eval_files:
        held, eval_skipped, _ = read(data_cfg.eval_files)
        if is_main and eval_skipped.total:
            console_print(f"eval data: {eval_skipped.summary()}")
    elif data_cfg.eval_split > 0:
        train, held = split_by_prompt(train, data_cfg.eval_split, seed)
        if not train:
            raise ValueError("data.eval_split left no training pairs")
    stats = {
        "train_items": len(train),
        "eval_items": len(held),
        "skipped_invalid": skipped.total,
        "skipped_by_reason": dict(skipped.counts),
        "duplicates_removed": duplicates,
    }
    return train, held, stats


def sample_units(units: UnitSet, count: int, seed: int) -> UnitSet | None:
    """A fixed random subset of ``count`` units (all if fewer), or None for ``count == 0``."""
    if count <= 0 or not len(units):
        return None
    ids = list(range(len(units)))
    random.Random(seed).shuffle(ids)
    return units.subset(sorted(ids[:count]))
