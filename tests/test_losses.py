"""Loss maths and loss normalization across packing and gradient accumulation, by hand."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_llama
from novalign.train.dist import ObjectiveModule
from novalign.train.loop import accumulate_gradients
from novalign.train.losses import causal_lm_loss_sum, chunked_causal_lm_loss_sum, token_mean_scale
from novalign.models.packing import Batch, collate_packed
from novalign.train.schedule import lr_factor
from novalign.train.sft import SFTObjective


def test_causal_lm_loss_sum_by_hand():
    """Uniform logits over V = 4 cost ln 4 per target. labels [-100, 1, 2, -100]: the shift makes
    positions 0..2 predict labels[1..3] = [1, 2, -100] -> 2 targets -> sum = 2 ln 4, count 2."""
    logits = torch.zeros(1, 4, 4)
    loss, n = causal_lm_loss_sum(logits, torch.tensor([[-100, 1, 2, -100]]))
    assert n == 2
    assert loss.item() == pytest.approx(2 * math.log(4))


def test_causal_lm_loss_sum_confident_token():
    """Logits [ln 3, 0] at the predicting position, target 0: p = 3 / (3 + 1) = 0.75 -> loss -ln 0.75."""
    logits = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    loss, n = causal_lm_loss_sum(logits, torch.tensor([[-100, 0]]))
    assert n == 1 and loss.item() == pytest.approx(-math.log(0.75))


def test_chunked_loss_equals_full_loss_and_grad():
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    full, n_full = causal_lm_loss_sum(hidden @ weight.T, labels)
    g_full = torch.autograd.grad(full, [hidden, weight])
    chunked, n_chunk = chunked_causal_lm_loss_sum(hidden, weight, labels, chunk_size=3)
    g_chunk = torch.autograd.grad(chunked, [hidden, weight])
    assert n_full == n_chunk == 10
    torch.testing.assert_close(chunked, full)
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b)


def test_chunked_vocab_map_by_hand():
    """hidden rows h0 = (1, 0), h1 = (0, 1), h2 = (1, 1); head W = [[1, 0], [0, 2]] (V = 2): logits = h W^T
    = [1, 0], [0, 2], [1, 2]. fn = row sum * aligned weight a = (1, 10, 100): 1, 20, 300. chunk_size 2 -> two
    chunks, [1, 20] and [300]. d(sum of all)/dW: sum_t a_t * h_t per output row = (1 + 100, 10 + 100) for
    both rows -> [[101, 110], [101, 110]]; the ``prepare`` value (a chunk's first row index) is added to every
    result of the chunk: +0 for chunk 1, +2 for chunk 2."""
    from novalign.models.forward import chunked_vocab_map

    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    a = torch.tensor([1.0, 10.0, 100.0])
    parts = chunked_vocab_map(lambda logits, a: logits.sum(-1) * a, hidden, weight, a, chunk_size=2)
    assert [p.tolist() for p in parts] == [[1.0, 20.0], [300.0]]
    (grad,) = torch.autograd.grad(torch.cat(parts).sum(), [weight])  # through the recomputed (checkpointed) chunks
    assert grad.tolist() == [[101.0, 110.0], [101.0, 110.0]]
    shifted = chunked_vocab_map(lambda logits, first: logits.sum(-1) + first, hidden, weight, chunk_size=2,
                                prepare=lambda rows: (torch.tensor(float(rows.start)),))
    assert [p.tolist() for p in shifted] == [[1.0, 2.0], [5.0]]
    whole = chunked_vocab_map(lambda x: x.sum(-1), hidden, weight, chunk_size=0)  # 0: one chunk of all rows
    assert [p.tolist() for p in whole] == [[1.0, 2.0, 3.0]]


class _Linear(nn.Module):
    """loss_sum of a batch = w * (sum of the batch's per-token values); d loss_sum / dw = that sum."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))


class _ValuesObjective:
    def num_loss_tokens(self, batch):
        return batch.extras["values"].numel()

    def loss_sum(self, model, batch):
        return model.w * batch.extras["values"].sum(), {}


def _batch(values):
    t = torch.zeros(1, len(values), dtype=torch.long)
    return Batch(input_ids=t, labels=t, position_ids=t, extras={"values": torch.tensor(values)})


def test_token_mean_over_the_effective_batch_not_mean_of_means():
    """Micro-batch A has 1 token of value 2; micro-batch B has 3 tokens of value 1.
    Token mean over the effective batch: (2 + 1 + 1 + 1) / 4 = 1.25  <- what we must get.
    Mean of per-micro-batch means:      (2/1 + 3/3) / 2 = 1.5     <- the common mistake.
    So dL/dw after accumulating both micro-batches must be 1.25, with scale = 1 / 4."""
    model = _Linear()
    scale = token_mean_scale(4)
    assert scale == 0.25
    module = ObjectiveModule(model, _ValuesObjective())
    loss_total, *_ = accumulate_gradients(module, [_batch([2.0]), _batch([1.0, 1.0, 1.0])], scale, "cpu")
    assert model.w.grad.item() == pytest.approx(1.25)
    assert loss_total == pytest.approx(5.0)


def test_token_mean_scale_with_data_parallel():
    """8 tokens in the effective batch over 2 ranks; rank sums of per-token gradients 3 and 5.
    Summed all-reduce: each rank scales by 1/8 -> 3/8 + 5/8 = 1 = (3 + 5) / 8.
    Averaging reduce (FSDP): each rank scales by 2/8 -> (6/8 + 10/8) / 2 = 1 as well."""
    assert token_mean_scale(8) == pytest.approx(1 / 8)
    assert token_mean_scale(8, world_size=2) == pytest.approx(2 / 8)
    assert (3 * token_mean_scale(8) + 5 * token_mean_scale(8)) == pytest.approx(1.0)
    assert (3 * token_mean_scale(8, 2) + 5 * token_mean_scale(8, 2)) / 2 == pytest.approx(1.0)
    with pytest.raises(ValueError):
        token_mean_scale(0, 1)


def test_accumulation_equals_one_big_micro_batch():
    """Four packed rows as one micro-batch == the same rows as 4 accumulated micro-batches of 1 row:
    the gradient is the token mean over the effective batch either way."""
    g = torch.Generator().manual_seed(1)
    samples = []
    for n in (6, 9, 4, 11, 7, 5, 8, 3):
        ids = torch.randint(3, 97, (n,), generator=g).tolist()
        samples.append((ids, ids))
    rows = [[0, 1], [2, 3], [4, 5], [6, 7]]
    model = tiny_llama()
    obj = SFTObjective(0)

    def grads(micro):
        model.zero_grad()
        batches = [collate_packed(samples, m, 20, pad_id=0) for m in micro]
        n = sum(obj.num_loss_tokens(b) for b in batches)
        accumulate_gradients(ObjectiveModule(model, obj), batches, 1.0 / n, "cpu")
        return [p.grad.clone() for p in model.parameters()]

    one = grads([rows])
    four = grads([[r] for r in rows])
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lr_schedule_by_hand():
    """10 steps, 2 warmup. Warmup: (s+1)/3 -> 1/3, 2/3. Cosine at step 2 (p = 0): 1; at step 6
    (p = 4/8 = 0.5): (1 + cos(pi/2)) / 2 = 0.5; linear at step 6: 1 - 0.5 = 0.5; min ratio 0.1 at
    the end (p = 1): 0.1."""
    assert lr_factor(0, 10, 2, "cosine") == pytest.approx(1 / 3)
    assert lr_factor(1, 10, 2, "cosine") == pytest.approx(2 / 3)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 10, 0, "constant") == 1.0
