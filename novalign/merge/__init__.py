"""Model merging (report section 2.4): Linear, Task Arithmetic, TIES and Model Stock, streamed tensor by tensor.

    from novalign.merge import MergeConfig, merge_models
    merge_models(MergeConfig(method="model_stock", base_model="runs/base",
                             models=[{"path": "runs/sft-math"}, {"path": "runs/sft-code"}],
                             output_dir="runs/merged"))

The maths is in :mod:`novalign.merge.methods` (pure functions over tensors), the streaming, validation and
atomic output in :mod:`novalign.merge.merge`, and sharded safetensors reading/writing in
:mod:`novalign.merge.shards`.
"""

from novalign.config import MergeConfig, MergeModelConfig
from novalign.merge.merge import MergeError, MergePlan, MergeResult, build_method, merge_models, plan_merge
from novalign.merge.methods import (
    METHODS,
    Linear,
    MergeMethod,
    ModelStock,
    TaskArithmetic,
    Ties,
    linear,
    model_stock,
    task_arithmetic,
    ties,
)

__all__ = [
    "MergeConfig",
    "MergeModelConfig",
    "MergeError",
    "MergePlan",
    "MergeResult",
    "build_method",
    "plan_merge",
    "merge_models",
    "METHODS",
    "MergeMethod",
    "Linear",
    "TaskArithmetic",
    "Ties",
    "ModelStock",
    "linear",
    "task_arithmetic",
    "ties",
    "model_stock",
]
