"""``novalign data run pipeline.yaml``: the data flywheel's record pipelines (report section 3, Figure 4).

A pipeline is sources (record files) and a chain of steps; each step names its ``type`` (a step registered in
``novalign.flywheel.step.STEP_TYPES``; importing ``novalign.flywheel.steps`` registers the built-in ones), its
``config`` (validated against that type's config class, with did-you-mean errors), and its ``input`` (a source
or an earlier step; by default the step before it). The config classes of the first steps (dedup, filters,
llm_generate / llm_judge, sampling, preference groups) are below; those of the later ones live beside their
steps (``novalign/flywheel/steps/*.py``: instruction-following data, preference data, prompt labels,
selection, ...). The list of step types is not kept here by hand: ``novalign data run --help-config`` prints
every registered type with its config class, a one-line summary and its options, from the registry
(:func:`novalign.flywheel.steps.describe_step_types`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.config.llm import LLMConfig


class SourceConfig(Strict):
    """Records read from a file: JSON-lines, Parquet, or a folder written by ``datasets.save_to_disk``."""

    path: str = Field(..., description="A .jsonl/.json/.parquet file, or a `datasets` save_to_disk folder.")
    id_field: str | None = Field(None, description="Record field holding a unique id (default: `<source>-<line>`).")
    limit: int | None = Field(None, ge=1, description="Read at most this many records (None: all).")


class StepSpec(Strict):
    """One step of the pipeline."""

    name: str = Field(..., description="The step's name: its output folder, its row in the report.")
    type: str = Field(..., description="A registered step type (`novalign data run --help-config` lists them "
                      "all, from the step registry).")
    input: str | None = Field(None, description="A source or an earlier step (default: the step before, or the "
                              "only source).")
    config: dict[str, Any] = Field(default_factory=dict, description="The step type's options (see the README).")
    skip_invalid: bool | None = Field(None, description="Skip records without the step's input fields (counted "
                                      "by reason) instead of stopping (default: the pipeline's skip_invalid).")


class PipelineConfig(Strict):
    """A record pipeline: sources, steps, where the run's folders go, and which executor runs it."""

    run_dir: str = Field("runs/flywheel", description="Step folders (steps/<name>-<hash>/), report.md, funnel.png.")
    executor: Literal["local", "ray"] = Field("local", description="'local': threads for LLM steps, processes for "
                                              "CPU steps; 'ray': Ray Data (the `ray` extra of novalign).")
    workers: int = Field(2, ge=1, description="Processes (local) or Ray tasks for CPU-bound work.")
    ray_address: str | None = Field(None, description="Ray cluster address (None: a local Ray with `workers` CPUs).")
    batch_size: int = Field(256, ge=1, description="Records per executor task (CPU steps; Ray batches).")
    llm: LLMConfig | None = Field(None, description="Default LLM of llm_generate / llm_judge steps (their `llm` "
                                  "keys override it); the request cache defaults to <run_dir>/llm-cache.sqlite.")
    sources: dict[str, SourceConfig] = Field(..., description="Named record sources.")
    steps: list[StepSpec] = Field(..., min_length=1, description="The steps, in order.")
    skip_invalid: bool = Field(False, description="Default of every step's skip_invalid.")
    progress: bool = Field(True, description="A progress bar per step.")
    retry_failed: bool = Field(False, description="Ask again for the records whose LLM call failed (recorded "
                               "failures), in complete steps too; steps after a changed one rerun (from the cache).")


# ------------------------------------------------------------------------------------------- step configs


class ExactDedupConfig(Strict):
    """Drop records whose normalized text was seen before (first one kept)."""

    field: str = Field("prompt", description="Text field (a string, or a chat `messages` list: its contents).")
    lowercase: bool = Field(True, description="Compare case-insensitively.")
    collapse_whitespace: bool = Field(True, description="Treat any whitespace run as one space, trim the ends.")
    strip_punctuation: bool = Field(False, description="Ignore Unicode punctuation.")


class MinHashDedupConfig(Strict):
    """Near-duplicate removal with MinHash LSH (Broder 1997; datasketch's MinHashLSH)."""

    field: str = Field("prompt", description="Text field (string or chat messages).")
    threshold: float = Field(0.8, gt=0, lt=1, description="Estimated Jaccard similarity at which two are duplicates.")
    ngram: int = Field(5, ge=1, description="Shingle size, in characters (`unit: char`) or words (`unit: word`).")
    unit: Literal["char", "word"] = Field("char", description="Shingles of characters (any script) or of words.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: better estimate, slower).")
    seed: int = Field(1, description="MinHash seed.")


class FilterConfig(Strict):
    """Keep records whose text passes length, script and format rules; each drop names its rule."""

    field: str = Field("prompt", description="Text field (string or chat messages).")
    min_chars: int | None = Field(None, ge=0, description="Drop texts shorter than this (characters).")
    max_chars: int | None = Field(None, ge=1, description="Drop texts longer than this.")
    min_words: int | None = Field(None, ge=0, description="Drop texts with fewer whitespace-separated words.")
    max_words: int | None = Field(None, ge=1, description="Drop texts with more words.")
    scripts: list[Literal["latin", "han", "cyrillic", "arabic", "hangul", "kana", "devanagari", "greek"]] | None = Field(
        None, description="Keep only texts whose letters are mostly in these scripts.")
    min_script_fraction: float = Field(0.5, ge=0, le=1, description="Share of letters that must be in `scripts`.")
    require_json: bool = Field(False, description="Drop texts that are not one JSON value.")
    require_regex: str | None = Field(None, description="Drop texts this regular expression does not search-match.")
    forbid_regex: str | None = Field(None, description="Drop texts this regular expression search-matches.")


class LanguageConfig(Strict):
    """Language identification (langdetect, a port of Google's language-detection) and an optional filter."""

    field: str = Field("prompt", description="Text field (string or chat messages).")
    output_field: str = Field("lang", description="Field the detected language code is written to.")
    keep: list[str] | None = Field(None, description="Keep only these codes (e.g. [en, zh-cn]); None: keep all.")
    min_chars: int = Field(1, ge=1, description="Shorter texts get language 'unknown'.")
    seed: int = Field(0, description="langdetect's seed (its sampling is random; fixed for reproducible runs).")


class ModelQuotaConfig(Strict):
    """One generating model of llm_generate."""

    name: str = Field(..., description="Label written to each sample's `model` field.")
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm (e.g. model).")
    n: int | None = Field(None, ge=1, description="Samples per prompt from this model (default: the step's n).")
    max_prompts: int | None = Field(None, ge=0, description="Quota: this model answers at most this many prompts "
                                    "(the first ones, in input order). None: all.")


class LLMGenerateConfig(Strict):
    """Responses from one or several models, n samples each, one output record per sample."""

    prompt_field: str = Field("prompt", description="A string (one user turn) or chat `messages`.")
    system: str | None = Field(None, description="A system message put before string prompts.")
    tools_field: str | None = Field("tools", description="A record field holding OpenAI tool definitions, sent "
                                    "with its prompt (checked; a bad list is an error naming the line). null: none.")
    output_field: str = Field("response", description="Field the sampled text is written to.")
    models: list[ModelQuotaConfig] = Field(..., min_length=1, description="The generating models and quotas.")
    n: int = Field(1, ge=1, description="Samples per prompt (per model).")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, description="Sampling seed sent to servers that honour one.")
    reuse_max_tokens: list[int] = Field(default_factory=list, description="Explicit opt-in: reuse replies cached "
                                        "under these earlier max_tokens values when they fit the current limit "
                                        "(finished with 'stop', not cut by the limit, no longer than max_tokens).")
    drop_failed: bool = Field(True, description="A prompt whose request failed is dropped (counted as 'llm failed') "
                              "with its error in drops.jsonl; false: kept with `<output_field>_error`.")


class LLMJudgeConfig(Strict):
    """A judge's verdict per record through novalign.eval.judge: template, strict parser, re-asks."""

    template: str = Field("rl_rating", description="A judge template name (novalign/assets/eval/templates, or "
                          "template_dir) whose {placeholders} are record fields.")
    template_dir: str | None = Field(None, description="Folder of your own <name>.<lang>.txt templates.")
    lang: Literal["en", "zh"] = Field("en")
    parser: Literal["rating", "brackets", "last_number", "pairwise"] = Field(
        "rating", description="rating: exactly one [[r]] in low..high; brackets: the last [[x]]; last_number; "
        "pairwise: [[A]]/[[B]]/[[C]].")
    low: float = Field(1, description="Lowest valid score (rating / brackets / last_number).")
    high: float = Field(10, description="Highest valid score.")
    attempts: int = Field(3, ge=1, description="Tries per judgment: the first ask plus re-asks quoting the error.")
    max_tokens: int | None = Field(512, ge=1)
    reuse_max_tokens: list[int] = Field(default_factory=list, description="Explicit opt-in, as in llm_generate: "
                                        "first-round replies cached under these max_tokens that fit are reused.")
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm.")
    output_field: str = Field("judgment", description="Field the parsed verdict is written to (null when failed).")
    drop_failed: bool = Field(False, description="Drop records whose judgment failed (counted) instead of keeping "
                              "them with `<output_field>_error` and every raw reply.")
    min_score: float | None = Field(None, description="Drop records scored below this (counted as 'below min_score').")


class SampleConfig(Strict):
    """A seeded random sample of the records (order kept)."""

    n: int | None = Field(None, ge=0, description="How many to keep.")
    fraction: float | None = Field(None, ge=0, le=1, description="Or: the share to keep.")
    seed: int = Field(0)


class BalanceConfig(Strict):
    """Stratified sample: by a field, to target proportions (as many records as the scarcest stratum allows)."""

    field: str = Field(..., description="The stratum field, e.g. capability.")
    targets: dict[str, float] | None = Field(None, description="Target share per value (normalized); None: equal "
                                             "shares over the values present. Values not named are dropped.")
    total: int | None = Field(None, ge=1, description="Records wanted (default: the most the targets allow).")
    seed: int = Field(0)


class PrefGroupsConfig(Strict):
    """Preference groups from scored samples (report section 3.3, via novalign.flywheel.prefs.build_groups):
    the samples of one prompt, near-duplicates (ROUGE-L) and empty ones out, kept if their scores differ."""

    prompt_field: str = Field("prompt", description="The prompt (string or chat messages) the samples answer; "
                              "samples with the same prompt form one group.")
    response_field: str = Field("response", description="The sampled text.")
    score_field: str = Field("judgment", description="The sample's score (e.g. llm_judge's output).")
    low: float = Field(1, description="Score that maps to 0 (the judge's scale); the rm group format wants [0, 1].")
    high: float = Field(10, description="Score that maps to 1.")
    rouge_threshold: float = Field(0.9, gt=0, le=1, description="ROUGE-L F1 at which a response is a near-duplicate.")
    group_key: str = Field("capability", description="Prompt field copied to the group (when present).")
