"""Varlen attention for packed rows: each sample attends only to itself (report section 2.2).

A packed row holds several samples back to back. ``cu_seqlens`` (cumulative sequence lengths over the
flattened ``rows * row_len`` token stream, int32, starting at 0) says where each sample starts. We register
one attention implementation with transformers, ``"novalign_varlen"``, that reads ``cu_seq_lens_q`` and
``max_length_q`` from the model's forward kwargs and dispatches to the fastest kernel available:

- ``flash-attn`` (``flash_attn_varlen_func``) on CUDA when the package is installed;
- torch's ``torch.nn.attention.varlen.varlen_attn`` on CUDA when present (torch >= 2.9). Releases
  without an ``enable_gqa`` argument get grouped key/value heads repeated by hand; causal masking is
  ``window_size=(-1, 0)`` where that argument exists and ``is_causal=True`` before it;
- an exact CPU/GPU fallback: scaled-dot-product attention run per sample with a causal mask.

Under sequence parallelism (:mod:`novalign.train.sequence_parallel`) a rank holds 1/P of each packed row; the
call then trades token shards for head shards, runs the same kernel on whole rows, and trades back
(:mod:`novalign.models.ulysses`).

Without ``cu_seq_lens_q`` (generation, padded batches) the call is handed to transformers' own SDPA path
with whatever mask transformers built, so the same model object serves training and generation.

The other backend, ``"sdpa"`` (transformers' own), also isolates packed samples -- it detects restarts in
``position_ids`` -- but only when it builds no KV cache: a training forward must pass ``use_cache=False``.
``tests/test_packing.py`` checks both backends and fails if the cache trap is ever hit.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F

from novalign.models import ulysses

ATTN_IMPLEMENTATION = "novalign_varlen"
BACKENDS = ("auto", "varlen", "sdpa", "eager")

_registered = False

# Calls per (kernel, input dtype) actually run -- kernels "flash_attn", "torch_varlen", "sdpa_loop", and
# "hf_sdpa" for batches handed to transformers' SDPA -- counted at run time: which kernel a run used is read
# here, not predicted (an fp32 input silently takes the per-sample loop on a GPU too).
_KERNEL_CALLS: Counter[tuple[str, str]] = Counter()


def kernel_calls(by_dtype: bool = False) -> dict[str, int]:
    """Attention calls per kernel (``"sdpa_loop"``), or per kernel and query dtype (``"sdpa_loop/bfloat16"``),
    since the last :func:`reset_kernel_calls`; one call per decoder layer per forward."""
    out: Counter[str] = Counter()
    for (kernel, dtype), n in _KERNEL_CALLS.items():
        out[f"{kernel}/{dtype}" if by_dtype else kernel] += n
    return dict(out)


def reset_kernel_calls() -> None:
    _KERNEL_CALLS.clear()


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_varlen():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def varlen_kernel_name(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """Which kernel ``varlen_attention`` uses: 'flash_attn', 'torch_varlen' or 'sdpa_loop'.

    The fused kernels run on CUDA in fp16/bf16 only; fp32 (and every CPU tensor) takes the exact loop.
    """
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _flash_varlen() is not None:
            return "flash_attn"
        if _torch_varlen() is not None:
            return "torch_varlen"
    return "sdpa_loop"


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Segment starts of a packed ``[rows, row_len]`` position-id tensor (a restart at 0 opens a segment).

    >>> cu, m = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]))
    >>> cu.tolist(), m
    ([0, 3, 5, 9, 10], 4)
    """
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=False).flatten()
    cu = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, max_len


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Causal attention within each segment of a flattened token stream.

    Args:
        q: ``[total, num_heads, head_dim]``; k, v: ``[total, num_kv_heads, head_dim]``.
        cu_seqlens: ``[num_segments + 1]`` int32 segment boundaries, first 0, last ``total``.
        max_seqlen: the longest segment.
        scale: softmax scale (usually ``head_dim ** -0.5``).

    Returns:
        ``[total, num_heads, head_dim]``.
    """
    kernel = varlen_kernel_name(q.device, q.dtype)
    _KERNEL_CALLS[kernel, str(q.dtype).removeprefix("torch.")] += 1
    n_rep = q.shape[1] // k.shape[1]
    if kernel == "flash_attn":
        return _flash_varlen()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=True)
    if kernel == "torch_varlen":
        fn = _torch_varlen()
        params = inspect.signature(fn).parameters
        kwargs: dict[str, Any] = {"scale": scale}
        if "window_size" in params:  # torch >= 2.10: causal is a (-1, 0) window
            kwargs["window_size"] = (-1, 0)
        else:  # torch 2.9
            kwargs["is_causal"] = True
        if n_rep > 1:
            if "enable_gqa" in params:
                kwargs["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        return fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
    # Exact fallback: one SDPA call per segment. [total, H, D] -> [1, H, len, D] pieces. ``split`` + ``cat``, not
    # slicing into a preallocated output: the backward of a slice zero-fills a gradient of the whole row for
    # every sample (O(samples x row) memory traffic), split's backward concatenates once.
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens must run from 0 to the {q.shape[0]} tokens, got {bounds[0]} .. {bounds[-1]}")
    sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    outs = []
    for qs, ks, vs in zip(q.split(sizes), k.split(sizes), v.split(sizes)):
        if qs.shape[0] == 0:
            continue
        qs, ks, vs = (t.transpose(0, 1).unsqueeze(0) for t in (qs, ks, vs))
        if n_rep > 1:
            ks, vs = ks.repeat_interleave(n_rep, dim=1), vs.repeat_interleave(n_rep, dim=1)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs) if outs else torch.empty_like(q)


def _novalign_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface entry: query ``[B, H, L, D]``, key/value ``[B, Hkv, L, D]``."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and attention_mask is None and query.shape[2] == key.shape[2] and query.shape[2] > 1:
        pos = kwargs.get("position_ids")
        if pos is not None and pos.shape[-1] == query.shape[2]:
            cu, max_len = cu_seqlens_from_position_ids(pos.expand(query.shape[0], -1))
            kwargs["max_length_q"] = max_len
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is None and query.shape[2] != key.shape[2] and query.shape[2] > 1:
            # chunked prefill without padding: bottom-right aligned causal mask
            q_len, k_len = query.shape[2], key.shape[2]
            attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        _KERNEL_CALLS["hf_sdpa", str(query.dtype).removeprefix("torch.")] += 1
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # One compute dtype for q, k and v: under autocast over fp32 weights the projections give bf16, but RoPE
    # multiplies q and k by fp32 cos/sin and promotes them back to fp32 -- and an fp32 q would send the kernel
    # picker to the per-sample loop. v never passes RoPE, so its dtype is the one the projections computed in.
    query, key = query.to(value.dtype), key.to(value.dtype)
    b, h, seq, d = query.shape
    scale = scaling if scaling is not None else d**-0.5
    group, size = ulysses.active()
    if size > 1 and int(cu[-1]) == b * seq * size:  # a sequence-parallel shard of packed rows: Ulysses
        if key.shape[1] % size:  # grouped key/value heads that do not split over the ranks: repeat them
            key = key.repeat_interleave(h // key.shape[1], dim=1)
            value = value.repeat_interleave(h // value.shape[1], dim=1)
        q, k, v = (ulysses.sequence_to_heads(t, group, size) for t in (query, key, value))
        length = seq * size
        out = varlen_attention(
            q.transpose(1, 2).reshape(b * length, h // size, d), k.transpose(1, 2).reshape(b * length, k.shape[1], d),
            v.transpose(1, 2).reshape(b * length, v.shape[1], d), cu.to(torch.int32),
            int(kwargs.get("max_length_q") or length), scale,
        )
        out = ulysses.heads_to_sequence(out.reshape(b, length, h // size, d).transpose(1, 2), group, size)
        return out.transpose(1, 2), None
    q = query.transpose(1, 2).reshape(b * seq, h, d)
    k = key.transpose(1, 2).reshape(b * seq, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * seq, value.shape[1], d)
    max_len = int(kwargs.get("max_length_q") or seq)
    out = varlen_attention(q, k, v, cu.to(torch.int32), max_len, scale)
    # transformers expects [B, L, H, D] back from attention functions
    return out.reshape(b, seq, h, d), None


def _novalign_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any):
    """Mask builder paired with the varlen attention: no mask at all unless there is padding."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register ``novalign_varlen`` with transformers (idempotent) and return its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_IMPLEMENTATION, _novalign_attention_forward)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _novalign_mask)
        _registered = True
    return ATTN_IMPLEMENTATION


def resolve_backend(name: str) -> str:
    """Map a config value to a transformers ``attn_implementation`` string."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ("auto", "varlen"):
        return register()
    return name
