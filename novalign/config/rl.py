"""``novalign grpo`` and ``novalign ppo`` (issue 5)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from novalign.config.base import Strict
from novalign.config.llm import LLMConfig
from novalign.config.train import ModelConfig, OptimConfig, TrainConfig


def inherit_judge_llm(rewards: Any, llm: Any) -> Any:
    """Raw (unvalidated) reward components with ``llm`` filled in from ``llm`` for every ``llm_judge`` that names
    none: a config with one endpoint of its own (a recipe's or a data command's ``llm``) lends it to its judges."""
    if llm is None or not isinstance(rewards, list):
        return rewards
    return [dict(c, llm=llm) if isinstance(c, dict) and c.get("type") == "llm_judge" and c.get("llm") is None else c
            for c in rewards]


class RewardComponentConfig(Strict):
    """One term of the weighted reward mix (novalign.train.rl.rewards)."""

    type: Literal["exact_answer", "ifeval", "constraints", "reward_model", "llm_judge"] = Field(
        ..., description="'exact_answer': the record's `answer` field; 'ifeval': IFEval's verifiers on the record's "
        "`instruction_id_list` / `kwargs`; 'constraints': the constraint library's validators on the record's "
        "`constraints` (fraction satisfied); 'reward_model': a `novalign rm` model directory (path); 'llm_judge': a "
        "judge model through the LLM access layer (llm, template, parse, scale, on_failure)."
    )
    weight: float = Field(1.0, description="Weight of this component in the total reward.")
    mode: Literal["final", "contains"] = Field("final", description="exact_answer: final answer equals / contains the gold one.")
    path: str | None = Field(None, description="reward_model: the reward model directory.")
    name: str | None = Field(None, description="Name of the component in the logs (reward_<name>_mean); default from its type.")
    llm: "LLMConfig | None" = Field(None, description="llm_judge: the judge (LLMConfig: backend, model, base_url, cache, ...).")
    template: str | None = Field(
        None, description="llm_judge: the judge prompt, with {prompt}, {response} and any prompt-record field "
        "({answer}, ...) filled in; other braces (JSON examples) are left as written. Unset (and no template_file): "
        "the bundled 1-10 rating prompt that asks for 'Rating: [[N]]'."
    )
    template_file: str | None = Field(None, description="llm_judge: read the template from this text file instead.")
    parse: Literal["brackets", "last_number"] = Field(
        "brackets", description="llm_judge: the score is the reply's last [[number]] ('brackets') or its last number."
    )
    scale: tuple[float, float] = Field(
        (1.0, 10.0), description="llm_judge: the judge's score range [low, high], mapped linearly onto [0, 1]; a "
        "score outside it is a failed judgment."
    )
    on_failure: float | None = Field(
        None, description="llm_judge: reward for a failed request or an unparsable / out-of-scale reply -- counted "
        "and logged each iteration as reward_<name>_failures (None: stop with an error instead)."
    )
    max_tokens: int = Field(256, ge=1, description="llm_judge: longest judge reply.")
    attempts: int = Field(
        1, ge=1, description="llm_judge: tries per judgment; above 1 an unparsable or off-scale reply is asked again, "
        "quoting the parse error (eval's re-ask), before it counts as failed."
    )

    @model_validator(mode="after")
    def _judge_fields(self) -> "RewardComponentConfig":
        judge_only = [f for f in ("llm", "template", "template_file", "on_failure")
                      if getattr(self, f) is not None] + ["attempts"] * (self.attempts != 1)
        if self.type != "llm_judge" and judge_only:
            raise ValueError(f"{', '.join(judge_only)} only apply to type: llm_judge (this component is {self.type!r})")
        if self.type == "llm_judge":
            if self.llm is None:
                raise ValueError("an llm_judge reward component needs `llm` (e.g. {backend: openai, base_url: ..., model: ...})")
            if self.template is not None and self.template_file is not None:
                raise ValueError("give the llm_judge `template` or `template_file`, not both")
            if not self.scale[1] > self.scale[0]:
                raise ValueError(f"llm_judge `scale` needs low < high, got {list(self.scale)}")
        return self


class GRPORolloutConfig(Strict):
    prompts_per_iteration: int = Field(8, ge=1, description="Prompts per iteration (each gets n responses).")
    n: int = Field(3, ge=2, description="Responses per prompt, the group of GRPO (report: 3).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also divides the logits of the loss).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    max_new_tokens: int = Field(256, ge=1, description="Longest response; longer ones are truncated (counted, logged).")
    batch_size: int = Field(32, ge=1, description="Response rows per generate call and per log-prob forward.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="Generation engine: 'hf' (Hugging Face generate with KV cache, CPU or GPU) or 'vllm' "
        "(vLLM's offline engine, GPU, `pip install novalign[vllm]`; the policy's weights are pushed into it "
        "before every rollout). Log-probs are recomputed by the policy's forward either way."
    )
    vllm_args: dict[str, Any] = Field(
        default_factory=dict, description="engine: vllm -- extra vllm.LLM(...) arguments, e.g. "
        "{gpu_memory_utilization: 0.3, dtype: bfloat16, enforce_eager: true}."
    )


class PolicyLossConfig(Strict):
    """Fields every policy-gradient stage shares (GRPO, PPO)."""

    beta: float = Field(0.04, ge=0, description="KL coefficient in the token-level reward (-beta * KL_t per token).")
    kl_top_k: int = Field(500, ge=1, description="k of the report's top-k KL against the reference (report: 500).")
    eps_low: float = Field(0.2, gt=0, lt=1, description="Clip range below 1 of the probability ratio.")
    eps_high: float | None = Field(None, gt=0, description="Clip range above 1 (None: eps_low; larger = DAPO's clip-higher).")
    ppo_epochs: int = Field(2, ge=1, description="Passes over the iteration's rollout batch.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per pass, each on 1/m of the rollouts (token-mean "
                              "within the mini-batch); optimizer steps per iteration = ppo_epochs x mini_batches.")
    truncated_reward: float | None = Field(
        None, description="Reward for responses that hit max_new_tokens (None: score them like the others; "
        "their count is logged either way)."
    )


class GRPOLossConfig(PolicyLossConfig):
    scale_by_std: bool = Field(True, description="Divide group-centred rewards by the group std (False: Dr. GRPO).")
    kl_in_group_norm: bool = Field(False, description="Group-normalize the KL-penalized return instead (see rl.grpo_token_advantages).")


class PTXConfig(Strict):
    coef: float = Field(0.0, ge=0, description="gamma of equation (2): top-k KL penalty on SFT data (0: off).")
    train_files: list[str] = Field(default_factory=list, description="SFT chat files the PTX term is computed on.")
    max_length: int = Field(1024, ge=8, description="Longest tokenized SFT sample.")
    micro_batch_size: int = Field(4, ge=1, description="SFT samples per optimizer step.")


class RLTrainConfig(TrainConfig):
    distributed: Literal["auto", "ddp"] = Field(
        "auto", description="Under torchrun: data parallel, each process rolling out an equal share of the prompts, "
        "with an explicit gradient all-reduce ('auto' = 'ddp'; RL has no FSDP yet)."
    )
    sample_every: int = Field(
        10, ge=0, description="Every N iterations, write that iteration's prompt / completion / reward rows to "
        "samples.jsonl (and a TensorBoard text table) (0: off)."
    )
    pack_tokens: int = Field(
        4096, ge=0, description="Token budget of a packed row in the training forwards (prompt + response sequences "
        "packed best-fit decreasing, positions restarting; 0: right-padded batches)."
    )


class RLStageConfig(Strict):
    """What ``novalign grpo`` and ``novalign ppo`` share: policy, prompts, reward mix, PTX, optimizer, loop."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    prompt_files: list[str] = Field(
        default_factory=list, description="JSONL/Parquet prompts: `messages` (a last assistant turn is dropped) or "
        "`prompt`; every other field is passed to the rewards (e.g. `answer`)."
    )
    skip_invalid: bool = Field(
        False, description="Skip (and count, by reason) invalid prompt records instead of stopping at the first one "
        "-- a wrong type, or a field a configured reward needs (`answer`, `instruction_id_list`) that is missing."
    )
    rewards: list[RewardComponentConfig] = Field(
        [{"type": "exact_answer"}], validate_default=True,
        description="The weighted reward mix: a list of {type, weight, ...}."
    )
    ptx: PTXConfig = Field(default_factory=PTXConfig)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-6, warmup_ratio=0.0))
    train: RLTrainConfig = Field(default_factory=lambda: RLTrainConfig(epochs=1, micro_batch_size=8))


class GRPOConfig(RLStageConfig):
    """``novalign grpo``: GRPO with the report's top-k KL in the token-level reward (section 2.1, eq. 2).

    One iteration = rollouts for ``rollout.prompts_per_iteration`` prompts, then ``loss.ppo_epochs`` optimizer
    steps over the whole rollout batch. ``train.max_steps`` counts iterations (default: ``train.epochs``
    passes over the prompts); ``train.save_every`` / ``log_every`` count iterations; ``train.micro_batch_size``
    is responses per training forward; ``train.grad_accum`` is unused.
    """

    output_dir: str = Field("runs/grpo", description="Where checkpoints, logs and the final model go.")
    rollout: GRPORolloutConfig = Field(default_factory=GRPORolloutConfig)
    loss: GRPOLossConfig = Field(default_factory=GRPOLossConfig)


# ---------------------------------------------------------------------------------------------- RL: PPO (issue 5)


class PPORolloutConfig(GRPORolloutConfig):
    n: int = Field(1, ge=1, description="Responses per prompt (PPO needs no group: 1 is the usual choice).")


class PPOLossConfig(PolicyLossConfig):
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount (report: 1).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    value_clip: float | None = Field(0.2, gt=0, description="Clip range of the value update around the rollout's values (None: plain MSE).")
    whiten_advantages: bool = Field(True, description="Standardize the GAE advantages over the batch's response tokens.")


class PPOConfig(RLStageConfig):
    """``novalign ppo``: PPO with a value head, GAE and the report's top-k KL in the token-level reward.

    The critic is a scalar linear head on the policy's final hidden states (shared trunk). Iterations,
    checkpoints, logs, rewards and PTX work as in ``novalign grpo``.
    """

    output_dir: str = Field("runs/ppo", description="Where checkpoints, logs and the final model go.")
    rollout: PPORolloutConfig = Field(default_factory=PPORolloutConfig)
    loss: PPOLossConfig = Field(default_factory=PPOLossConfig)
