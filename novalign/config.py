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


class PackingConfig(Strict):
    enabled: bool = Field(True, description="Pack samples into rows (otherwise dynamic padding).")
    row_len: int | None = Field(None, ge=8, description="Token budget of a packed row (default: data.max_length).")
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


# ---------------------------------------------------------------------------------------------- loading


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key, {}), dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = node.setdefault(key, {})
    node[keys[-1]] = value


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
    """Valid keys at ``loc`` in ``model`` (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = inner[0] if inner else ann
    if isinstance(current, type) and issubclass(current, BaseModel):
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


def describe(schema: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf option -- used by ``novalign <stage> --help-config``."""
    rows = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        subs = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if subs and field.default_factory is not None:
            rows.extend(describe(subs[0], key + "."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            rows.append((key, repr(default), field.description or ""))
    return rows
