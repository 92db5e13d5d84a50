"""``novalign pas`` (issue 8)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.config.llm import LLMConfig
from novalign.config.train import ModelConfig, OptimConfig, PackingConfig, TrainConfig


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
    host: str = Field("127.0.0.1", description="Interface to bind (off loopback, api_key is required).")
    api_key: str | None = Field(None, description="Key clients must send (default: $NOVALIGN_PAS_API_KEY); "
                                "without one the upstream key is never used.")
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
