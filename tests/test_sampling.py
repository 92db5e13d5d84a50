"""RowSampler's draw without top-k/top-p: the most likely tokens by topk instead of a sort of the vocabulary."""

import torch

from novalign.models.generate import SORT_FREE_MIN_VOCAB, GenerationRequest, RowSampler, _draw_filtered, draw_untruncated


def test_draw_untruncated_by_hand():
    """probs [0.1, 0.6, 0.3], u 0.8: descending 0.6 (token 1), 0.3 (token 2), 0.1 (token 0); CDF 0.6, 0.9,
    1.0; the first step >= 0.8 is token 2. u 0.5 -> token 1; u 0.95 -> token 0."""
    probs = torch.tensor([[0.1, 0.6, 0.3]] * 3)
    assert draw_untruncated(probs, torch.tensor([0.8, 0.5, 0.95])).tolist() == [2, 1, 0]


def test_draw_untruncated_grows_k_until_the_mass_is_reached():
    """100 tokens, p_i = i / 4950 (token 99 the most likely), u 0.5, starting with only 4 tokens. Mass of tokens
    m..99 is (99 + m)(100 - m) / 2 / 4950: m = 71 gives 0.498 < 0.5, m = 70 gives 0.512 -> token 70 (the 30th
    most likely, so the first 4 are not enough). u 0.01: token 99 alone has 0.02 -> token 99 from the first 4."""
    probs = (torch.arange(100, dtype=torch.float64) / 4950).unsqueeze(0).repeat(2, 1)
    assert draw_untruncated(probs, torch.tensor([0.5, 0.01]), first_k=4).tolist() == [70, 99]


def test_sort_free_draws_are_those_of_an_exact_inverse_cdf():
    """Same uniforms, same tokens as an inverse CDF over the float64 softmax sorted by probability (the exact
    draw), for peaked and flat rows over a large vocabulary."""
    g = torch.Generator().manual_seed(0)
    same = total = 0
    for std in (4.0, 1.0):
        logits = torch.randn(4, SORT_FREE_MIN_VOCAB, generator=g) * std
        exact_p, order = logits.double().softmax(-1).sort(-1, descending=True)
        cdf = exact_p.cumsum(-1)
        for _ in range(10):
            u = torch.rand(4, generator=g)
            exact = order.gather(1, torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(1))).squeeze(1)
            same += int((exact == draw_untruncated(logits.softmax(-1), u)).sum())
            total += 4
    assert same >= total - 1  # float32 softmax input: one draw in a hundred may sit on a CDF step


def test_small_vocabularies_keep_the_sorted_draws_bit_for_bit():
    """Below SORT_FREE_MIN_VOCAB every sampled row takes the sorted path: the tokens equal those of the
    sorted path with the same per-row generators, for untruncated and filtered rows alike."""
    rows = [GenerationRequest([1], temperature=1.0, seed=s, top_p=p, top_k=k) for s, p, k in ((0, 1.0, 0), (1, 0.9, 0), (2, 1.0, 5))]
    logits = torch.randn(3, 2048, generator=torch.Generator().manual_seed(3))
    picked = RowSampler(rows)(torch.zeros(3, 1, dtype=torch.long), logits).argmax(-1)
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(s)) for s in (0, 1, 2)])
    expect = _draw_filtered(logits, torch.tensor([0, 0, 5]), torch.tensor([1.0, 0.9, 1.0]), u)
    assert picked.tolist() == expect.tolist()
