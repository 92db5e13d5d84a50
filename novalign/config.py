"""Typed configs: YAML files validated by pydantic models, with ``--set key.path=value`` overrides.

Every field has a default and a description (the description is the ``--help`` text and the docs). Unknown
or mistyped keys are errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T", bound="Strict")


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and key."""


class Strict(BaseModel):
    """Base for all configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the head."
    )


class ModelConfig(Strict):
    path: str = Field("runs/tiny-base", description="Local Hugging Face causal-LM directory to start from.")
    attn_backend: Literal["auto", "varlen", "sdpa", "eager"] = Field(
        "auto",
        description="Attention: 'varlen'/'auto' = cu_seqlens kernels (flash-attn, torch varlen_attn on CUDA, exact "
        "per-sample SDPA on CPU); 'sdpa' = transformers' own SDPA (packed isolation from position_ids).",
    )
    gradient_checkpointing: int | Literal["auto", "off"] = Field(
        "off",
        description="Checkpoint groups of k consecutive decoder layers (1 = per-layer; 'auto' = the report's "
        "k = sqrt(num_layers / n) with n measured for the architecture; 'off' = none).",
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (peft) instead of all weights.")


class DataConfig(Strict):
    train_files: list[str] = Field(default_factory=list, description="JSONL or Parquet chat files to train on.")
    eval_files: list[str] = Field(default_factory=list, description="Held-out chat files for the eval loss.")
    max_length: int = Field(4096, ge=8, description="Longest tokenized sample allowed; longer ones are errors.")
    train_on: Literal["all", "last"] = Field("all", description="Train on all assistant turns or only the last one.")
    skip_invalid: bool = Field(
        False, description="Skip invalid records (counted and reported by reason) instead of stopping at the first."
    )
    text_files: list[str] = Field(
        default_factory=list, description="Plain-text JSONL/Parquet files of {text} records, trained on every token "
        "and cut into max_length pieces (pretraining, or pretraining text replayed during SFT)."
    )


class PackingConfig(Strict):
    enabled: bool = Field(True, description="Pack samples into rows (otherwise dynamic padding).")
    row_len: int | None = Field(None, ge=8, description="Token budget of a packed row (default: data.max_length for SFT, 2 x data.max_length for pair trainers).")
    window: int | None = Field(
        None, ge=1, description="Pack within windows of this many shuffled samples (None: the whole epoch at once)."
    )


class OptimConfig(Strict):
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (report section 2.1: 1e-5).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay (not applied to norms/biases).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Fraction of total steps used for linear warmup.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: no clipping).")


class TrainConfig(Strict):
    epochs: int = Field(3, ge=1, description="Passes over the data (report: 2-6 depending on model size).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    micro_batch_size: int = Field(1, ge=1, description="Rows (packed) or samples (padded) per forward pass.")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step on each rank.")
    seed: int = Field(0, description="Seed for initialization, shuffling and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto' = fp32 on CPU, bf16 autocast on GPU (fp32 master weights)."
    )
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Under torchrun: 'ddp' (gradient all-reduce), 'fsdp' (FSDP2); 'auto' = fsdp on CUDA."
    )
    sequence_parallel: int = Field(
        1, ge=1, description="Ulysses sequence parallelism (SFT, packed, with ddp): this many ranks split every "
        "row's tokens; must divide the number of processes and the attention heads.",
    )
    loss_chunk_size: int = Field(
        4096, ge=0, description="Tokens per chunk of the vocabulary projection + cross-entropy (0: unchunked)."
    )
    log_every: int = Field(1, ge=1, description="Log metrics every N optimizer steps.")
    eval_every: int = Field(0, ge=0, description="Held-out eval loss every N steps (0: only at the end).")
    save_every: int = Field(0, ge=0, description="Write a resumable checkpoint every N steps (0: only at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints to keep.")
    resume: bool = Field(True, description="Resume from the newest complete checkpoint in output_dir if one exists.")
    progress: bool = Field(True, description="Show a progress bar.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files.")


class SFTConfig(Strict):
    """``novalign sft``: supervised fine-tuning with sample packing (report sections 2.1-2.2)."""

    output_dir: str = Field("runs/sft", description="Where checkpoints, logs and the final model go.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


# ------------------------------------------------------------------------- reward model, DPO, KTO (issue 4)


class PreferenceDataConfig(Strict):
    train_files: list[str] = Field(default_factory=list, description="JSONL or Parquet preference files to train on.")
    eval_files: list[str] = Field(default_factory=list, description="Held-out preference files (accuracy, margin, loss).")
    eval_split: float = Field(
        0.0, ge=0, lt=1, description="With no eval_files: hold out this fraction of the training prompts for eval."
    )
    train_eval_pairs: int = Field(
        256, ge=0, description="Training pairs re-evaluated at every eval for the train-vs-eval gap (0: off)."
    )
    max_length: int = Field(4096, ge=8, description="Longest tokenized prompt + response; longer ones are errors.")
    pairs: Literal["all", "adjacent"] = Field(
        "all", description="How a group of ranked responses becomes pairs: every better/worse pair, or adjacent ranks only."
    )
    skip_invalid: bool = Field(
        False, description="Skip invalid records (counted and reported by reason) instead of stopping at the first."
    )


class ScoreDimension(Strict):
    weight: float = Field(1.0, ge=0, description="Weight of this dimension in the combined target.")
    range: tuple[float, float] | None = Field(None, description="Declared (min, max); a score outside it is bad input.")


class ScoreConfig(Strict):
    """How annotated absolute scores become the MSE targets r-hat of equation (1) (report section 3.3)."""

    dimensions: dict[str, ScoreDimension] = Field(
        {}, description="Named score dimensions (e.g. helpfulness, fluency, safety) with weight and range; "
        "empty: a score is one number."
    )
    range: tuple[float, float] | None = Field(None, description="Declared (min, max) of a one-number score; outside it is bad input.")
    normalize: Literal["minmax", "range", "zscore", "none"] = Field(
        "minmax", description="Per dimension: 'minmax' to [0, 1] over the observed values of a group, 'range' to "
        "[0, 1] over the declared range, 'zscore' within a group, 'none' raw; then the weighted mean of dimensions."
    )
    group_by: Literal["dataset", "annotator"] = Field(
        "dataset", description="Groups for minmax/zscore statistics: each input file, or each record's 'annotator'."
    )


class RMLossConfig(Strict):
    alpha: float = Field(
        1.0, ge=0, description="Weight of the pointwise MSE to normalized absolute scores (equation 1); "
        "pairs without scores use 0."
    )


class RMConfig(Strict):
    """``novalign rm``: a reward model with Bradley-Terry + pointwise MSE (report section 2.1, equation 1)."""

    output_dir: str = Field("runs/rm", description="Where checkpoints, logs and the final reward model go.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    scores: ScoreConfig = Field(default_factory=ScoreConfig)
    loss: RMLossConfig = Field(default_factory=RMLossConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))  # report: 1-2 epochs


class DPOLossConfig(Strict):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty (DPO's beta).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed fraction of flipped labels (conservative DPO); 0: plain DPO."
    )


class DPOConfig(Strict):
    """``novalign dpo``: direct preference optimization, a baseline of the report."""

    output_dir: str = Field("runs/dpo", description="Where checkpoints, logs and the final model go.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    reference_path: str | None = Field(None, description="Reference model directory (default: model.path).")
    data: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    scores: ScoreConfig = Field(default_factory=ScoreConfig)
    loss: DPOLossConfig = Field(default_factory=DPOLossConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))


class KTOLossConfig(Strict):
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL penalty (KTO's beta).")
    desirable_weight: float = Field(1.0, gt=0, description="Loss weight of desirable samples (lambda_D).")
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable samples (lambda_U).")


class KTOConfig(Strict):
    """``novalign kto``: Kahneman-Tversky optimization on desirable / undesirable samples, a baseline."""

    output_dir: str = Field("runs/kto", description="Where checkpoints, logs and the final model go.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    reference_path: str | None = Field(None, description="Reference model directory (default: model.path).")
    data: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    scores: ScoreConfig = Field(default_factory=ScoreConfig)
    loss: KTOLossConfig = Field(default_factory=KTOLossConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))


# ---------------------------------------------------------------------------------------------- RL: GRPO (issue 5)


from pydantic import model_validator as _rl_model_validator  # noqa: E402  (used by the RL configs below)


class RewardComponentConfig(Strict):
    """One term of the weighted reward mix (novalign.rewards)."""

    type: Literal["exact_answer", "ifeval", "reward_model", "llm_judge"] = Field(
        ..., description="'exact_answer': the record's `answer` field; 'ifeval': IFEval's verifiers on the record's "
        "`instruction_id_list` / `kwargs`; 'reward_model': a `novalign rm` model directory (path); 'llm_judge': a "
        "judge model through the LLM access layer (llm, template, parse, scale, on_failure)."
    )
    weight: float = Field(1.0, description="Weight of this component in the total reward.")
    mode: Literal["final", "contains"] = Field("final", description="exact_answer: final answer equals / contains the gold one.")
    path: str | None = Field(None, description="reward_model: the reward model directory.")
    name: str | None = Field(None, description="Name of the component in the logs (reward_<name>_mean); default from its type.")
    llm: "LLMConfig | None" = Field(None, description="llm_judge: the judge (LLMConfig: backend, model, base_url, cache, ...).")
    template: str | None = Field(
        None, description="llm_judge: the judge prompt, a str.format template with {prompt}, {response} and any "
        "prompt-record field ({answer}, ...); literal braces doubled. Unset (and no template_file): the bundled "
        "1-10 rating prompt that asks for 'Rating: [[N]]'."
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

    @_rl_model_validator(mode="after")
    def _judge_fields(self) -> "RewardComponentConfig":
        judge_only = [f for f in ("llm", "template", "template_file", "on_failure")
                      if getattr(self, f) is not None]
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


# ---------------------------------------------------------------------------------------------- merge (issue 6)


class MergeModelConfig(Strict):
    path: str = Field(..., description="Local Hugging Face model directory with safetensors weights.")
    weight: float = Field(
        1.0, description="Weight w_i (linear, task_arithmetic, ties; model_stock is unweighted and needs 1.0)."
    )


class MergeConfig(Strict):
    """``novalign merge``: merge fine-tuned checkpoints, streamed tensor by tensor (report section 2.4)."""

    method: Literal["linear", "task_arithmetic", "ties", "model_stock"] = Field(
        "model_stock", description="Merge method; the report found Model Stock best overall."
    )
    base_model: str | None = Field(
        None, description="The common starting point (needed by task_arithmetic, ties, model_stock). Its config, "
        "generation config, tokenizer and chat template are copied. Linear only takes these files from it."
    )
    models: list[MergeModelConfig] = Field(
        [], description="Models to merge: a list of {path, weight} (model_stock: at least two, besides the base)."
    )
    output_dir: str = Field("runs/merged", description="Where the merged model directory is written (atomically).")
    overwrite: bool = Field(False, description="Replace an existing output_dir (only once the merge has succeeded).")
    scale: float = Field(1.0, description="lambda: scale of the merged task vector (task_arithmetic, ties).")
    density: float = Field(0.2, gt=0, le=1, description="ties: fraction of each task vector's largest entries kept.")
    normalize: bool = Field(True, description="linear: divide by the sum of the weights.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Stored dtype of the merged weights ('auto': each tensor as the base stores it). "
        "The arithmetic is always fp32."
    )
    tokenizer_source: str | None = Field(
        None, description="Whose tokenizer and chat template to keep: 'base' or a directory. Unset: the models' "
        "vocabulary files must be identical, and the base's (or the first model's) are copied."
    )
    max_shard_size: str = Field("5GB", description="Largest output shard, e.g. 500MB, 5GB, 2GiB.")
    chunk_mb: float = Field(
        8.0, gt=0, description="Rows of a tensor processed at once, in fp32 MiB per model; peak memory is a small "
        "multiple of (models + 1) x this. TIES's trim threshold needs one whole task vector at a time regardless."
    )


# ---------------------------------------------------------------------------------------------- LLM access (issue 3)


class LocalModelConfig(Strict):
    """Generation with an in-process Hugging Face model (the client's 'local' backend and `novalign serve`)."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs ('auto': cuda if present).")
    dtype: Literal["auto", "float32", "bf16", "fp16"] = Field("auto", description="'auto': bf16 on GPU, float32 on CPU.")
    max_batch_size: int = Field(32, ge=1, description="Most sequences (requests x n) generated together in one batch.")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests before it starts.")
    default_max_tokens: int = Field(256, ge=1, description="Completion length when a request sets no max_tokens.")


class PriceConfig(Strict):
    prompt_per_million: float = Field(0.0, ge=0, description="Price of one million prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0, description="Price of one million completion tokens.")


class LLMConfig(Strict):
    """The LLM access layer every stage uses: backend, limits, retries, cache and prices (novalign.llm)."""

    backend: Literal["openai", "local", "vllm"] = Field(
        "openai", description="'openai': any OpenAI-compatible HTTP server; 'local': in-process transformers; "
        "'vllm': vLLM's offline engine (needs vLLM and a GPU).",
    )
    model: str = Field("", description="Model name sent to the server (openai), or the model directory (local, vllm).")
    base_url: str | None = Field(None, description="Server URL such as http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL).")
    api_key: str | None = Field(None, description="API key (default: the variable named by api_key_env).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(16, ge=1, description="Most requests in flight at once.")
    rpm: float | None = Field(None, gt=0, description="Requests-per-minute limit (None: none).")
    tpm: float | None = Field(None, gt=0, description="Tokens-per-minute limit, prompt + completion (None: none).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout; a request past it is retried.")
    max_attempts: int = Field(6, ge=1, description="Tries per request on 429 / 5xx / timeout / connection errors.")
    backoff_base_s: float = Field(0.5, ge=0, description="First retry waits about this long; each retry doubles it.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest computed backoff (a server's Retry-After wins).")
    structured_attempts: int = Field(3, ge=1, description="Tries to get JSON that validates (re-asking with the error).")
    cache_path: str = Field("runs/llm-cache.sqlite", description="SQLite request cache, shared by runs and processes.")
    no_cache: bool = Field(False, description="Bypass the cache: neither read nor write it.")
    cache_namespace: str = Field("", description="Replaces the base URL in the cache key (the key holds the URL by default, "
                                 "so two servers serving one model name never share answers); set it to share a "
                                 "cache across addresses of one model.")
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict, description="Price per model name or fnmatch pattern, for the cost estimate.",
    )
    progress: bool = Field(True, description="Show a progress bar for batches.")
    local: LocalModelConfig = Field(default_factory=LocalModelConfig)
    vllm_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM(...) arguments, e.g. {tensor_parallel_size: 2}.",
    )


class ServeConfig(Strict):
    """``novalign serve``: an OpenAI-compatible server for a local Hugging Face model."""

    model: str = Field("runs/tiny-base", description="Local Hugging Face model directory to serve.")
    served_model_name: str | None = Field(None, description="Model id clients ask for (default: the directory name).")
    host: str = Field("127.0.0.1", description="Interface to bind (loopback by default; 0.0.0.0 exposes it).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    api_key: str | None = Field(None, description="Require 'Authorization: Bearer KEY' (default: $NOVALIGN_API_KEY).")
    engine: LocalModelConfig = Field(default_factory=LocalModelConfig)


# ---------------------------------------------------------------------------------------------- evaluation (issue 7)

from pydantic import field_validator, model_validator  # noqa: E402  (kept with the eval configs that use them)


class EvalModelConfig(Strict):
    """One model under test: a local directory (``path``), an endpoint (``llm``), a responses file
    (``responses``: score only, no generation), or none of these (the suites read judgments from their options)."""

    name: str = Field(..., description="Name in outputs and reports (<output_dir>/<name>/...).")
    path: str | None = Field(None, description="Local Hugging Face model directory, generated in-process.")
    llm: LLMConfig | None = Field(None, description="Any OpenAI-compatible endpoint (or other LLM-layer backend).")
    responses: str | None = Field(
        None, description="Score only: a JSONL of {prompt, response} or {messages, response} (one file for every "
        "suite), or a folder with one <suite name>.jsonl per suite.",
    )
    local: LocalModelConfig = Field(default_factory=LocalModelConfig, description="Engine settings for `path`.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, description="Longest reply in tokens.")
    seed: int | None = Field(None, description="Sampling seed, for backends that honour one.")
    system_prompt: str | None = Field(None, description="Prepended as a system message where a prompt has none.")
    on_failure: Literal["error", "empty"] = Field(
        "error", description="A request that fails after retries: stop with its reason ('error'), or score an "
        "empty reply ('empty', counted in the summary as num_generation_failures).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "EvalModelConfig":
        given = [k for k in ("path", "llm", "responses") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"model {self.name!r}: give one of path / llm / responses, not {' and '.join(given)}")
        return self


class EvalJudgeConfig(LLMConfig):
    """The judge of the checklist-judged suites: any LLM-layer backend, plus the judging settings."""

    lang: Literal["en", "zh"] = Field("en", description="Judge prompt template language (official data is Chinese).")
    template_dir: str | None = Field(None, description="A folder of edited judge templates overriding the bundled ones.")
    max_reasks: int = Field(2, ge=0, description="Re-asks on a malformed judgment before it is recorded as failed.")
    max_tokens: int = Field(1024, ge=1, description="Longest judgment in tokens (judges are asked greedily).")


class EvalSuiteConfig(Strict):
    """One suite to run on every model: a registry type, its data file and its own options."""

    name: str = Field("", description="Output name (<model>/<name>.jsonl); default: the type.")
    type: str = Field(..., description="ifeval, math, code, cfbench, sysbench, fbbench, ux, mtbench, pairwise, or "
                      "'package.module:function' for a suite of your own.")
    data: str | None = Field(None, description="The suite's input file (formats: README, 'Evaluation: novalign eval').")
    options: dict[str, Any] = Field(default_factory=dict, description="The suite's own options (see its docs).")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from novalign.eval.suites import SUITES

        if value not in SUITES and ":" not in value:
            raise ValueError(f"unknown suite type {value!r}; known: {', '.join(SUITES)} (or 'module:function')")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> "EvalSuiteConfig":
        if not self.name:
            object.__setattr__(self, "name", self.type.rsplit(":", 1)[-1])
        return self


class EvalConfig(Strict):
    """``novalign eval``: models x suites -> per-sample JSONL, summary.json and report.md with charts."""

    models: list[EvalModelConfig] = Field(default_factory=list, description="Models to evaluate (side by side).")
    judge: EvalJudgeConfig | None = Field(None, description="The judge model (checklist / rating suites need one).")
    suites: list[EvalSuiteConfig] = Field(default_factory=list, description="Suites to run on every model.")
    output_dir: str = Field("runs/eval", description="Where results, summary.json and report.md go.")
    cache_path: str | None = Field(
        None, description="Request cache for `path` models (default: <output_dir>/llm-cache.sqlite; endpoint "
        "models use their llm.cache_path).",
    )
    no_cache: bool = Field(False, description="`path` models: neither read nor write the request cache.")
    batch_size: int = Field(64, ge=1, description="Prompts asked per batch; each batch's records are saved at once.")
    progress: bool = Field(True, description="Show progress bars.")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        for kind, names in (("model", [m.name for m in self.models]), ("suite", [s.name for s in self.suites])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(twice)}")
        bad = [n for n in [m.name for m in self.models] + [s.name for s in self.suites]
               if not n or n in (".", "..") or "/" in n or "\\" in n]
        if bad:
            raise ValueError(f"names are used as file names and cannot be {bad}")
        return self


# ---------------------------------------------------------------------------------------------- PAS (issue 8)


class PASDataConfig(Strict):
    """``novalign pas build-data``: categories + seeds -> few-shot synthesis -> self-correction (report 4.6)."""

    pool_files: list[str] = Field(
        default_factory=list, description="JSONL/Parquet of {prompt, category?, search_keywords?}: prompts to complement."
    )
    output: str = Field("runs/pas/pas_data.jsonl", description="Output JSONL (appended; a rerun resumes). Dropped "
                        "records go to <output>.dropped.jsonl, failed LLM calls to <output>.failed.jsonl.")
    categories: str | None = Field(None, description="Category YAML (name, description, style); default: bundled.")
    seeds: str | None = Field(None, description="Seed JSONL (prompt, complement, category); default: bundled.")
    shots: int = Field(4, ge=0, description="Seed examples shown per synthesis request (same category first).")
    max_words: int = Field(40, ge=1, description="Rule check: a complement longer than this is too long (report: ~30).")
    min_words: int = Field(3, ge=1, description="Rule check: a complement shorter than this is too short.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the synthesis step.")
    max_tokens: int = Field(256, ge=1, description="Reply cap of each synthesis / check call.")
    seed: int = Field(0, description="Seed of the few-shot selection and of the sampling.")
    on_check_failure: Literal["rules", "fail"] = Field(
        "rules", description="When the LLM check call fails: decide by the rule check alone, or record the prompt as failed."
    )
    skip_invalid: bool = Field(False, description="Skip invalid pool records (counted, reported) instead of stopping.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="The LLM that synthesizes complements.")
    check_llm: LLMConfig | None = Field(None, description="The LLM of the self-correction step (default: llm).")


class PASAugmentConfig(Strict):
    """How a PAS model's complement is produced and joined to the prompt."""

    template: str | None = Field(None, description="PAS input template file with {prompt} (default: report 4.6 format).")
    rag_template: str | None = Field(None, description="RAG template file with {prompt} and {keywords} (default: bundled).")
    join_template: str | None = Field(None, description="Joining template file with {prompt} and {complement} "
                                      "(default: prompt, blank line, complement).")
    max_tokens: int = Field(64, ge=1, description="Longest complement in tokens.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the PAS model (0: greedy).")
    scope_policy: Literal["trim", "flag"] = Field(
        "trim", description="RAG mode: remove complement sentences that stray outside the search scope, or only flag them."
    )
    abstain: str | None = Field(None, description="A complement equal to this (case and end punctuation aside) means "
                                "'nothing to add': the prompt goes through unchanged. For PAS models trained to abstain.")


class PASTrainConfig(Strict):
    """``novalign pas train``: SFT of a PAS model on (template(prompt) -> complement) pairs (report 4.6)."""

    output_dir: str = Field("runs/pas-model", description="Where checkpoints, logs and the final model go.")
    pas_files: list[str] = Field(default_factory=list, description="PAS JSONL files from `novalign pas build-data`.")
    template: str | None = Field(None, description="PAS input template file (default: report 4.6 format).")
    rag_template: str | None = Field(None, description="RAG template for records with search_keywords (default: bundled).")
    max_length: int = Field(4096, ge=8, description="Sequence length (report: 4,096 tokens).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2))  # report: two epochs


class PASServeConfig(Strict):
    """``novalign pas serve``: an OpenAI-compatible proxy that adds PAS complements before the upstream model."""

    upstream: str = Field("http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible upstream.")
    upstream_api_key: str | None = Field(None, description="Key sent upstream (default: $<upstream_api_key_env>).")
    upstream_api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the upstream key.")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8100, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    timeout_s: float = Field(300.0, gt=0, description="Upstream request timeout.")
    pas_llm: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local", no_cache=True),
                               description="The PAS model (local directory by default).")
    augment: PASAugmentConfig = Field(default_factory=PASAugmentConfig)


class PASCompareConfig(Strict):
    """``novalign pas compare``: an upstream model with vs without PAS, pass rate and GSB (report 5.1)."""

    prompts: str = Field("", description="JSONL of {prompt, checks: [{id, kwargs?}], capability?} (IFEval verifier ids).")
    output: str = Field("runs/pas/compare.jsonl", description="Per-prompt responses and verdicts; summary beside it.")
    max_tokens: int = Field(256, ge=1, description="Reply cap of the upstream model.")
    upstream: LLMConfig = Field(default_factory=LLMConfig, description="The main model (OpenAI-compatible by default).")
    pas_llm: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local", no_cache=True),
                               description="The PAS model.")
    augment: PASAugmentConfig = Field(default_factory=PASAugmentConfig)
    judge: LLMConfig | None = Field(None, description="Optional LLM judge: GSB also from position-swapped pairwise judging.")
    judge_lang: Literal["en", "zh"] = Field("en", description="Language of the judge's pairwise template.")
    judge_attempts: int = Field(3, ge=1, description="Tries per judgment (the first ask plus re-asks).")


# ---------------------------------------------------------------------------------------------- recipe (issue 9)


class WorldConfig(Strict):
    """The seeded demo world (novalign.world): tasks of six capabilities, a pretraining corpus, the splits."""

    seed: int = Field(0, description="Seed of the world: the same seed gives the same files.")
    num_countries: int = Field(40, ge=2, description="Made-up countries in the knowledge base (4 facts each).")
    kqa_train_fraction: float = Field(0.6, gt=0, lt=1, description="Countries SFT asks about; KQA eval asks about the rest.")
    sft_per_capability: int = Field(300, ge=1, description="SFT tasks with gold responses per capability.")
    rl_per_capability: int = Field(40, ge=0, description="Prompts per capability for preference sampling and RL.")
    eval_per_capability: int = Field(40, ge=1, description="Held-out evaluation prompts per capability.")
    corpus_fact_repeats: int = Field(20, ge=1, description="Times each country's facts appear in the corpus (reworded).")
    corpus_worked_examples: int = Field(1000, ge=0, description="Worked Math, Reason and Code examples (each) in the corpus.")
    few_shot: int = Field(2, ge=0, description="Solved examples before each plain-text prompt when evaluating the base.")
    grpo_per_capability: int = Field(0, ge=0, description="Prompts per capability in a separate GRPO pool "
                                     "(grpo_prompts.jsonl, never an eval prompt), so RL sees fresh prompts instead of "
                                     "repeating the RL split; 0: GRPO uses the RL split.")
    pas_prompts: int = Field(300, ge=0, description="Implicit-requirement prompts (with their explicit instruction) "
                             "in PAS's training data.")
    pas_abstain_per_capability: int = Field(40, ge=0, description="SFT prompts per capability in PAS's training data "
                                            "with the abstain complement (nothing to add).")


class RecipeBaseModel(Strict):
    """The base model: an existing directory (real scale), or a tiny one built here and pretrained on the world."""

    path: str | None = Field(None, description="Existing base model directory; then the pretrain stage is skipped.")
    arch: Literal["llama", "qwen2"] = Field("qwen2", description="Architecture of the tiny model built here.")
    vocab_size: int = Field(512, ge=300, description="BPE vocabulary, trained on the world's texts.")
    hidden_size: int = Field(128, ge=8, description="Hidden size.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads.")
    intermediate_size: int = Field(384, ge=8, description="MLP inner size.")
    seed: int = Field(0, description="Seed of the random initialization.")


class PrefsConfig(Strict):
    """Preference data from the SFT model: n samples per prompt, verifier scores, ROUGE-L filter, groups."""

    n: int = Field(4, ge=2, description="Samples per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(96, ge=1, description="Longest sample.")
    rouge_threshold: float = Field(
        0.9, gt=0, le=1, description="A sample whose ROUGE-L F1 with a kept sample of the same prompt reaches this is a "
        "near-duplicate and dropped."
    )
    batch_size: int = Field(64, ge=1, description="Rows per generate call.")
    seed: int = Field(0, description="Sampling seed.")


class RecipeRewardsConfig(Strict):
    verifier: float = Field(1.0, description="Weight of the world's verifiers (partial credit for IF and Role).")
    reward_model: float = Field(0.5, description="Weight of the reward model of the rm stage (0: not used).")


class SpecialistConfig(Strict):
    name: str = Field(..., description="Name of the specialist (its folder under merge/).")
    focus: list[str] = Field(..., description="Capabilities whose SFT data the specialist trains on in full.")
    other_fraction: float = Field(0.1, ge=0, le=1, description="Fraction of every other capability's data mixed in.")


class RecipeMergeConfig(Strict):
    """Capability specialists continued from the SFT model, merged with several methods (report section 2.4)."""

    specialists: list[SpecialistConfig] = Field(
        default_factory=lambda: [SpecialistConfig(name="math", focus=["math", "reason"]),
                                 SpecialistConfig(name="if", focus=["if", "role"])],
        description="The models to merge (at least two).",
    )
    train: SFTConfig = Field(default_factory=SFTConfig, description="SFT settings of each specialist (paths are set by the recipe).")
    methods: list[Literal["linear", "task_arithmetic", "ties", "model_stock"]] = Field(
        ["linear", "task_arithmetic", "model_stock"], description="Merge methods to compare (base: the SFT model)."
    )
    scale: float = Field(1.0, description="lambda of task_arithmetic / ties.")


class RecipeEvalConfig(Strict):
    max_new_tokens: int = Field(96, ge=1, description="Longest greedy answer.")
    batch_size: int = Field(32, ge=1, description="Prompts per generate call.")


class RecipePASConfig(Strict):
    """PAS in the recipe (report section 4.6): a prompt-augmentation model trained on the world's PAS data
    (implicit-requirement prompts -> the explicit instruction; other prompts -> the abstain complement), then
    evaluated in front of the recipe's models, which are not retrained."""

    init: Literal["sft", "base"] = Field("sft", description="Model the PAS model is fine-tuned from.")
    train: PASTrainConfig = Field(default_factory=lambda: PASTrainConfig(max_length=512),
                                  description="Training of the PAS model (paths are set by the recipe).")
    join: str = Field("{prompt} {complement}", description="How the complement joins the prompt ({prompt}, {complement}).")
    abstain: str | None = Field("None.", description="The complement that means 'nothing to add' (the world's PAS "
                                "data teaches it); None: every complement is joined.")
    max_tokens: int = Field(64, ge=1, description="Longest complement in tokens.")
    in_front_of: list[str] = Field(["sft"], description="Models (eval labels: sft, grpo, merge_linear, ...) also "
                                   "evaluated behind PAS, as '<label>+pas'.")


RECIPE_STAGES = ("world", "pretrain", "sft", "pas", "prefs", "rm", "grpo", "merge", "eval", "report")


class RecipeConfig(Strict):
    """``novalign run RECIPE``: the whole pipeline, each stage's output under ``<runs_dir>/<name>/<stage>/``.

    Stage sections are the stages' own configs; the recipe fills in their paths (model, data, output_dir).
    """

    name: str = Field("demo", description="Run name: outputs go to <runs_dir>/<name>/.")
    runs_dir: str = Field("runs", description="Folder of all runs.")
    stages: list[Literal[RECIPE_STAGES]] = Field(list(RECIPE_STAGES), description="Stages to run, in pipeline order.")
    world: WorldConfig = Field(default_factory=WorldConfig)
    base: RecipeBaseModel = Field(default_factory=RecipeBaseModel)
    pretrain: SFTConfig = Field(default_factory=SFTConfig, description="Pretraining on the corpus (data.text_files set by the recipe).")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT on the world's chat data.")
    sft_replay: float = Field(
        0.2, ge=0, le=1, description="Fraction of the corpus documents mixed into SFT as plain text (keeps what "
        "pretraining stored; cf. the PTX term of RL). 0: none."
    )
    pas: RecipePASConfig = Field(default_factory=RecipePASConfig)
    prefs: PrefsConfig = Field(default_factory=PrefsConfig)
    rm: RMConfig = Field(default_factory=RMConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rl_rewards: RecipeRewardsConfig = Field(default_factory=RecipeRewardsConfig)
    rl_prompt_filter: Literal["all", "mixed"] = Field(
        "all", description="GRPO prompts: 'all' RL prompts, or 'mixed': only those whose SFT samples in the prefs "
        "stage scored differently (some better than others) -- the groups that carry a GRPO signal."
    )
    rl_capabilities: list[str] | None = Field(
        None, description="Capabilities GRPO trains on (None: all). RL learns where the SFT model's samples are "
        "sometimes right (the prefs stage's sample pass rates show where)."
    )
    merge: RecipeMergeConfig = Field(default_factory=RecipeMergeConfig)
    eval: RecipeEvalConfig = Field(default_factory=RecipeEvalConfig)
    llm: LLMConfig | None = Field(
        None, description="OpenAI-compatible endpoint for synthesis and judging. Not read by the current stages: "
        "it is where PAS and LLM-judge stages will take their client from."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (None: torch's default). 1 is much faster when other processes "
        "share the cores. Not part of any stage key."
    )


# ---------------------------------------------------------------------------------------------- loading


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a YAML tree; a numeric key indexes a list that already has that entry
    (``suites.0.options.n=4``)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: '{where}' is not an entry of a list of {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:depth])}' is not a section")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=2", "data.train_files=[a.jsonl]"]`` -> typed pairs (values parsed as YAML)."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at ``loc`` in ``model`` (for did-you-mean suggestions); a list index or a mapping key in
    ``loc`` (``merge.specialists.0.focus``) steps into the entry's section."""
    current: Any = model
    entry = False  # the next part of loc is a list index or a mapping key
    for part in loc:
        if entry:
            entry = False
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        nested = _nested_models(field.annotation)
        if nested is None:
            return []
        kind, current = nested
        entry = kind in ("list", "dict")
    if isinstance(current, type) and issubclass(current, BaseModel) and not entry:
        return list(current.model_fields)
    return []


def format_validation_error(err: ValidationError, schema: type[BaseModel], source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            valid = _field_names(schema, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f" (did you mean '{'.'.join(loc[:-1] + (close[0],))}'?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read ``path`` (YAML), apply ``key.path=value`` overrides, validate against ``schema``."""
    tree: dict = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded or {}
    for key, value in parse_overrides(overrides or []):
        _set_path(tree, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema, source)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _nested_models(ann: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field holds a nested config: ("one", M) for ``M`` or ``M | None``; ("list", M) for ``list[M]``;
    ("dict", M) for ``dict[str, M]``; None for a plain value."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "one", ann
    args = getattr(ann, "__args__", ())
    origin = getattr(ann, "__origin__", None)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if not models:
        return None
    if origin is list:
        return "list", models[0]
    if origin is dict:
        return "dict", models[0]
    return "one", models[0]  # a union such as ``M | None``


def describe(schema: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf option -- used by ``novalign <stage> --help-config``.

    ``defaults`` is the section's default instance, so that a stage overriding a shared section's defaults
    (``train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))``) shows its own values.
    Nested sections are expanded: ``a.b`` for a section (or an optional one), ``a[].b`` for each entry of a
    list of sections, ``a.<name>.b`` for a mapping of named sections.
    """
    rows = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}{name}"
        if defaults is not None:
            default = getattr(defaults, name)
        elif field.is_required():
            default = "(required)"
        else:
            default = field.default_factory() if field.default_factory else field.default
        nested = _nested_models(field.annotation)
        if nested is None:
            rows.append((key, default if default == "(required)" else repr(default), field.description or ""))
            continue
        kind, model = nested
        if field.description:
            rows.append((key, "(section)" if kind == "one" else f"({kind} of sections)", field.description))
        if kind == "one":
            rows.extend(describe(model, key + ".", default if isinstance(default, BaseModel) else None))
        else:
            rows.extend(describe(model, key + ("[]." if kind == "list" else ".<name>.")))
    return rows
