"""Sample packing: bin packing, row layout, and packed == unpacked for loss and gradients."""

import random

import pytest
import torch

from conftest import tiny_llama
from novalign.models.attention import cu_seqlens_from_position_ids, register, varlen_attention
from novalign.models import forward as forward_mod
from novalign.train.losses import IGNORE_INDEX
from novalign.models.packing import (
    best_fit_decreasing,
    collate_packed,
    collate_padded,
    plan_packed_rows,
    utilization,
)
from novalign.train.sft import SFTObjective


def test_best_fit_decreasing_by_hand():
    """lengths [5, 4, 3, 3, 2, 1], capacity 8. Longest first:
    5 (item 0) opens bin A (free 3); 4 (item 1) fits nowhere -> bin B (free 4);
    3 (item 2): bins with free >= 3 are A (3) and B (4); best fit is A -> A full;
    3 (item 3) -> B (free 1); 2 (item 4) fits nowhere -> bin C (free 6);
    1 (item 5): candidates B (1) and C (6); best fit is B -> B full.
    Result: A = [0, 2], B = [1, 3, 5], C = [4].
    """
    assert best_fit_decreasing([5, 4, 3, 3, 2, 1], 8) == [[0, 2], [1, 3, 5], [4]]


def test_best_fit_decreasing_is_a_partition_and_tight():
    rng = random.Random(0)
    lengths = [min(4096, max(8, int(rng.lognormvariate(6.0, 1.0)))) for _ in range(2000)]
    bins = best_fit_decreasing(lengths, 4096)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    lower_bound = -(-sum(lengths) // 4096)
    assert len(bins) <= lower_bound + 1
    assert utilization(sum(lengths), len(bins) * 4096) >= 0.98


def test_best_fit_decreasing_rejects_oversized():
    with pytest.raises(ValueError, match="length 9 > capacity 8"):
        best_fit_decreasing([3, 9], 8)


def test_collate_packed_layout_by_hand():
    """Row width 8 with samples of length 3 and 2, then 4 (the rest padding, pad id 0).
    Row 0: ids [1 2 3 4 5 0 0 0], positions [0 1 2 0 1 0 1 2]; row 1: [6 7 8 9 0 0 0 0], [0 1 2 3 0 1 2 3].
    Segments over the flattened 16 tokens: [0,3) [3,5) pad [5,8) | [8,12) pad [12,16)
    -> cu_seqlens [0, 3, 5, 8, 12, 16], longest segment 4.
    The first label of every sample is ignored (it would be predicted from the previous sample).
    Real tokens 3 + 2 + 4 = 9 of 16; loss targets: 2, 3, 5 in row 0 and 7, 8, 9 in row 1 = 6.
    """
    samples = [([1, 2, 3], [1, 2, 3]), ([4, 5], [-100, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])]
    b = collate_packed(samples, [[0, 1], [2]], 8, pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 0, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert b.cu_seqlens.tolist() == [0, 3, 5, 8, 12, 16]
    assert b.max_seqlen == 4
    I = IGNORE_INDEX
    assert b.labels.tolist() == [[I, 2, 3, I, 5, I, I, I], [I, 7, 8, 9, I, I, I, I]]
    assert (b.num_real_tokens, b.num_row_tokens, b.num_loss_tokens) == (9, 16, 6)
    cu, m = cu_seqlens_from_position_ids(b.position_ids)
    assert cu.tolist() == [0, 3, 5, 8, 12, 16] and m == 4


def test_plan_is_deterministic_per_epoch_and_covers_all():
    lengths = [random.Random(i).randint(5, 60) for i in range(200)]
    a = plan_packed_rows(lengths, 128, seed=3, epoch=1)
    assert a == plan_packed_rows(lengths, 128, seed=3, epoch=1)
    assert a != plan_packed_rows(lengths, 128, seed=3, epoch=2)
    assert sorted(i for row in a for i in row) == list(range(200))


def test_varlen_kernel_matches_per_sample_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(10, 4, 8), torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    out = varlen_attention(q, k, v, cu, 6, 8**-0.5)
    for s, e in [(0, 4), (4, 10)]:
        qs = q[s:e].transpose(0, 1)
        ks = k[s:e].transpose(0, 1).repeat_interleave(2, 0)
        vs = v[s:e].transpose(0, 1).repeat_interleave(2, 0)
        att = (qs @ ks.transpose(-1, -2)) * 8**-0.5
        att = att.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        torch.testing.assert_close(out[s:e], (att @ vs).transpose(0, 1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- packed == unpacked

def _samples(seed=0, vocab=97):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (9, 5, 13, 7, 4):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [-100] * (n // 3) + ids[n // 3 :]  # a prompt part without loss, as in chat data
        out.append((ids, labels))
    return out


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _unpacked_reference(model, samples, chunk):
    """Each sample alone (batch of one, no padding); gradient of the token mean over all samples."""
    obj = SFTObjective(chunk)
    model.zero_grad()
    total_tokens = sum(sum(1 for y in lab[1:] if y != -100) for _, lab in samples)
    total = 0.0
    for ids, lab in samples:
        batch = collate_padded([(ids, lab)], pad_id=0)
        loss, _ = obj.loss_sum(model, batch)
        (loss / total_tokens).backward()
        total += float(loss.detach())
    return total / total_tokens, _grads(model)


def _packed(model, samples, chunk):
    obj = SFTObjective(chunk)
    model.zero_grad()
    batch = collate_packed(samples, [[0, 1, 2], [3, 4]], 28, pad_id=0)
    loss, _ = obj.loss_sum(model, batch)
    n = obj.num_loss_tokens(batch)
    (loss / n).backward()
    return float(loss.detach()) / n, _grads(model)


def _assert_same(ref, got):
    (loss_r, grads_r), (loss_p, grads_p) = ref, got
    assert abs(loss_r - loss_p) < 1e-5, (loss_r, loss_p)
    assert grads_r.keys() == grads_p.keys()
    for name in grads_r:
        torch.testing.assert_close(grads_p[name], grads_r[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["varlen", "sdpa"])
@pytest.mark.parametrize("chunk", [0, 6])
def test_packed_equals_unpacked_loss_and_gradients(backend, chunk):
    """Two packed rows (3 + 2 samples, with padding) give the same token-mean loss and the same gradient
    for every parameter as the five samples run one at a time. The model keeps the default
    ``use_cache=True`` in its config, so the 'sdpa' case fails if the training forward stops passing
    ``use_cache=False`` (transformers then builds a cache and skips packed-sequence isolation)."""
    impl = register() if backend == "varlen" else "sdpa"
    model = tiny_llama(attn="sdpa")
    assert model.config.use_cache is True
    samples = _samples()
    ref = _unpacked_reference(model, samples, chunk)
    model.set_attn_implementation(impl)
    _assert_same(ref, _packed(model, samples, chunk))


def test_the_cache_trap_is_real_and_detected(monkeypatch):
    """Shows the comparison above can fail: if the forward builds a KV cache, SDPA lets packed samples see
    each other, and packed != unpacked."""
    model = tiny_llama(attn="sdpa")
    samples = _samples()
    ref = _unpacked_reference(model, samples, 0)
    original = forward_mod.model_inputs

    def with_cache(batch):
        kwargs = original(batch)
        kwargs["use_cache"] = True
        return kwargs

    monkeypatch.setattr(forward_mod, "model_inputs", with_cache)
    with pytest.raises(AssertionError):
        _assert_same(ref, _packed(model, samples, 0))


def test_varlen_backend_generates_like_sdpa():
    model = tiny_llama().eval()
    prompt = torch.tensor([[5, 6, 7, 8]])
    want = model.generate(prompt, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation(register())
    assert model.generate(prompt, max_new_tokens=6, do_sample=False).tolist() == want.tolist()


def test_best_fit_decreasing_ties_take_the_bin_that_reached_that_space_last():
    """lengths [6, 6, 4, 3, 3], capacity 10. 6 (item 0) opens A (free 4); 6 (item 1) fits nowhere -> B (free 4).
    4 (item 2): A and B both have free 4; the bin that reached free 4 last, B, takes it -> B full.
    3 (item 3) -> A (free 1); 3 (item 4) fits nowhere -> C. Result: A = [0, 3], B = [1, 2], C = [4]."""
    assert best_fit_decreasing([6, 6, 4, 3, 3], 10) == [[0, 3], [1, 2], [4]]


def _best_fit_reference(lengths, capacity):
    """Plain O(n^2) best fit decreasing: scan every open bin; among the tightest, the one updated last."""
    bins, free, stamp = [], [], []
    for t, i in enumerate(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (free[b], -stamp[b]))
        else:
            bins.append([])
            free.append(capacity)
            stamp.append(t)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= lengths[i]
        stamp[b] = t
    return bins


def test_best_fit_decreasing_equals_the_plain_scan():
    rng = random.Random(1)
    for capacity in (16, 64, 100):
        lengths = [rng.randint(1, capacity) for _ in range(300)] + [rng.randint(1, 5) for _ in range(200)]
        assert best_fit_decreasing(lengths, capacity) == _best_fit_reference(lengths, capacity)
