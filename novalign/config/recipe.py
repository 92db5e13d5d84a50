"""``novalign run`` (issue 9): the recipe and its own sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from novalign.config.base import Strict
from novalign.config.eval import EvalSuiteConfig
from novalign.config.llm import LLMConfig
from novalign.config.pas import PASTrainConfig
from novalign.config.preference import RMConfig
from novalign.config.rl import GRPOConfig, inherit_judge_llm
from novalign.config.train import SFTConfig


class WorldConfig(Strict):
    """The seeded demo world (novalign.world): tasks of six capabilities, a pretraining corpus, the splits."""

    seed: int = Field(0, description="Seed of the world: the same seed gives the same files.")
    num_countries: int = Field(40, ge=2, description="Made-up countries in the knowledge base (4 facts each).")
    kqa_train_fraction: float = Field(0.6, gt=0, lt=1, description="Countries SFT asks about; KQA eval asks about the rest.")
    sft_per_capability: int = Field(300, ge=1, description="SFT tasks with gold responses per capability.")
    rl_per_capability: int = Field(40, ge=0, description="Prompts per capability for preference sampling and RL.")
    eval_per_capability: int = Field(40, ge=1, description="Held-out evaluation prompts per capability.")
    corpus_fact_repeats: int = Field(20, ge=1, description="Times each country's facts appear in the corpus (reworded).")
    corpus_worked_examples: int = Field(1000, ge=0, description="Worked Math, Reason and Code examples (each) in the corpus.")
    few_shot: int = Field(2, ge=0, description="Solved examples before each plain-text prompt when evaluating the base.")
    grpo_per_capability: int = Field(0, ge=0, description="Prompts per capability in a separate GRPO pool "
                                     "(grpo_prompts.jsonl, never an eval prompt), so RL sees fresh prompts instead of "
                                     "repeating the RL split; 0: GRPO uses the RL split.")
    pas_prompts: int = Field(300, ge=0, description="Implicit-requirement prompts (with their explicit instruction) "
                             "in PAS's training data.")
    pas_abstain_per_capability: int = Field(40, ge=0, description="SFT prompts per capability in PAS's training data "
                                            "with the abstain complement (nothing to add).")


class RecipeBaseModel(Strict):
    """The base model: an existing directory (real scale), or a tiny one built here and pretrained on the world."""

    path: str | None = Field(None, description="Existing base model directory; then the pretrain stage is skipped.")
    arch: Literal["llama", "qwen2"] = Field("qwen2", description="Architecture of the tiny model built here.")
    vocab_size: int = Field(512, ge=300, description="BPE vocabulary, trained on the world's texts.")
    hidden_size: int = Field(128, ge=8, description="Hidden size.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads.")
    intermediate_size: int = Field(384, ge=8, description="MLP inner size.")
    seed: int = Field(0, description="Seed of the random initialization.")


class PrefsConfig(Strict):
    """Preference data from the SFT model: n samples per prompt, verifier scores, ROUGE-L filter, groups."""

    n: int = Field(4, ge=2, description="Samples per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(96, ge=1, description="Longest sample.")
    rouge_threshold: float = Field(
        0.9, gt=0, le=1, description="A sample whose ROUGE-L F1 with a kept sample of the same prompt reaches this is a "
        "near-duplicate and dropped."
    )
    batch_size: int = Field(64, ge=1, description="Rows per generate call.")
    seed: int = Field(0, description="Sampling seed.")


class PrefsModelConfig(Strict):
    """One responding model of the recipe's preference chain (the ``respond`` step's models and quotas)."""

    model: Literal["sft", "base"] = Field(..., description="The recipe's SFT model, or its base model.")
    n: int | None = Field(None, ge=1, description="Samples per prompt from this model (default: prefs.n).")
    max_prompts: int | None = Field(None, ge=0, description="Quota: it answers at most this many prompts (the "
                                    "prompts are interleaved by capability first, so a quota spreads over all).")


class RecipePrefsConfig(PrefsConfig):
    """The prefs stage. On the world's prompts: the preference-data chain (``respond`` -> ``autorate`` ->
    ``response_rouge`` -> ``prefilter`` -> ``drop_rules`` -> ``rm_groups``, report sections 3.2-3.3), the
    world's checkers standing in for the golden-answer AutoRator. On ``data.prompt_files``: ``novalign data
    prefs`` scored by ``grpo.rewards``."""

    chain: bool = Field(True, description="World prompts through the chain; false: the single `novalign data "
                        "prefs` step (SFT samples, verifier scores, ROUGE-L, groups with a score difference).")
    models: list[PrefsModelConfig] = Field(default_factory=lambda: [PrefsModelConfig(model="sft")], min_length=1,
                                           description="The responding models of the chain, with quotas.")
    top_p: float = Field(0.99, gt=0, le=1, description="Chain sampling top_p (report: 0.99).")
    top_k: int | None = Field(50, ge=0, description="Chain sampling top_k (report: 50).")
    keep: int = Field(3, ge=1, description="prefilter: responses kept per group (best, middle, worst).")
    high: float | None = Field(0.8, description="drop_rules: a group whose scores are all >= this is dropped.")
    margin: float | None = Field(0.1, ge=0, description="drop_rules: a group with max - min <= this is dropped.")
    low: float = Field(0.5, description="drop_rules: a group whose scores are all below this is flagged all_low.")


class RecipeRewardsConfig(Strict):
    verifier: float = Field(1.0, description="Weight of the world's verifiers (partial credit for IF and Role).")
    reward_model: float = Field(0.5, description="Weight of the reward model of the rm stage (0: not used).")


class SpecialistConfig(Strict):
    name: str = Field(..., description="Name of the specialist (its folder under merge/).")
    focus: list[str] = Field(..., description="Capabilities whose SFT data the specialist trains on in full.")
    other_fraction: float = Field(0.1, ge=0, le=1, description="Fraction of every other capability's data mixed in.")


class RecipeMergeConfig(Strict):
    """Capability specialists continued from the SFT model, merged with several methods (report section 2.4)."""

    specialists: list[SpecialistConfig] = Field(
        default_factory=lambda: [SpecialistConfig(name="math", focus=["math", "reason"]),
                                 SpecialistConfig(name="if", focus=["if", "role"])],
        description="The models to merge (at least two).",
    )
    train: SFTConfig = Field(default_factory=SFTConfig, description="SFT settings of each specialist (paths are set by the recipe).")
    methods: list[Literal["linear", "task_arithmetic", "ties", "model_stock"]] = Field(
        ["linear", "task_arithmetic", "model_stock"], description="Merge methods to compare (base: the SFT model)."
    )
    scale: float = Field(1.0, description="lambda of task_arithmetic / ties.")


class RecipeEvalConfig(Strict):
    max_new_tokens: int = Field(96, ge=1, description="Longest greedy answer.")
    batch_size: int = Field(32, ge=1, description="Prompts per generate call.")


class RecipePASConfig(Strict):
    """PAS in the recipe (report section 4.6): a prompt-augmentation model trained on the world's PAS data
    (implicit-requirement prompts -> the explicit instruction; other prompts -> the abstain complement), then
    evaluated in front of the recipe's models, which are not retrained."""

    init: Literal["sft", "base"] = Field("sft", description="Model the PAS model is fine-tuned from.")
    train: PASTrainConfig = Field(default_factory=lambda: PASTrainConfig(max_length=512),
                                  description="Training of the PAS model (paths are set by the recipe).")
    join: str = Field("{prompt} {complement}", description="How the complement joins the prompt ({prompt}, {complement}).")
    abstain: str | None = Field("None.", description="The complement that means 'nothing to add' (the world's PAS "
                                "data teaches it); None: every complement is joined.")
    max_tokens: int = Field(64, ge=1, description="Longest complement in tokens.")
    in_front_of: list[str] = Field(["sft"], description="Models (eval labels: sft, grpo, merge_linear, ...) also "
                                   "evaluated behind PAS, as '<label>+pas'.")


class RecipeDataConfig(Strict):
    """Where the recipe's data comes from. A field left unset reads the world stage's file; a recipe on its own
    data sets the fields its stages need (and leaves `world` out of `stages`)."""

    text_files: list[str] | None = Field(
        None, description="pretrain: plain-text JSONL ({text}) the base is pretrained on (and its tokenizer trained "
        "on). Unset: the world's corpus."
    )
    sft_files: list[str] | None = Field(
        None, description="sft (and merge, ptx): chat JSONL/Parquet in any format `novalign sft` reads (OpenAI "
        "messages, ShareGPT, prompt/response). merge reads each record's `capability` field to build specialists. "
        "Unset: the world's SFT tasks."
    )
    pas_files: list[str] | None = Field(
        None, description="pas: PAS training pairs ({prompt, complement}, as `novalign pas train` reads). Unset: the "
        "world's PAS data."
    )
    prompt_files: list[str] | None = Field(
        None, description="prefs: prompts ({messages} or {prompt}, plus the fields the rewards read, e.g. `answer`) "
        "sampled from the SFT model and scored by the `grpo.rewards` mix. Unset: the world's RL prompts, scored by "
        "the world's checkers."
    )
    preference_files: list[str] | None = Field(
        None, description="rm: preference data in any format `novalign rm` reads (pairs, rankings, scored groups); "
        "then the prefs stage is not needed. Unset: the prefs stage's groups."
    )
    rl_prompt_files: list[str] | None = Field(
        None, description="grpo: prompt JSONL ({messages} or {prompt}, plus reward fields), rewarded by the "
        "`grpo.rewards` mix (+ the reward model). Unset: the world's GRPO pool (or RL split), rewarded by the "
        "world's checkers."
    )
    eval_suites: list[EvalSuiteConfig] | None = Field(
        None, description="eval: `novalign eval` suites ({type, data, options}) run on every model of the recipe; "
        "judged suites use the recipe's `llm` as the judge. Unset: the world's held-out prompts."
    )


class RecipeConfig(Strict):
    """``novalign run RECIPE``: the whole pipeline, each stage's output under ``<runs_dir>/<name>/<stage>/``.

    Stage sections are the stages' own configs; the recipe fills in their paths (model, data, output_dir).
    """

    name: str = Field("demo", description="Run name: outputs go to <runs_dir>/<name>/.")
    runs_dir: str = Field("runs", description="Folder of all runs.")
    stages: list[str] | None = Field(
        None, description="Stages to run (None: every stage). They run in pipeline order whatever the order here; "
        "`novalign run --help-config` lists them under `novalign.recipe.stages.STAGES`."
    )
    world: WorldConfig = Field(default_factory=WorldConfig)
    base: RecipeBaseModel = Field(default_factory=RecipeBaseModel)
    pretrain: SFTConfig = Field(default_factory=SFTConfig, description="Pretraining on the corpus (data.text_files set by the recipe).")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT on the world's chat data.")
    sft_replay: float = Field(
        0.2, ge=0, le=1, description="Fraction of the corpus documents mixed into SFT as plain text (keeps what "
        "pretraining stored; cf. the PTX term of RL). 0: none."
    )
    pas: RecipePASConfig = Field(default_factory=RecipePASConfig)
    prefs: RecipePrefsConfig = Field(default_factory=RecipePrefsConfig)
    rm: RMConfig = Field(default_factory=RMConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rl_rewards: RecipeRewardsConfig = Field(default_factory=RecipeRewardsConfig)
    rl_prompt_filter: Literal["all", "mixed"] = Field(
        "all", description="GRPO prompts: 'all' RL prompts, or 'mixed': only those whose SFT samples in the prefs "
        "stage scored differently (some better than others) -- the groups that carry a GRPO signal."
    )
    rl_capabilities: list[str] | None = Field(
        None, description="Capabilities GRPO trains on (None: all). RL learns where the SFT model's samples are "
        "sometimes right (the prefs stage's sample pass rates show where)."
    )
    data: RecipeDataConfig = Field(default_factory=RecipeDataConfig, description="The data sources (unset: the world's).")
    merge: RecipeMergeConfig = Field(default_factory=RecipeMergeConfig)
    eval: RecipeEvalConfig = Field(default_factory=RecipeEvalConfig)
    llm: LLMConfig | None = Field(
        None, description="The LLM endpoint (OpenAI-compatible, or any LLM-layer backend) of the recipe: the judge of "
        "judged eval suites (data.eval_suites) and of `llm_judge` reward components that name no `llm` of their own."
    )
    @model_validator(mode="before")
    @classmethod
    def _judges_use_the_recipe_llm(cls, data: Any) -> Any:
        """``llm_judge`` reward components that name no ``llm`` are judged by the recipe's ``llm``."""
        if isinstance(data, dict) and isinstance(data.get("grpo"), dict) and "rewards" in data["grpo"]:
            data = dict(data, grpo=dict(data["grpo"], rewards=inherit_judge_llm(data["grpo"]["rewards"], data.get("llm"))))
        return data

    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (None: torch's default). 1 is much faster when other processes "
        "share the cores. Not part of any stage key."
    )
