"""A reward model trained by ``novalign rm`` as an RL reward (report section 2.1)."""

from __future__ import annotations

from typing import Any

from novalign.train.rl.rewards.base import Messages

__all__ = ["RewardModelReward", "reward_model_reward"]


class RewardModelReward:
    """A reward model's score of each ``(prompt, completion)``, tokenized exactly as in RM training."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 4096, batch_size: int = 16,
                 name: str = "reward_model"):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size, self.name = max_length, batch_size, name

    def __call__(self, prompts: list[Messages], completions: list[str], **_: Any) -> list[float]:
        from novalign.models.reward import score_conversations

        conversations = [(p, {"role": "assistant", "content": c}) for p, c in zip(prompts, completions, strict=True)]
        return score_conversations(self.model, self.tokenizer, conversations, max_length=self.max_length,
                                   batch_size=self.batch_size)


def reward_model_reward(model_dir: Any, *, tokenizer: Any = None, device: str = "cpu", dtype: str = "float32",
                        max_length: int = 4096, batch_size: int = 16, name: str = "reward_model") -> RewardModelReward:
    """A :class:`RewardFn` scoring with the reward model in ``model_dir`` (a ``novalign rm`` output).

    The model is loaded once (:func:`~novalign.models.reward.load_reward_model`, eval mode); ``tokenizer``
    defaults to the one saved beside it.
    """
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model

    tok = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = load_reward_model(model_dir, dtype=dtype, pad_token_id=pad, device=device).eval()
    return RewardModelReward(model, tok, max_length=max_length, batch_size=batch_size, name=name)
