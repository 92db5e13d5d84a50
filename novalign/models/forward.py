"""The one training forward of a causal LM, for packed and for padded batches.

``use_cache=False`` is not an optimization here, it is correctness: transformers isolates packed samples
(found from restarts in ``position_ids``) only when it builds no KV cache. With a cache, the SDPA backend
lets every packed sample attend to the ones before it in the row. ``tests/test_packing.py`` fails if this
argument is ever dropped.
"""

from __future__ import annotations

import torch
from torch import nn

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
