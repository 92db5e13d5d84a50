"""Greedy or sampled chat generation with a local Hugging Face model (batched, left-padded).

This is the small in-process path used by ``novalign generate`` and the tests; the LLM access layer builds
its local backend on it.
"""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def generate_chat(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
) -> list[str]:
    """Answer each conversation (the model writes the next assistant turn); returns the decoded replies."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        encoded = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chunk
        ]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in encoded]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):  # left padding, so every row ends where generation starts
            input_ids[i, width - len(x) :] = torch.tensor(x)
            mask[i, width - len(x) :] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, **sampling,
        )
        for row in out[:, width:]:
            replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return replies
