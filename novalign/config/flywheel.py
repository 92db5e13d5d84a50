"""The data flywheel's commands (``novalign data ...``, report sections 3-4)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from novalign.config.llm import LLMConfig
from novalign.config.recipe import PrefsConfig
from novalign.config.rl import RewardComponentConfig, inherit_judge_llm


class PrefsDataConfig(PrefsConfig):
    """``novalign data prefs``: preference groups from prompts -- n samples per prompt from a model (or the
    responses already in the records), scored by a reward mix, near-duplicates (ROUGE-L) and groups without a
    score difference removed (report section 3.3)."""

    prompt_files: list[str] = Field(
        ..., description="Prompt JSONL/Parquet: {messages} or {prompt}, plus the fields the rewards read (e.g. "
        "`answer`); a record with `responses` (a list of strings) is scored as it is, not sampled."
    )
    model: str | None = Field(None, description="Local model directory that samples the responses (chat template).")
    rewards: list[RewardComponentConfig] = Field(
        [{"type": "exact_answer"}], validate_default=True,
        description="The scorer, a weighted reward mix as in `novalign grpo` (exact_answer, ifeval, reward_model, "
        "llm_judge); scores should lie in [0, 1] for the reward model's MSE term."
    )
    llm: LLMConfig | None = Field(None, description="The judge of llm_judge reward components that name no llm.")
    group_key: str = Field("capability", description="Record field the sample pass rates are reported by.")
    device: str = Field("cpu", description="Device of the sampling model and of reward-model scoring.")
    output_dir: str = Field("runs/prefs", description="Writes prefs.jsonl, prompt_scores.jsonl and stats.json here.")

    @model_validator(mode="before")
    @classmethod
    def _judges_use_llm(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rewards" in data:
            data = dict(data, rewards=inherit_judge_llm(data["rewards"], data.get("llm")))
        return data
