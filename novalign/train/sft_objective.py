"""The SFT objective (report section 2.1): next-token cross-entropy summed over a batch's assistant tokens.

It lives apart from :mod:`novalign.train.sft` so that it imports only torch and the model helpers -- not the
config (pydantic) or the training loop: ``bench/gpu_sft.py`` runs it on a GPU image that has torch and
transformers but not novalign's other dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from novalign.models.forward import decoder_hidden_states, lm_logits, output_weight
from novalign.models.packing import Batch
from novalign.train.losses import causal_lm_loss_sum, chunked_causal_lm_loss_sum


@dataclass
class SFTObjective:
    """Cross-entropy summed over the batch's loss tokens."""

    chunk_size: int = 4096
    supports_sequence_parallel = True  # reads Batch.labels_shifted (novalign.train.sequence_parallel)

    def num_loss_tokens(self, batch: Batch) -> int:
        return batch.num_loss_tokens

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.chunk_size > 0:
            hidden = decoder_hidden_states(model, batch)
            loss, _ = chunked_causal_lm_loss_sum(hidden, output_weight(model), batch.labels, self.chunk_size,
                                                 shifted=batch.labels_shifted)
        else:
            loss, _ = causal_lm_loss_sum(lm_logits(model, batch), batch.labels, shifted=batch.labels_shifted)
        return loss, {}
