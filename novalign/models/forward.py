"""The one training forward of a causal LM, for packed and for padded batches, and the one chunked
vocabulary projection every token loss runs on (:func:`chunked_vocab_map`).

``use_cache=False`` is not an optimization here, it is correctness: transformers isolates packed samples
(found from restarts in ``position_ids``) only when it builds no KV cache. With a cache, the SDPA backend
lets every packed sample attend to the ones before it in the row. ``tests/test_packing.py`` fails if this
argument is ever dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from novalign.models.packing import Batch


def model_inputs(batch: Batch) -> dict:
    """Keyword arguments for a Hugging Face decoder: varlen boundaries for packed rows, a mask for padded ones."""
    kwargs: dict = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if batch.cu_seqlens is not None:
        kwargs.update(
            cu_seq_lens_q=batch.cu_seqlens,
            cu_seq_lens_k=batch.cu_seqlens,
            max_length_q=batch.max_seqlen,
            max_length_k=batch.max_seqlen,
        )
    else:
        kwargs["attention_mask"] = batch.attention_mask
    return kwargs


def decoder_hidden_states(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Final hidden states ``[B, L, H]`` (after the last norm), without computing any logits."""
    return model.get_decoder()(**model_inputs(batch)).last_hidden_state


def output_weight(model: nn.Module) -> torch.Tensor:
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) to compute token logits")
    return head.weight


def lm_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Full logits ``[B, L, V]`` through the model's own forward (used for checks and small models)."""
    return model(**model_inputs(batch)).logits


def vocab_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[n, V]`` fp32 logits of ``[n, H]`` final hidden states under the output head ``weight`` (``[V, H]``)."""
    return F.linear(hidden, weight).float()


def _project_then(fn: Callable[..., Any], hidden: torch.Tensor, weight: torch.Tensor, *args: Any) -> Any:
    return fn(vocab_logits(hidden, weight), *args)


def chunked_vocab_map(
    fn: Callable[..., Any], hidden: torch.Tensor, weight: torch.Tensor, *aligned: torch.Tensor, chunk_size: int = 4096,
    prepare: Callable[[slice], tuple] | None = None,
) -> list[Any]:
    """``fn(logits, *aligned_chunk, *prepare(chunk))`` for every ``chunk_size`` rows of ``hidden`` (all rows when
    ``chunk_size <= 0``), where ``logits = vocab_logits(hidden_chunk, weight)``; returns the results in order.

    Full-vocabulary fp32 logits are the largest tensors of training (a 150k vocabulary over 16k tokens is 10 GB),
    so only one chunk of them exists at a time: when a gradient is needed the projection and ``fn`` are
    recomputed in the backward pass (activation checkpointing) instead of being kept. SFT cross-entropy,
    per-sequence log-probs (DPO, KTO), per-token RL log-probs and the top-k KL all run on this.

    Args:
        fn: reduces one chunk's ``[n, V]`` logits (with its slices of ``aligned``) to what the caller keeps.
        hidden: ``[N, H]`` hidden states of the positions to project (already selected and flattened).
        weight: ``[V, H]`` output head.
        aligned: ``[N, ...]`` tensors sliced with ``hidden`` (e.g. the target token of every position).
        prepare: extra arguments of a chunk, computed from its row slice without autograd and outside the
            recomputed part (e.g. the reference model's top-k of the KL, which the backward pass does not need).
    """
    num = hidden.shape[0]
    step = chunk_size if chunk_size > 0 else max(1, num)
    call = functools.partial(_project_then, fn)
    out = []
    for start in range(0, num, step):
        rows = slice(start, start + step)
        hs, args = hidden[rows], [a[rows] for a in aligned]
        if prepare is not None:
            with torch.no_grad():
                args.extend(prepare(rows))
        if torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad):
            out.append(checkpoint(call, hs, weight, *args, use_reentrant=False))
        else:
            out.append(call(hs, weight, *args))
    return out
