"""Reward functions for RL: verifiers, a reward model, an LLM judge, and weighted mixes of them.

Every reward is a :class:`RewardFn` (:mod:`.base`): called with a batch of prompts (chat messages), their
completions (strings) and any per-sample fields of the prompt set (``answer``, ``instruction_id_list``, ...),
each a list as long as the batch, it returns one float per completion::

    reward = weighted_mix([(verifier_reward(ifeval_reward), 1.0), (exact_answer_reward(), 0.5)])
    totals = reward(prompts, completions, instruction_id_list=[...], kwargs=[...], answer=[...])

The adapters turn the pieces the rest of novalign already has into that shape, unchanged:

* :mod:`.verifiers` -- :func:`verifier_reward`: any plain ``(response, **fields) -> bool | float`` function,
  e.g. the evaluation verifiers of :mod:`novalign.eval.ifeval`; :func:`exact_answer_reward` and
  :func:`math_answer_reward`: the gold answer against the final answer (:mod:`novalign.eval.answers`);
* :mod:`.reward_model` -- :func:`reward_model_reward`: a reward model trained by ``novalign rm``;
* :mod:`.judge` -- :func:`llm_judge_reward`: a judge model, asked and parsed by :mod:`novalign.eval.judge`;
* :mod:`.mix` -- :func:`weighted_mix`: the weighted sum, each component's rewards kept for the logs.

Bad rewards are never passed on silently: :func:`compute_rewards` (which :class:`WeightedMix` uses) raises
a :class:`RewardError` naming the function when it raises, returns the wrong number of values, a
non-number or a NaN / infinity. A failed LLM judgment raises too, unless the judge was given an explicit
``on_failure`` value -- then it is substituted, counted and logged as a warning.
"""

from novalign.eval.judge import bracket_score, last_number, scaled_score
from novalign.train.rl.rewards.base import RewardError, RewardFn, compute_rewards, reward_name
from novalign.train.rl.rewards.judge import LLMJudgeReward, llm_judge_reward
from novalign.train.rl.rewards.mix import MixedRewards, WeightedMix, weighted_mix
from novalign.train.rl.rewards.reward_model import RewardModelReward, reward_model_reward
from novalign.train.rl.rewards.verifiers import (
    answer_contained,
    answer_equal,
    exact_answer_reward,
    final_answer,
    math_answer_reward,
    normalize_answer,
    verifier_reward,
)

__all__ = [
    "LLMJudgeReward",
    "MixedRewards",
    "RewardError",
    "RewardFn",
    "RewardModelReward",
    "WeightedMix",
    "answer_contained",
    "answer_equal",
    "bracket_score",
    "compute_rewards",
    "exact_answer_reward",
    "final_answer",
    "last_number",
    "llm_judge_reward",
    "math_answer_reward",
    "normalize_answer",
    "reward_model_reward",
    "reward_name",
    "scaled_score",
    "verifier_reward",
    "weighted_mix",
]
