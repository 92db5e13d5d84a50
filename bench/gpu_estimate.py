"""Up-front estimates for ``bench/gpu_sft.py``: peak memory and seconds of each mode, and MFU.

A lent GPU gives 15 minutes once, so the bench prints what it expects before it starts, skips a mode whose
memory estimate does not fit the card, and skips a mode whose time estimate does not fit the budget left.
The estimates are first-order models, not measurements: the bench prints each mode's measured peak memory and
seconds next to them, so a later run can check (and correct) the constants here.

Memory (bytes), for one training step of a decoder with ``L`` layers, hidden ``h``, intermediate ``I``,
key/value width ``kv`` (heads x head dim), vocabulary ``V``, ``P`` parameters and ``T`` tokens in the step:

* states: ``P * (2 + 2 + 4)`` in bf16 (weights, gradients, two AdamW moments, no master copy) or
  ``P * (4 + 4 + 8 + 2)`` with fp32 weights under bf16 autocast (the autocast cache holds a bf16 copy);
* activations kept for backward per token and layer, bf16: the inputs of the two RMSNorms in fp32
  (``2 * 4h``), the norm outputs, q, k, v, attention output and o_proj output (``2 * (5h + 2kv)``), the
  MLP's gate, up, act(gate) and act*up (``2 * 4I``), and the two residual sums (``2 * 2h``; fp32 under
  autocast, ``4 * 2h``). With checkpointing in groups of ``k`` layers only each group's input is kept
  (``L / k`` hidden states) plus one group's activations during its recomputation;
* the loss: a chunk of ``min(chunk, T)`` fp32 logits and its gradient, ``2 * 4 * chunk * V``;
* an explicit attention mask (transformers' SDPA for padded or position-id packed batches): a bool
  ``[B, 1, S, S]`` mask plus its 16-bit additive form, ``3 * B * S^2``;
* 10 % + 1 GiB for the allocator's fragmentation and kernels' workspaces.

Time: the FLOPs of a step are ``6 P T`` (``8 P T`` with checkpointing: one more forward) plus attention,
``3.5 * 2 * d * L * sum(s^2)`` for causal segments of length ``s`` run by a varlen kernel (forward 2 matmuls
of ``s^2 d / 2`` multiply-adds each, backward ~2.5 forwards), and twice that per row for SDPA under an
explicit mask, which computes every block of the ``S x S`` square. They run at ``peak * assumed_mfu``.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3

# NVIDIA's dense bf16 tensor-core peak (datasheets): H100 SXM and H200 989.4 TFLOP/s, H100 PCIe 756 TFLOP/s.
PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12}
# Utilization assumed for the time estimate only (MFU seen for 1-2 B models with fused attention).
ASSUMED_MFU = {"varlen": 0.40, "sdpa_mask": 0.30}


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # num_key_value_heads * head_dim
    vocab: int
    params: int  # all parameters, a tied embedding counted once


def peak_flops_for(device_name: str, default: float) -> tuple[float, str]:
    """Peak dense bf16 FLOP/s of a device by name, and where the number came from."""
    for key in ("H200", "H100 PCIe", "H100"):
        if key.lower().replace(" ", "") in device_name.lower().replace(" ", ""):
            return PEAK_FLOPS[key], f"datasheet ({key})"
    return default, "--peak-flops (device not in the table)"


def non_embedding_params(shape: Shape) -> int:
    """Kaplan et al. (2020)'s N: all parameters less the token embedding (counted once when tied)."""
    return shape.params - shape.vocab * shape.hidden


def mfu(params: int, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization on real tokens: ``6 N tokens/s / peak`` (attention and recomputation not counted)."""
    return 6 * params * tokens_per_s / peak


def activation_bytes_per_token_layer(shape: Shape, amp: bool) -> int:
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width
    residual = (4 if amp else 2) * 2 * h
    return 2 * 4 * h + 2 * (5 * h + 2 * kv) + 2 * 4 * i + residual


def step_memory_bytes(shape: Shape, *, amp: bool, grad_ckpt: int, tokens: int, mask_rows: int = 0,
                      mask_width: int = 0, loss_chunk: int = 4096) -> int:
    """Estimated peak bytes of one training step of ``tokens`` tokens (see the module docstring)."""
    states = shape.params * ((4 + 4 + 8 + 2) if amp else (2 + 2 + 4))
    per_layer = activation_bytes_per_token_layer(shape, amp) * tokens
    if grad_ckpt > 0:
        groups = -(-shape.layers // grad_ckpt)
        acts = groups * (4 if amp else 2) * shape.hidden * tokens + min(grad_ckpt, shape.layers) * per_layer
    else:
        acts = shape.layers * per_layer
    chunk = min(loss_chunk, tokens) if loss_chunk > 0 else tokens
    loss = 2 * 4 * chunk * shape.vocab
    mask = 3 * mask_rows * mask_width**2
    return int(1.1 * (states + acts + loss + mask) + GIB)


def step_flops(shape: Shape, *, grad_ckpt: int, tokens: int, causal_sq: int = 0, masked_rows: int = 0,
               masked_width: int = 0) -> float:
    """FLOPs of one step: ``tokens`` processed (padding included), ``causal_sq`` = sum of squared segment
    lengths under a varlen kernel, or ``masked_rows`` rows of ``masked_width`` under SDPA with a mask."""
    d = shape.hidden  # attention width: heads * head_dim = hidden for these models
    dense = (8 if grad_ckpt > 0 else 6) * shape.params * tokens
    attn = 3.5 * 2 * d * shape.layers * causal_sq + 3.5 * 4 * d * shape.layers * masked_rows * masked_width**2
    return dense + attn
