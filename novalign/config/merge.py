"""``novalign merge`` (issue 6)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from novalign.config.base import Strict


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
