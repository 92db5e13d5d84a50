"""``novalign eval`` (issue 7)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from novalign.config.base import Strict
from novalign.config.llm import LLMConfig, LocalModelConfig

SUITE_TYPES: dict[str, str] = {
    "ifeval": "novalign.eval.suites:run_ifeval",
    "math": "novalign.eval.suites:run_math",
    "code": "novalign.eval.suites:run_code",
    "cfbench": "novalign.eval.checklist:run_cfbench",
    "sysbench": "novalign.eval.checklist:run_sysbench",
    "fbbench": "novalign.eval.checklist:run_fbbench",
    "ux": "novalign.eval.graded:run_ux",
    "mtbench": "novalign.eval.graded:run_mtbench",
    "pairwise": "novalign.eval.graded:run_pairwise",
    "humaneval": "novalign.eval.humaneval:run_humaneval",
    "bbh": "novalign.eval.bbh:run_bbh",
    "gpqa": "novalign.eval.gpqa:run_gpqa",
    "arenahard": "novalign.eval.arenahard:run_arenahard",
    "mtbench_pairwise": "novalign.eval.mtbench_pairwise:run_mtbench_pairwise",
    "alpacaeval": "novalign.eval.alpacaeval:run_alpacaeval",
    "followbench": "novalign.eval.followbench:run_followbench",
    "hendrycks_math": "novalign.eval.hendrycks_math:run_hendrycks_math",
    "mixeval": "novalign.eval.mixeval:run_mixeval",
    "world": "novalign.world.suite:run_world",
}
"""The suite registry: a config's ``type`` -> ``"module:function"`` (:func:`novalign.eval.suites.resolve_suite`
imports it on first use). Plain names here, so that a config is checked without importing the suites above it."""


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
    type: str = Field(..., description="ifeval, math, code, cfbench, sysbench, fbbench, ux, mtbench, pairwise, world, "
                      "humaneval, bbh, gpqa, arenahard, mtbench_pairwise, alpacaeval, followbench, hendrycks_math, "
                      "mixeval, or 'package.module:function' for a suite of your own.")
    data: str | None = Field(None, description="The suite's input file (formats: README, 'Evaluation: novalign eval').")
    options: dict[str, Any] = Field(default_factory=dict, description="The suite's own options (see its docs).")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in SUITE_TYPES and ":" not in value:
            raise ValueError(f"unknown suite type {value!r}; known: {', '.join(SUITE_TYPES)} (or 'module:function')")
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
