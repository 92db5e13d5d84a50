"""Multi-layer gradient checkpointing (report section 2.2).

Conventional checkpointing stores each decoder layer's input and recomputes the layer in the backward
pass. With ``n`` activations (in units of ``hidden_size`` per token) inside a layer and ``L`` layers, the
backward needs ``h*n + h*L`` per token: one layer's recomputed activations plus all ``L`` stored inputs.
Merging ``k`` consecutive layers into one checkpointed group changes that to ``k*h*n + h*L/k``, which is
smallest at ``k = sqrt(L / n)``. For deep models (80+ layers) a k above 1 saves memory; for shallow ones
k = 1 is already optimal. ``n`` depends on the architecture, so :func:`measure_activations_per_layer`
measures it by counting the bytes autograd saves inside one layer.

Groups are installed without changing any parameter name: the first layer of each group gets a forward
that runs the whole group under ``torch.utils.checkpoint``, and the other layers of the group pass their
input through when the model's own loop calls them. Saved checkpoints and ``state_dict`` keys are
therefore unchanged, and the same code works under FSDP2.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def optimal_group_size(num_layers: int, activations_per_layer: float) -> int:
    """The report's k = sqrt(num_layers / n), rounded to the better neighbouring integer, in [1, num_layers].

    >>> optimal_group_size(80, 20.0)   # sqrt(4) = 2
    2
    >>> optimal_group_size(28, 34.0)   # sqrt(0.82) < 1 -> per-layer checkpointing
    1
    """
    if num_layers < 1 or activations_per_layer <= 0:
        raise ValueError("num_layers must be >= 1 and activations_per_layer > 0")
    k_real = math.sqrt(num_layers / activations_per_layer)
    candidates = {max(1, min(num_layers, math.floor(k_real))), max(1, min(num_layers, math.ceil(k_real)))}

    def cost(k: int) -> float:  # memory in units of hidden_size per token
        return k * activations_per_layer + num_layers / k

    return min(sorted(candidates), key=cost)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Hugging Face causal LM (also through a peft wrapper)."""
    base = model
    for attr in ("base_model", "model"):  # peft: PeftModel.base_model.model
        if hasattr(base, "get_decoder"):
            break
        base = getattr(base, attr, base)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find decoder layers on {type(model).__name__}; gradient checkpointing needs .layers")
    return layers


def measure_activations_per_layer(layer: nn.Module, hidden_size: int, call_kwargs: dict[str, Any], tokens: int) -> float:
    """n: activation bytes autograd saves inside one decoder layer, per token, in units of hidden_size elements.

    ``call_kwargs`` must contain ``hidden_states`` (``[1, tokens, hidden]``, requires grad) and the other
    arguments the layer needs (``position_embeddings``, ...). Parameters saved for backward are not
    activations and are skipped, and a tensor saved by several ops (the normed input feeds q, k and v) is
    counted once; use a few hundred tokens or more so that per-sequence constants do not inflate n.
    """
    params = {p.data_ptr() for p in layer.parameters()}
    seen: set[tuple[int, int]] = set()
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        ptr = t.untyped_storage().data_ptr()
        key = (ptr, t.storage_offset())
        if ptr not in params and key not in seen:
            seen.add(key)
            saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(**call_kwargs)
    del out
    elem = call_kwargs["hidden_states"].element_size()
    return saved / (tokens * hidden_size * elem)


class _GroupState(threading.local):
    depth = 0


_group_state = _GroupState()


def enable_multi_layer_checkpointing(model: nn.Module, k: int) -> int:
    """Checkpoint groups of ``k`` consecutive decoder layers; returns the number of groups.

    ``k = 1`` is conventional per-layer checkpointing; ``k = 0`` removes checkpointing.

    The model's own loop still calls every layer. The first layer of a group runs the whole group under one
    checkpoint; the others answer the model's loop with a pass-through, but when the group calls them they
    run for real -- through ``layer(...)``, so module hooks (FSDP2's all-gathers) fire as usual.
    """
    layers = decoder_layers(model)
    for layer in layers:  # reset any earlier grouping
        layer.__dict__.pop("forward", None)
    if k <= 0:
        return 0
    groups = [list(layers[i : i + k]) for i in range(0, len(layers), k)]
    for group in groups:
        leader, followers = group[0], group[1:]
        leader_forward = leader.forward

        def group_forward(hidden_states: torch.Tensor, *args: Any, _lead=leader_forward, _rest=tuple(followers), **kwargs: Any) -> torch.Tensor:
            def run(h: torch.Tensor) -> torch.Tensor:
                _group_state.depth += 1
                try:
                    out = _lead(h, *args, **kwargs)
                    h = out[0] if isinstance(out, tuple) else out
                    for layer in _rest:
                        out = layer(h, *args, **kwargs)
                        h = out[0] if isinstance(out, tuple) else out
                    return h
                finally:
                    _group_state.depth -= 1

            if torch.is_grad_enabled():
                return checkpoint(run, hidden_states, use_reentrant=False)
            return run(hidden_states)

        leader.forward = group_forward
        for layer in followers:
            original = layer.forward

            def follower_forward(hidden_states: torch.Tensor, *args: Any, _orig=original, **kwargs: Any) -> torch.Tensor:
                if _group_state.depth > 0:  # called by its group
                    return _orig(hidden_states, *args, **kwargs)
                return hidden_states  # called by the model's loop: the group leader already ran it

            layer.forward = follower_forward
    return len(groups)
