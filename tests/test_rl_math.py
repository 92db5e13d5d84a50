"""RL maths (report section 2.1, equation (2)): top-k KL, k1/k3, GRPO and GAE advantages, PPO losses, by hand."""

import math

import pytest
import torch

from novalign.train.kl import chunked_topk_kl, kl_k1, kl_k3, topk_kl
from novalign.train.rl.algorithms import (
    clipped_policy_loss_sum,
    gae,
    group_normalized_advantages,
    grpo_token_advantages,
    masked_whiten,
    ptx_loss_sum,
    returns_to_go,
    token_level_rewards,
    value_loss_sum,
)

# ------------------------------------------------------------------ top-k KL


def test_topk_kl_by_hand_vocab_3_k_2():
    """Reference logits [ln 3, 0, -5]: its top-2 indices are {0, 1}; renormalized p_ref = [3/4, 1/4].
    Policy logits [0, 0, 7] gathered at {0, 1} are [0, 0] -> p_theta = [1/2, 1/2] (its mass on token 2 is
    outside the top-k and ignored). KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3 * 2) = 1/2 ln(4/3)."""
    pol = torch.tensor([[0.0, 0.0, 7.0]])
    ref = torch.tensor([[math.log(3), 0.0, -5.0]])
    assert topk_kl(pol, ref, k=2).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_topk_kl_is_full_kl_when_k_is_vocab_and_nonnegative():
    torch.manual_seed(0)
    pol, ref = torch.randn(2, 5, 7) * 3, torch.randn(2, 5, 7) * 3
    full = (pol.softmax(-1) * (pol.log_softmax(-1) - ref.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(topk_kl(pol, ref, k=7), full)
    torch.testing.assert_close(topk_kl(pol, ref, k=1000), full)  # k clamped to V
    for k in (1, 2, 4, 7):
        assert bool((topk_kl(pol, ref, k=k) >= -1e-6).all())
    assert topk_kl(pol, pol, k=3).abs().max().item() < 1e-6  # identical models: KL 0
    assert topk_kl(pol, ref, k=1).abs().max().item() < 1e-6  # one outcome: both distributions are certain


def test_topk_kl_gradient_matches_full_formula_and_skips_reference():
    torch.manual_seed(1)
    pol = torch.randn(4, 6, requires_grad=True)
    ref = torch.randn(4, 6, requires_grad=True)
    (g,) = torch.autograd.grad(topk_kl(pol, ref, k=6).sum(), [pol])
    full = (pol.softmax(-1) * (pol.log_softmax(-1) - ref.detach().log_softmax(-1))).sum()
    (g_full,) = torch.autograd.grad(full, [pol])
    torch.testing.assert_close(g, g_full)
    out = topk_kl(pol, ref, k=3).sum()
    out.backward()
    assert pol.grad is not None and ref.grad is None


def test_chunked_topk_kl_equals_unchunked_value_and_grads():
    torch.manual_seed(2)
    ph, pw = torch.randn(9, 5, requires_grad=True), torch.randn(11, 5, requires_grad=True)
    rh, rw = torch.randn(9, 4, requires_grad=True), torch.randn(11, 4, requires_grad=True)
    plain = topk_kl(ph @ pw.T, rh @ rw.T, k=4)
    g_plain = torch.autograd.grad(plain.sum(), [ph, pw])
    for chunk in (1, 4, 0):
        chunked = chunked_topk_kl(ph, pw, rh, rw, k=4, chunk_size=chunk)
        torch.testing.assert_close(chunked, plain)
        g_chunk = torch.autograd.grad(chunked.sum(), [ph, pw])
        for a, b in zip(g_chunk, g_plain):
            torch.testing.assert_close(a, b)
    chunked_topk_kl(ph, pw, rh, rw, k=4, chunk_size=2).sum().backward()
    assert ph.grad is not None and pw.grad is not None
    assert rh.grad is None and rw.grad is None  # the reference never receives a gradient
    torch.testing.assert_close(topk_kl(ph @ pw.T, rh @ rw.T, k=4, chunk_size=2), plain)


def test_topk_kl_rejects_bad_input():
    with pytest.raises(ValueError):
        topk_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        topk_kl(torch.zeros(2, 3), torch.zeros(2, 3), k=0)
    with pytest.raises(ValueError):
        chunked_topk_kl(torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(2, 3), torch.zeros(6, 3))


def test_k1_k3_by_hand():
    """Token 1: p_theta = 1/2, p_ref = 1/4: k1 = ln 2; r = 1/2, k3 = (1/2 - 1) - ln(1/2) = ln 2 - 1/2.
    Token 2: p_theta = 1/4, p_ref = 1/2: k1 = -ln 2 (k1 can be negative); r = 2, k3 = 1 - ln 2 (>= 0)."""
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    ref = torch.tensor([math.log(0.25), math.log(0.5)])
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([math.log(2), -math.log(2)]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([math.log(2) - 0.5, 1 - math.log(2)]))


# ------------------------------------------------------------------ advantages and returns


def test_group_normalized_advantages_group_of_3_by_hand():
    """Group rewards [3, 1, 2]: mean 2, deviations [1, -1, 0], sample std sqrt((1 + 1 + 0) / 2) = 1
    -> advantages [1, -1, 0] / (1 + eps). Group [5, 5, 5]: all equal -> 0. Without std: the deviations."""
    r = torch.tensor([[3.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    adv = group_normalized_advantages(r, eps=1e-6)
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) / (1 + 1e-6))
    torch.testing.assert_close(
        group_normalized_advantages(r * 2, scale_by_std=False), torch.tensor([[2.0, -2.0, 0.0], [0.0] * 3])
    )
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.tensor([[1.0]]))


def test_token_rewards_and_returns_by_hand():
    """Outcome 1, KL [0.1, 0.2, 0.3], beta 0.5 -> rewards [-0.05, -0.1, -0.15 + 1] = [-0.05, -0.1, 0.85];
    returns-to-go (gamma = 1) [0.7, 0.75, 0.85]. Second row has 2 tokens: outcome -1 at t = 1, KL 0:
    rewards [0, -1, 0(pad)], returns [-1, -1, 0]."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r = token_level_rewards(torch.tensor([1.0, -1.0]), kl, mask, beta=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 0.85], [0.0, -1.0, 0.0]]))
    torch.testing.assert_close(returns_to_go(r, mask), torch.tensor([[0.7, 0.75, 0.85], [-1.0, -1.0, 0.0]]))
    # gamma 0.5 on row 0: G2 = 0.85, G1 = -0.1 + 0.425 = 0.325, G0 = -0.05 + 0.1625 = 0.1125
    torch.testing.assert_close(returns_to_go(r, mask, gamma=0.5)[0], torch.tensor([0.1125, 0.325, 0.85]))
    with pytest.raises(ValueError):  # an empty response has no last token for the outcome
        token_level_rewards(torch.tensor([1.0]), torch.zeros(1, 2), torch.tensor([[0, 0]]), beta=0.5)
    with pytest.raises(ValueError):  # left padding would put the outcome on the wrong token
        token_level_rewards(torch.tensor([1.0]), torch.zeros(1, 2), torch.tensor([[0, 1]]), beta=0.5)


def test_grpo_token_advantages_kl_after_group_norm_by_hand():
    """One group of 3, outcomes [3, 1, 2] -> normalized [1, -1, 0] (eps = 0). Response 0 has KL [0.1, 0.2, 0.3],
    beta 0.5: A_t = 1 - 0.5 * sum_{s >= t} KL_s = [1 - 0.3, 1 - 0.25, 1 - 0.15] = [0.7, 0.75, 0.85].
    Responses 1, 2 have KL 0 and 2 tokens: A = [-1, -1, 0] and [0, 0, 0].
    With kl_in_group_norm: penalized returns [3 - 0.5 * 0.6, 1, 2] = [2.7, 1, 2], normalized within the group
    and broadcast over each response's tokens."""
    outcomes = torch.tensor([[3.0, 1.0, 2.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    adv = grpo_token_advantages(outcomes, kl, mask, beta=0.5, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.7, 0.75, 0.85], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    alt = grpo_token_advantages(outcomes, kl, mask, beta=0.5, eps=0.0, kl_in_group_norm=True)
    pen = torch.tensor([2.7, 1.0, 2.0])
    expect = (pen - pen.mean()) / pen.std()
    torch.testing.assert_close(alt, expect[:, None] * mask.float())


def test_gae_three_tokens_by_hand():
    """r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma 1, lambda 0.5 (a 4th, padded position carries junk V = 9).
    deltas: t2 = 1 + 0 - 0.7 = 0.3; t1 = 0 + 0.7 - 0.6 = 0.1; t0 = 0 + 0.6 - 0.5 = 0.1.
    A2 = 0.3; A1 = 0.1 + 0.5 * 0.3 = 0.25; A0 = 0.1 + 0.5 * 0.25 = 0.225. Returns A + V = [0.725, 0.85, 1.0]."""
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.225, 0.25, 0.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0, 0.0]]))
    # lambda = 1, gamma = 1: A_t = G_t - V_t (Monte-Carlo return minus value)
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv1, torch.tensor([[0.5, 0.4, 0.3, 0.0]]))


def test_masked_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ losses


def test_clipped_policy_loss_by_hand():
    """eps_low = eps_high = 0.2. Tokens (rho, A):
    (1.5, +1): min(1.5, 1.2) = 1.2 -> loss -1.2, clipped (no gradient);
    (0.5, +1): min(0.5, 0.8) = 0.5 -> loss -0.5, not clipped (pessimistic branch is the unclipped one);
    (0.5, -1): min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped;
    (1.1, -2): min(-2.2, -2.2) -> loss 2.2, not clipped; a 5th, masked token is ignored.
    Sum = -1.2 - 0.5 + 0.8 + 2.2 = 1.3 over 4 tokens, 2 clipped.
    Gradient d loss / d log pi = -rho * A on unclipped tokens: [0, -0.5, 0, 2.2]."""
    rho = torch.tensor([[1.5, 0.5, 0.5, 1.1, 3.0]])
    logps = rho.log().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, n, clipped = clipped_policy_loss_sum(logps, torch.zeros_like(rho), adv, mask, eps_low=0.2)
    assert (n, clipped) == (4, 2)
    assert loss.item() == pytest.approx(1.3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, -0.5, 0.0, 2.2, 0.0]]))
    # asymmetric: eps_high = 0.28 lets the first token go to 1.28 -> sum = 1.3 - 0.08 = 1.22
    loss_hi, _, _ = clipped_policy_loss_sum(rho.log(), torch.zeros_like(rho), adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss_hi.item() == pytest.approx(1.22, abs=1e-6)


def test_value_loss_clipping_by_hand():
    """c = 0.2. Token 1: old 0.5, V 1.0, R 1.2: unclipped (1.0 - 1.2)^2 = 0.04; V_clip = 0.7, (0.7 - 1.2)^2 = 0.25;
    max 0.25 -> 0.125. Token 2: old 0.5, V 0.6 (inside the clip), R 0: 0.36 -> 0.18. Sum 0.305, 2 tokens.
    Without clipping: 0.5 * (0.04 + 0.36) = 0.2."""
    v = torch.tensor([[1.0, 0.6, 7.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    ret = torch.tensor([[1.2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, n = value_loss_sum(v, old, ret, mask, clip_range=0.2)
    assert n == 2 and loss.item() == pytest.approx(0.305, abs=1e-6)
    assert value_loss_sum(v, old, ret, mask, clip_range=None)[0].item() == pytest.approx(0.2, abs=1e-6)


def test_ptx_loss_is_gamma_times_topk_kl_and_off_at_zero():
    torch.manual_seed(3)
    ph, pw = torch.randn(5, 4, requires_grad=True), torch.randn(6, 4)
    rh, rw = torch.randn(5, 4), torch.randn(6, 4)
    loss, n = ptx_loss_sum(ph, pw, rh, rw, gamma=0.3, k=3, chunk_size=2)
    assert n == 5
    torch.testing.assert_close(loss, 0.3 * topk_kl(ph @ pw.T, rh @ rw.T, k=3).sum())
    loss.backward()
    assert ph.grad is not None and ph.grad.abs().sum() > 0
    assert ptx_loss_sum(ph, pw, rh, rw, gamma=0.0)[0].item() == 0.0
    with pytest.raises(ValueError):
        ptx_loss_sum(ph, pw, rh, rw, gamma=-1.0)


def test_grpo_clipped_surrogate_learns_a_bandit():
    """A one-step bandit: a policy over 4 actions (a logits parameter), reward 1 for action 2 only. Each step
    samples groups of 3 (the report's n), takes group-normalized advantages, and runs 2 epochs of the clipped
    surrogate against the rollout log-probs. P(action 2) must rise from 1/4 to well above 1/2."""
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    mask = torch.ones(8 * 3, 1)
    for _ in range(40):
        with torch.no_grad():
            actions = torch.multinomial(logits.softmax(-1), 8 * 3, replacement=True)  # 8 groups of 3
            old_logps = logits.log_softmax(-1)[actions][:, None]
        rewards = (actions == 2).float().view(8, 3)
        adv = group_normalized_advantages(rewards).reshape(-1, 1)
        for _ in range(2):
            logps = logits.log_softmax(-1)[actions][:, None]
            loss, n, _ = clipped_policy_loss_sum(logps, old_logps, adv, mask, eps_low=0.2, eps_high=0.28)
            opt.zero_grad()
            (loss / n).backward()
            opt.step()
    assert logits.softmax(-1)[2].item() > 0.8
