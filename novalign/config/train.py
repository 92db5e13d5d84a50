"""Model, data, packing, optimizer and loop settings, and ``novalign sft`` (issues 1-2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from novalign.config.base import Strict


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
    resume_changed: bool = Field(
        False, description="Resume even when the config or the data files differ from those that started the run "
        "(by default that is an error naming what changed)."
    )
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
