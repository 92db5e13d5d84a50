"""Typed configs: YAML files validated by pydantic models, with ``--set key.path=value`` overrides.

Every field has a default and a description (the description is the ``--help`` text and the docs). Unknown
or mistyped keys are errors that name the key and suggest the closest valid one.

One module per stage family -- ``train`` (model, data, loop, SFT), ``preference`` (RM, DPO, KTO), ``rl`` (GRPO,
PPO), ``merge``, ``llm`` (LLM access, serve), ``eval``, ``pas``, ``recipe`` -- on ``base`` (:class:`Strict`), with
loading, overrides and ``describe`` in ``loading``. Everything is importable from ``novalign.config``.
"""

from novalign.config.base import (  # noqa: F401
    ConfigError,
    Strict,
)
from novalign.config.eval import (  # noqa: F401
    EvalConfig,
    EvalJudgeConfig,
    EvalModelConfig,
    EvalSuiteConfig,
)
from novalign.config.llm import (  # noqa: F401
    LLMConfig,
    LocalModelConfig,
    PriceConfig,
    ServeConfig,
)
from novalign.config.loading import (  # noqa: F401
    describe,
    dump_config,
    format_validation_error,
    load_config,
    parse_overrides,
)
from novalign.config.merge import (  # noqa: F401
    MergeConfig,
    MergeModelConfig,
)
from novalign.config.pas import (  # noqa: F401
    PASAugmentConfig,
    PASCompareConfig,
    PASDataConfig,
    PASServeConfig,
    PASTrainConfig,
)
from novalign.config.preference import (  # noqa: F401
    DPOConfig,
    DPOLossConfig,
    KTOConfig,
    KTOLossConfig,
    PreferenceDataConfig,
    RMConfig,
    RMLossConfig,
    ScoreConfig,
    ScoreDimension,
)
from novalign.config.flywheel import PrefsDataConfig  # noqa: F401
from novalign.config.recipe import (  # noqa: F401
    RecipeDataConfig,
    PrefsConfig,
    RecipeBaseModel,
    RecipeConfig,
    RecipeEvalConfig,
    RecipeMergeConfig,
    RecipePASConfig,
    RecipeRewardsConfig,
    SpecialistConfig,
    WorldConfig,
)
from novalign.config.rl import (  # noqa: F401
    GRPOConfig,
    GRPOLossConfig,
    GRPORolloutConfig,
    PolicyLossConfig,
    PPOConfig,
    PPOLossConfig,
    PPORolloutConfig,
    PTXConfig,
    RewardComponentConfig,
    RLStageConfig,
    RLTrainConfig,
)
from novalign.config.train import (  # noqa: F401
    DataConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PackingConfig,
    SFTConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "Strict",
    "LoraConfig",
    "ModelConfig",
    "DataConfig",
    "PackingConfig",
    "OptimConfig",
    "TrainConfig",
    "SFTConfig",
    "PreferenceDataConfig",
    "ScoreDimension",
    "ScoreConfig",
    "RMLossConfig",
    "RMConfig",
    "DPOLossConfig",
    "DPOConfig",
    "KTOLossConfig",
    "KTOConfig",
    "RewardComponentConfig",
    "GRPORolloutConfig",
    "PolicyLossConfig",
    "GRPOLossConfig",
    "PTXConfig",
    "RLTrainConfig",
    "RLStageConfig",
    "GRPOConfig",
    "PPORolloutConfig",
    "PPOLossConfig",
    "PPOConfig",
    "MergeModelConfig",
    "MergeConfig",
    "LocalModelConfig",
    "PriceConfig",
    "LLMConfig",
    "ServeConfig",
    "EvalModelConfig",
    "EvalJudgeConfig",
    "EvalSuiteConfig",
    "EvalConfig",
    "PASDataConfig",
    "PASAugmentConfig",
    "PASTrainConfig",
    "PASServeConfig",
    "PASCompareConfig",
    "WorldConfig",
    "RecipeBaseModel",
    "PrefsConfig",
    "RecipeRewardsConfig",
    "SpecialistConfig",
    "RecipeMergeConfig",
    "RecipeEvalConfig",
    "RecipePASConfig",
    "RecipeConfig",
    "RecipeDataConfig",
    "PrefsDataConfig",
    "parse_overrides",
    "format_validation_error",
    "load_config",
    "dump_config",
    "describe",
]
