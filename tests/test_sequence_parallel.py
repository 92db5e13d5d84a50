"""Ulysses sequence parallelism: sharding a packed batch, by hand. The two-process check that SP training
equals single-process training (all-to-alls, gradients) is tests/test_train.py::test_two_processes_match_one_process[sp]."""

from __future__ import annotations

import pytest
import torch

from novalign.data.chat import IGNORE_INDEX as X
from novalign.models.packing import collate_packed
from novalign.train.sequence_parallel import shard_batch, sp_groups


def test_groups_are_consecutive_ranks():
    """world 4, size 2 -> [[0, 1], [2, 3]]; a size that does not divide the world is an error naming the option."""
    assert sp_groups(4, 2) == [[0, 1], [2, 3]] and sp_groups(2, 1) == [[0], [1]]
    with pytest.raises(ValueError, match="sequence_parallel=3"):
        sp_groups(4, 3)


def test_shard_shifts_labels_before_splitting():
    """One row ``a1 a2 a3 | b1 b2 b3`` (ids 11 12 13 | 21 22 23), every token trained, two ranks.

    Aligned labels are [X, 12, 13, X, 22, 23] (a sample's first token is never a target); shifted they are
    [12, 13, X, 22, 23, X]: rank 0 holds a1 a2 a3 with targets 12 13 X, rank 1 holds b1 b2 b3 with 22 23 X.
    Positions stay those of the whole row; cu_seqlens stays [0, 3, 6]. Loss tokens: 2 + 2 = 4, as unsharded."""
    batch = collate_packed([([11, 12, 13], [11, 12, 13]), ([21, 22, 23], [21, 22, 23])], [[0, 1]], 6, pad_id=0)
    assert batch.labels.tolist() == [[X, 12, 13, X, 22, 23]]
    r0, r1 = shard_batch(batch, 0, 2), shard_batch(batch, 1, 2)
    assert r0.input_ids.tolist() == [[11, 12, 13]] and r1.input_ids.tolist() == [[21, 22, 23]]
    assert r0.labels.tolist() == [[12, 13, X]] and r1.labels.tolist() == [[22, 23, X]]
    assert r0.position_ids.tolist() == [[0, 1, 2]] and r1.position_ids.tolist() == [[0, 1, 2]]
    assert r0.cu_seqlens.tolist() == r1.cu_seqlens.tolist() == [0, 3, 6]
    assert r0.labels_shifted and r0.num_loss_tokens + r1.num_loss_tokens == batch.num_loss_tokens == 4
    assert r0.num_real_tokens + r1.num_real_tokens == batch.num_real_tokens == 6  # counted once, on rank 0


def test_shard_pads_rows_to_a_multiple_of_the_group():
    """Two rows of 5 with size 2 become rows of 6: the added token is ignored and is a segment of its own, so
    cu_seqlens over the flattened [2, 6] stream is recomputed: row 0 = sample (4) + old pad (1) + new pad (1)
    -> [0, 4, 5, 6]; row 1 = sample (5) + new pad (1) -> [6, 11, 12]. A sample split between the shards
    (tokens 3 and 4 of row 1's sample sit on rank 1) keeps its target across the cut."""
    samples = [([1, 2, 3, 4], [1, 2, 3, 4]), ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9])]
    batch = collate_packed(samples, [[0], [1]], 5, pad_id=0)
    r0, r1 = shard_batch(batch, 0, 2), shard_batch(batch, 1, 2)
    assert r0.cu_seqlens.tolist() == [0, 4, 5, 6, 11, 12]
    assert r0.input_ids.tolist() == [[1, 2, 3], [5, 6, 7]] and r1.input_ids.tolist() == [[4, 0, 0], [8, 9, 0]]
    assert r0.labels.tolist() == [[2, 3, 4], [6, 7, 8]] and r1.labels.tolist() == [[X, X, X], [9, X, X]]
    assert r0.num_loss_tokens + r1.num_loss_tokens == batch.num_loss_tokens == 7


def test_shard_needs_packed_rows():
    from novalign.models.packing import collate_padded

    with pytest.raises(ValueError, match="packed rows"):
        shard_batch(collate_padded([([1, 2], [1, 2])], pad_id=0), 0, 2)


def test_losses_read_shifted_labels():
    """With shifted labels every position is scored against its own label: the same value as the aligned
    loss on the unshifted labels (logits of 3 positions, targets 2 of them)."""
    from novalign.train.losses import causal_lm_loss_sum, chunked_causal_lm_loss_sum

    torch.manual_seed(0)
    hidden, weight = torch.randn(1, 3, 4), torch.randn(7, 4)
    aligned = torch.tensor([[X, 5, 6]])
    shifted = torch.tensor([[5, 6, X]])
    a, na = causal_lm_loss_sum(hidden @ weight.T, aligned)
    b, nb = causal_lm_loss_sum(hidden @ weight.T, shifted, shifted=True)
    c, nc = chunked_causal_lm_loss_sum(hidden, weight, shifted, chunk_size=1, shifted=True)
    assert na == nb == nc == 2
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
