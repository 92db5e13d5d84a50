"""Per-token KL between the policy and the reference model (report section 2.1, equation (2)).

The report's KL ("Top500"): for each token, take the indices of the reference model's k largest logits
(k = 500), gather *both* models' logits at those indices, renormalize each with a log-softmax over the k
entries, and apply the exact KL formula

    KL_t = sum_{j in topk_ref} p_theta(j) * (log p_theta(j) - log p_ref(j)),
    p(j) = softmax over the k gathered logits,

which is a true KL between two distributions on the same k outcomes, hence always >= 0 -- unlike the
single-sample "simplified" estimators of Schulman's note (report ref. [72]), which are kept here for
comparison (:func:`kl_k1`, :func:`kl_k3`). With ``k = V`` it is the exact full-vocabulary KL.

Memory: full-vocabulary fp32 logits of two models for every token of a batch are the largest tensors of
RL training (150k vocabulary x 16k tokens x 4 bytes = 10 GB *per model*). :func:`chunked_topk_kl` takes
final hidden states and output-head weights and projects ``chunk_size`` tokens at a time; the policy's
chunk is recomputed in the backward pass (:func:`~novalign.models.forward.chunked_vocab_map`), so only one
chunk of logits is ever alive. Gradients flow to the policy only: the reference side is computed without autograd.
"""

from __future__ import annotations

import torch

from novalign.models.forward import chunked_vocab_map, vocab_logits

DEFAULT_TOP_K = 500


def _ref_topk(ref_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's top-k indices ``[n, k]`` and its log-probabilities renormalized over them (no autograd)."""
    with torch.no_grad():
        ref_top, idx = ref_logits.float().topk(k, dim=-1)
        return idx, ref_top.log_softmax(-1)


def _kl_on_topk(policy_logits: torch.Tensor, idx: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``[n]`` KL over the k gathered outcomes; the policy's logits renormalized over the same indices."""
    pol_logp = policy_logits.float().gather(-1, idx).log_softmax(-1)  # [n, k]
    # sum_j p (log p - log q); written as a sum of terms that are each finite (p may underflow to 0)
    return (pol_logp.exp() * (pol_logp - ref_logp)).sum(-1)


def _topk_kl_rows(policy_logits: torch.Tensor, ref_logits: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, V]`` logits of each model -> ``[n]`` top-k KL (fp32); no chunking."""
    return _kl_on_topk(policy_logits, *_ref_topk(ref_logits, min(k, ref_logits.shape[-1])))


def topk_kl(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, k: int = DEFAULT_TOP_K, chunk_size: int = 0
) -> torch.Tensor:
    """The report's top-k KL per token from two logits tensors of the same shape ``[..., V]``.

    ``KL_t = sum_{j in topk(ref_logits_t)} p_theta(j) (log p_theta(j) - log p_ref(j))`` with both
    distributions renormalized over the k indices; ``k`` is clamped to the vocabulary size. Gradient reaches
    ``policy_logits`` only. ``chunk_size > 0`` bounds the size of the fp32 copies and top-k temporaries.

    Returns:
        ``[...]`` per-token KL (fp32), each >= 0 up to rounding.
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(
            f"policy logits {tuple(policy_logits.shape)} and reference logits {tuple(ref_logits.shape)} differ"
        )
    if k < 1:
        raise ValueError(f"top-k KL needs k >= 1, got {k}")
    lead = policy_logits.shape[:-1]
    pol = policy_logits.reshape(-1, policy_logits.shape[-1])
    ref = ref_logits.reshape(-1, ref_logits.shape[-1])
    step = chunk_size if chunk_size > 0 else max(1, pol.shape[0])
    parts = [_topk_kl_rows(pol[s : s + step], ref[s : s + step], k) for s in range(0, pol.shape[0], step)]
    out = torch.cat(parts) if parts else pol.new_zeros(0, dtype=torch.float32)
    return out.reshape(lead)


def chunked_topk_kl(
    policy_hidden: torch.Tensor,
    policy_weight: torch.Tensor,
    ref_hidden: torch.Tensor,
    ref_weight: torch.Tensor,
    k: int = DEFAULT_TOP_K,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """The top-k KL per token from final hidden states and output heads, ``chunk_size`` tokens at a time.

    Same value as ``topk_kl(policy_hidden @ policy_weight.T, ref_hidden @ ref_weight.T, k)``. Per chunk, the
    reference logits are computed without autograd and reduced at once to their top-k values and indices
    (``[n, k]``); the policy's logits are computed, gathered at those indices and, when gradients are
    needed, recomputed in the backward pass -- so at most one chunk of ``[n, V]`` logits exists at a time.

    The caller chooses the token positions: pass the hidden states that *predict* response tokens, already
    flattened and selected (as :func:`~novalign.train.pairs.sequence_logprobs` does with its shift and mask).

    Args:
        policy_hidden: ``[N, H]`` policy hidden states (after the last norm).
        policy_weight: ``[V, H]`` policy output head.
        ref_hidden: ``[N, H_ref]`` reference hidden states at the same positions (no gradient is taken).
        ref_weight: ``[V, H_ref]`` reference output head (the same vocabulary).
        k: the number of reference top logits (clamped to V).

    Returns:
        ``[N]`` per-token KL (fp32).
    """
    if policy_hidden.shape[0] != ref_hidden.shape[0]:
        raise ValueError(f"policy has {policy_hidden.shape[0]} token positions, reference {ref_hidden.shape[0]}")
    if policy_weight.shape[0] != ref_weight.shape[0]:
        raise ValueError(f"policy vocabulary {policy_weight.shape[0]} != reference vocabulary {ref_weight.shape[0]}")
    if k < 1:
        raise ValueError(f"top-k KL needs k >= 1, got {k}")
    k = min(k, ref_weight.shape[0])

    def reference(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return _ref_topk(vocab_logits(ref_hidden[rows], ref_weight), k)

    parts = chunked_vocab_map(_kl_on_topk, policy_hidden, policy_weight, chunk_size=chunk_size, prepare=reference)
    return torch.cat(parts) if parts else policy_hidden.new_zeros(0, dtype=torch.float32)


# ------------------------------------------------------------------ single-sample estimators (Schulman, ref. [72])
# Both take the log-probabilities of the *sampled* tokens only, so they cost nothing beyond the log-probs
# that the policy loss needs anyway; but they are noisy estimates of the KL, and k1 can be negative per token.


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log p_theta(y_t) - log p_ref(y_t): unbiased for KL(pi_theta || pi_ref) under y ~ pi_theta, may be < 0.

    Args:
        logps, ref_logps: ``[...]`` log-probabilities of the sampled tokens under the policy and the reference.
    """
    return logps.float() - ref_logps.detach().float()


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = p_ref(y_t) / p_theta(y_t): unbiased, >= 0, lower variance than k1.

    ``r - 1 - log r >= 0`` because ``log r <= r - 1``; ``E[r] = 1`` under y ~ pi_theta makes it unbiased.
    """
    log_r = ref_logps.detach().float() - logps.float()
    return torch.expm1(log_r) - log_r
