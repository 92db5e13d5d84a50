"""``novalign rm``, ``dpo`` and ``kto`` (issue 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.config.train import ModelConfig, OptimConfig, PackingConfig, TrainConfig


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
