"""The reward model: the policy's architecture with a scalar head, read at the last real token.

A reward model is a plain Hugging Face ``*ForSequenceClassification`` with ``num_labels = 1`` (Llama,
Qwen2, ... all have one): the decoder of the causal LM plus a linear ``score`` head. Started from a
causal-LM directory, the decoder weights load and the head is new; saved, the directory says
``LlamaForSequenceClassification`` and loads back with ``AutoModelForSequenceClassification`` -- which is
how the RL stage, or any other tool, picks it up.

The reward of a response is the head applied to the final hidden state of its *last real token*: the
end-of-turn marker that closes the response (see :func:`novalign.data.preference.tokenize_response`).
:func:`rewards_at` reads it at given positions of a flattened batch, so packed rows (several sequences
per row, each isolated by ``cu_seqlens``) and padded rows are read the same way. Hugging Face's own
``forward`` picks the last non-pad token of each row, which is the same token for right-padded rows of
sequences that end in a non-pad token; :func:`score_conversations` is the path to prefer.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Sequence

import torch
from torch import nn

from novalign.models.forward import model_inputs
from novalign.models.packing import Batch, collate_padded

__all__ = ["load_reward_model", "reward_head", "rewards_at", "score_conversations"]


@contextlib.contextmanager
def _quiet_transformers():
    """Starting from a causal LM, transformers reports lm_head as unused and score as new: both expected."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_reward_model(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "float32",
    attn_implementation: str | None = None,
    pad_token_id: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A ``*ForSequenceClassification`` with one output, from a causal-LM or a reward-model directory.

    ``pad_token_id`` is recorded in the config (Hugging Face's own forward needs it to find each row's
    last token).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from novalign.models.load import _require_dir, resolve_dtype

    p = _require_dir(path, "Model")
    config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    if getattr(config, "num_labels", 1) != 1 and any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise ValueError(f"{p} is a classifier with {config.num_labels} labels, not a reward model (1 label)")
    config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    kwargs: dict[str, Any] = {"config": config, "dtype": resolve_dtype(dtype), "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs)
    return model.to(device)


def reward_head(model: nn.Module) -> nn.Module:
    """The scalar head (``score``) of a reward model, also through a peft wrapper."""
    for candidate in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        head = getattr(candidate, "score", None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(f"{type(model).__name__} has no 'score' head; load it with load_reward_model")


def rewards_at(model: nn.Module, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """Rewards ``[N]`` (fp32) read at ``positions`` ``[N]`` of the flattened ``rows * row_len`` stream."""
    hidden = model.get_decoder()(**model_inputs(batch)).last_hidden_state  # [B, L, H]
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # [N, H]
    return reward_head(model)(picked).squeeze(-1).float()


@torch.no_grad()
def score_conversations(
    model: nn.Module,
    tokenizer: Any,
    conversations: Sequence[tuple[Sequence[dict], dict] | tuple[Sequence[dict], dict, Sequence[dict] | None]],
    *,
    max_length: int = 4096,
    batch_size: int = 16,
) -> list[float]:
    """The reward of each ``(prompt messages, assistant response)`` or ``(prompt, response, tools)`` -- the
    record's tool definitions, shown by the chat template as in training -- tokenized exactly as in training.

    Raises:
        ValueError (SampleTooLong, ControlTokenInContent, ...): a conversation that cannot be tokenized.
    """
    from novalign.data.preference import tokenize_response

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples = [tokenize_response(tokenizer, c[0], c[1], max_length=max_length, tools=c[2] if len(c) > 2 else None)
               for c in conversations]
    # longest first in each batch keeps padding small; results go back to input order
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
    rewards = [0.0] * len(samples)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_padded([(samples[i].input_ids, samples[i].labels) for i in idx], pad_id).to(device)
        width = batch.input_ids.shape[1]
        last = torch.tensor([r * width + len(samples[i]) - 1 for r, i in enumerate(idx)], device=device)
        for i, value in zip(idx, rewards_at(model, batch, last).tolist()):
            rewards[i] = value
    model.train(was_training)
    return rewards
