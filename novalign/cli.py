"""``novalign``: one subcommand per stage of the recipe.

    novalign init-model runs/tiny-base          # a tiny model + tokenizer trained here (no hub needed)
    novalign sft --config recipes/tiny_sft.yaml --set train.epochs=2
    novalign sft --help-config                  # every option, its default and its meaning
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="novalign: the Baichuan Alignment recipe -- PAS, SFT, reward model, DPO/KTO, GRPO/PPO, merging, evaluation, "
    "the whole recipe in one command (run), and of the data flywheel so far the preference step (data prefs).",
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _print_config_help(schema) -> None:
    from rich.console import Console
    from rich.table import Table

    from novalign.config import describe

    table = Table(title=f"{schema.__name__} options (YAML keys; override with --set key=value)")
    table.add_column("key", style="bold")
    table.add_column("default")
    table.add_column("meaning")
    for key, default, help_text in describe(schema):
        table.add_row(key, default, help_text)
    Console().print(table)


def _stage_config(schema, config, set_, help_config, flags: dict | None = None):
    """The command's typed config from YAML + ``--set`` overrides, then the command-line ``flags`` (dotted key ->
    value; None means not given); None after printing ``--help-config``. A flag is assigned, not YAML-parsed, so
    a value like "0123" stays a string. A bad config or flag exits with code 2 and the loader's message (file,
    key, did-you-mean)."""
    from novalign.config import load_config

    if help_config:
        _print_config_help(schema)
        return None
    try:
        cfg = load_config(schema, config, set_)
        for key, value in (flags or {}).items():
            if value is not None:
                *parents, leaf = key.split(".")
                setattr(functools.reduce(getattr, parents, cfg), leaf, value)
        return cfg
    except ValueError as exc:  # ConfigError, and a flag's pydantic ValidationError
        _fail(str(exc))


def _endpoint_flags(section: str, backend: str, key: str, value: str | None) -> dict:
    """``--pas-model PATH`` / ``--upstream URL``: the value and the backend that reads it, or nothing if not given."""
    return {} if value is None else {f"{section}.backend": backend, f"{section}.{key}": value}


_CONFIG_OPT = typer.Option(None, "--config", "-c", help="YAML config (see --help-config).")
_SET_OPT = typer.Option([], "--set", help="Override a config key, e.g. --set loss.alpha=0.5 (repeatable).")
_HELP_CONFIG_OPT = typer.Option(False, "--help-config", help="List every config option with default and help.")


def _run_stage(schema, runner: str, config, set_, help_config) -> None:
    """Load a stage's config and run ``novalign.train.<module>.<function>``; bad input exits with code 2."""
    import importlib

    from novalign.data.io import DataError

    cfg = _stage_config(schema, config, set_, help_config)
    if cfg is None:
        return
    module, function = runner.rsplit(".", 1)
    try:
        result = getattr(importlib.import_module(module), function)(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"done: {result.state.step} steps, final loss {result.final_loss:.4f}" if result.final_loss is not None else "done")


def _training_command(group: typer.Typer, name: str, schema: str, runner: str, help_text: str) -> None:
    """Register ``novalign [group] <name> --config --set --help-config``: the ``novalign.config`` class ``schema``
    loaded and passed to ``runner`` (``"module.function"``, imported when the command runs)."""

    def command(config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                help_config: bool = _HELP_CONFIG_OPT) -> None:
        import novalign.config

        _run_stage(getattr(novalign.config, schema), runner, config, set_, help_config)

    group.command(name, help=help_text)(command)


_TRAINING_COMMANDS = (  # name, config class, runner, help; sft comes first in --help, the rest after rm
    ("sft", "SFTConfig", "novalign.train.sft.run_sft",
     "Supervised fine-tuning with sample packing (report sections 2.1-2.2). Works under torchrun."),
    ("dpo", "DPOConfig", "novalign.train.preference.run_dpo",
     "Direct preference optimization on preference pairs (a baseline of the report)."),
    ("kto", "KTOConfig", "novalign.train.preference.run_kto",
     "Kahneman-Tversky optimization on desirable / undesirable responses (a baseline of the report)."),
    ("grpo", "GRPOConfig", "novalign.train.grpo.run_grpo",
     "GRPO with the report's top-k KL kept in the token-level reward (report section 2.1, eq. 2). Works under "
     "torchrun (data parallel: each process rolls out its share of the prompts)."),
    ("ppo", "PPOConfig", "novalign.train.ppo.run_ppo",
     "PPO with a value head, GAE and the report's top-k KL in the token-level reward (report section 2.1). Works "
     "under torchrun (data parallel: each process rolls out its share of the prompts)."),
)
_training_command(app, *_TRAINING_COMMANDS[0])


@app.command("init-model")
def init_model_command(
    out_dir: Path = typer.Argument(..., help="Folder to write the model and tokenizer to."),
    arch: str = typer.Option("llama", help="Architecture: llama or qwen2."),
    template: str = typer.Option("chatml", help="Chat template: chatml or llama3."),
    vocab_size: int = typer.Option(2048, help="BPE vocabulary size."),
    hidden_size: int = typer.Option(64, help="Hidden size."),
    num_layers: int = typer.Option(2, help="Decoder layers."),
    num_heads: int = typer.Option(4, help="Attention heads."),
    num_kv_heads: int = typer.Option(2, help="Key/value heads (grouped-query attention)."),
    intermediate_size: int = typer.Option(128, help="MLP inner size."),
    seed: int = typer.Option(0, help="Seed for the random initialization."),
) -> None:
    """Create a tiny random-init causal LM and a byte-level BPE tokenizer trained on bundled text."""
    from novalign.models.tiny import init_tiny_model

    path = init_tiny_model(
        out_dir, arch=arch, template=template, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, seed=seed,
    )
    typer.echo(f"tiny model written to {path}")


@app.command("generate")
def generate_command(
    model_dir: Path = typer.Argument(..., help="A local Hugging Face model directory (e.g. runs/tiny-sft/model)."),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="A user message to answer (repeatable)."),
    input_file: Optional[Path] = typer.Option(
        None, "--input", help="Chat JSONL/Parquet: answers each record's conversation minus its last assistant turn."
    ),
    output: Optional[Path] = typer.Option(None, "--output", help="Write {prompt, reply[, answer, correct]} JSONL here."),
    limit: int = typer.Option(0, help="Only the first N records of --input (0: all)."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per reply."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
) -> None:
    """Answer prompts with a local model. With --input records that carry an `answer`, report how often the
    reply contains it (a quick check that SFT worked; the evaluation suite does the full job)."""
    from novalign.data.io import DataError, write_jsonl
    from novalign.models.generate import answer_rows, conversations_from_file, generate_chat
    from novalign.models.load import load_model, load_tokenizer

    convs: list[list[dict]] = [[{"role": "user", "content": p}] for p in prompt]
    answers: list[str | None] = [None] * len(convs)
    if input_file is not None:
        try:
            more, more_answers = conversations_from_file(input_file, limit)
        except (DataError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        convs, answers = convs + more, answers + more_answers
    if not convs:
        _fail("nothing to answer: give --prompt or --input")
    try:
        tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    except ValueError as exc:
        _fail(str(exc))
    replies = generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, temperature=temperature)
    rows = answer_rows(convs, replies, answers)
    graded = [row["correct"] for row in rows if "correct" in row]
    if output is not None:
        write_jsonl(output, rows)
    for row in rows[:8]:
        typer.echo(f"> {row['prompt']}\n{row['reply']}\n")
    if graded:
        typer.echo(f"answer found in {sum(graded)}/{len(graded)} replies ({sum(graded) / len(graded):.1%})")


@app.command("merge")
def merge_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see --help-config)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set method=ties (repeatable)."),
    help_config: bool = typer.Option(False, "--help-config", help="List every config option with default and help."),
) -> None:
    """Merge fine-tuned checkpoints: Linear, Task Arithmetic, TIES, Model Stock (report section 2.4),
    streamed tensor by tensor into an atomically written model directory."""
    from novalign.config import MergeConfig

    cfg = _stage_config(MergeConfig, config, set_, help_config)
    if cfg is None:
        return
    from novalign.merge import MergeError, merge_models

    def progress(done: int, total: int, name: str) -> None:
        if done == total or done % max(1, total // 10) == 0:
            typer.echo(f"  {done}/{total} tensors ({name})", err=True)

    try:
        result = merge_models(cfg, progress=progress)
    except (MergeError, FileNotFoundError) as exc:
        _fail(str(exc))
    ratios = [t for t in result.statistics.values() if isinstance(t, float)]
    detail = f", Model Stock t: mean {sum(ratios) / len(ratios):.3f}" if cfg.method == "model_stock" and ratios else ""
    typer.echo(f"merged {result.num_tensors} tensors ({result.num_bytes / 1e6:.1f} MB) into {result.output_dir} "
               f"in {result.seconds:.1f} s{detail}")


@app.command("serve")
def serve_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local Hugging Face model directory to serve."),
    host: Optional[str] = typer.Option(None, help="Interface to bind (default 127.0.0.1, loopback only)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default 8000; 0 picks a free one and prints it)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require this bearer key (default: $NOVALIGN_API_KEY)."),
    served_model_name: Optional[str] = typer.Option(None, help="Model id clients ask for (default: directory name)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML ServeConfig (see --help-config)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set engine.max_batch_size=64."),
    help_config: bool = typer.Option(False, "--help-config", help="List every config option with default and help."),
) -> None:
    """OpenAI-compatible server for a local model: /v1/chat/completions, /v1/completions, /v1/models, /health.
    Concurrent requests are batched into one generate call."""
    from novalign.config import ServeConfig

    flags = {"model": model, "host": host, "port": port, "api_key": api_key, "served_model_name": served_model_name}
    cfg = _stage_config(ServeConfig, config, set_, help_config, flags)
    if cfg is None:
        return
    from novalign.llm.server import serve

    try:
        serve(cfg)
    except ValueError as exc:  # a model directory that does not load (ModelDirError) and the like
        _fail(str(exc))


rm_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, add_completion=False)
app.add_typer(rm_app, name="rm")



@rm_app.callback()
def rm_command(
    ctx: typer.Context,
    config: Optional[Path] = _CONFIG_OPT,
    set_: list[str] = _SET_OPT,
    help_config: bool = _HELP_CONFIG_OPT,
) -> None:
    """Train a reward model: Bradley-Terry + pointwise MSE to normalized absolute scores (report eq. 1).
    `novalign rm score MODEL_DIR --input in.jsonl --output out.jsonl` scores responses with one."""
    from novalign.config import RMConfig

    if ctx.invoked_subcommand is None:
        _run_stage(RMConfig, "novalign.train.rm.run_rm", config, set_, help_config)


@rm_app.command("score")
def rm_score_command(
    model_dir: Path = typer.Argument(..., help="A reward model directory (<output_dir>/model of `novalign rm`)."),
    input_file: Path = typer.Option(..., "--input", help="JSONL/Parquet of {prompt, response} (or {messages}) records."),
    output: Path = typer.Option(..., "--output", help="Where to write each record with its `reward`, one JSON line each."),
    batch_size: int = typer.Option(16, help="Responses per forward pass."),
    max_length: int = typer.Option(4096, help="Longest prompt + response in tokens."),
) -> None:
    """Score (prompt, response) records with a trained reward model: one reward per line, in input order."""
    from novalign.data.io import DataError
    from novalign.train.rm import score_file

    try:
        n = score_file(model_dir, input_file, output, batch_size=batch_size, max_length=max_length)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"scored {n} responses -> {output}")


for _command in _TRAINING_COMMANDS[1:]:
    _training_command(app, *_command)


@app.command("eval-ifeval")
def eval_ifeval_command(
    input_path: Path = typer.Option(..., "--input", help="IFEval input JSONL (key, prompt, instruction_id_list, kwargs)."),
    responses: Path = typer.Option(..., "--responses", help="JSONL of {prompt, response}, joined to --input by prompt."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write per-prompt verdicts (strict and loose) as JSONL."),
) -> None:
    """Score responses with IFEval's 25 verifiable instructions: prompt- and instruction-level accuracy,
    strict and loose, overall and per instruction type (like IFEval's evaluation_main)."""
    from rich.console import Console
    from rich.table import Table

    from novalign.data.io import DataError, write_jsonl
    from novalign.eval import evaluate, ifeval_accuracy

    try:
        results = evaluate(input_path, responses)
    except (DataError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if not results:
        _fail(f"{input_path}: no prompts")
    rows = [r.to_dict() for r in results]
    if output is not None:
        write_jsonl(output, rows)
    acc = ifeval_accuracy(rows)
    strict, loose = acc["strict"], acc["loose"]
    table = Table(title=f"IFEval: {acc['num_prompts']} prompts, {acc['num_instructions']} instructions")
    for column in ("", "strict", "loose"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("prompt-level", f"{strict['prompt_level']:.1%}", f"{loose['prompt_level']:.1%}", style="bold")
    table.add_row("instruction-level", f"{strict['instruction_level']:.1%}", f"{loose['instruction_level']:.1%}",
                  style="bold", end_section=True)
    for level in ("per_category", "per_instruction"):
        for name, value in strict[level].items():
            table.add_row(name, f"{value:.1%}", f"{loose[level][name]:.1%}")
        table.rows[-1].end_section = True
    Console().print(table)


@app.command("eval")
def eval_command(config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT, help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Evaluate models (local directories, OpenAI-compatible endpoints, or given responses files) on suites:
    ifeval, math, code, cfbench, sysbench, fbbench, ux, mtbench, pairwise (report section 5). Writes per-sample
    JSONL, summary.json and report.md with charts under output_dir; a rerun resumes where it stopped."""
    from novalign.config import EvalConfig

    cfg = _stage_config(EvalConfig, config, set_, help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError, OutputLocked
    from novalign.eval.runner import EvalError, run_eval

    try:
        summaries = run_eval(cfg)
    except (DataError, ValueError, FileNotFoundError, EvalError, OutputLocked) as exc:
        _fail(str(exc))
    for model, suites in summaries.items():
        for suite, summary in suites.items():
            metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary.get("metrics", {}).items())
            typer.echo(f"{model} / {suite}: {metrics} ({summary.get('num_samples')} samples, "
                       f"{summary.get('num_failed', 0)} failed)")
    typer.echo(f"report: {Path(cfg.output_dir) / 'report.md'}")


pas_app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="PAS, the prompt augmentation system (report sections 2.3, 4.6): data, training, "
                           "augmentation, a plug-and-play proxy, and a with/without comparison.")
app.add_typer(pas_app, name="pas")


@pas_app.command("build-data")
def pas_build_data_command(config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                           help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Build PAS data: categories + seeds -> few-shot synthesis -> LLM self-correction (with rule checks).
    Writes prompt/complement/category/check JSONL (resumable) and prints the category balance."""
    from novalign.config import PASDataConfig
    from novalign.data.io import DataError

    cfg = _stage_config(PASDataConfig, config, set_, help_config)
    if cfg is None:
        return
    try:
        from novalign.pas.build import run_build_data

        summary = run_build_data(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"done: {summary['kept']} kept, {summary['rewritten']} rewritten, {summary['dropped']} dropped, "
               f"{summary['failed']} failed -> {cfg.output}")


_training_command(pas_app, "train", "PASTrainConfig", "novalign.pas.train.run_pas_train",
                  "Fine-tune a PAS model on build-data output through the SFT trainer (report: 2 epochs, "
                  "4,096 tokens).")


@pas_app.command("augment")
def pas_augment_command(
    pas_model: str = typer.Option(..., "--pas-model", help="PAS model directory (or the model name with --pas-url)."),
    input_file: Path = typer.Option(..., "--input", help="JSONL of {prompt, search_keywords?, search_results?}."),
    output: Path = typer.Option(..., "--output", help="Each record plus complement, augmented, pas_latency_s (, scope)."),
    pas_url: Optional[str] = typer.Option(None, "--pas-url", help="Serve the PAS model elsewhere: its /v1 base URL."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML PASAugmentConfig (templates, max_tokens, ...)."),
    set_: list[str] = _SET_OPT,
) -> None:
    """Augment prompts with a PAS model: prompt -> complement -> augmented prompt (joining template editable).
    Records with search_keywords run in RAG mode: the complement is kept within the keywords' scope."""
    from novalign.config import ConfigError, PASAugmentConfig, load_config
    from novalign.data.io import DataError
    from novalign.pas.augment import augment_file, pas_llm_config

    try:
        aug_cfg = load_config(PASAugmentConfig, config, set_)
        total, errors = augment_file(input_file, output, pas_llm_config(pas_model, pas_url), aug_cfg)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"augmented {total - errors}/{total} prompts -> {output}"
               + (f" ({errors} PAS calls failed; those prompts are unchanged, see 'error')" if errors else ""))


@pas_app.command("serve")
def pas_serve_command(
    pas_model: Optional[str] = typer.Option(None, "--pas-model", help="PAS model directory (local, in-process)."),
    upstream: Optional[str] = typer.Option(None, "--upstream", help="OpenAI-compatible upstream base URL (…/v1)."),
    host: Optional[str] = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default 8100; 0 picks a free one and prints it)."),
    upstream_api_key: Optional[str] = typer.Option(None, "--upstream-api-key", help="Key sent to the upstream."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML PASServeConfig (see --help-config)."),
    set_: list[str] = _SET_OPT,
    help_config: bool = _HELP_CONFIG_OPT,
) -> None:
    """OpenAI-compatible proxy: augments the last user message with PAS, forwards to the upstream, streams back.
    Per request, `X-PAS: off` (header) or `"pas": false` (body) turns PAS off; the added latency is logged."""
    from novalign.config import PASServeConfig

    flags = {**_endpoint_flags("pas_llm", "local", "model", pas_model), "upstream": upstream, "host": host,
             "port": port, "upstream_api_key": upstream_api_key}
    cfg = _stage_config(PASServeConfig, config, set_, help_config, flags)
    if cfg is None:
        return
    try:
        if not cfg.pas_llm.model:
            raise ValueError("no PAS model: give --pas-model PATH (or pas_llm.model in the config)")
        from novalign.pas.proxy import serve_proxy

        serve_proxy(cfg)
    except ValueError as exc:
        _fail(str(exc))


@pas_app.command("compare")
def pas_compare_command(
    upstream: Optional[str] = typer.Option(None, "--upstream", help="Upstream base URL (sets upstream.base_url)."),
    upstream_model: Optional[str] = typer.Option(None, "--upstream-model", help="Model name sent to the upstream."),
    pas_model: Optional[str] = typer.Option(None, "--pas-model", help="PAS model directory."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="JSONL of {prompt, checks: [{id, kwargs?}], capability?}."),
    output: Optional[str] = typer.Option(None, "--output", help="Per-prompt JSONL (summary beside it)."),
    config: Optional[Path] = _CONFIG_OPT,
    set_: list[str] = _SET_OPT,
    help_config: bool = _HELP_CONFIG_OPT,
) -> None:
    """Compare an upstream model with vs without PAS: pass rate of verifier checks and GSB (report 5.1)."""
    from novalign.config import PASCompareConfig
    from novalign.data.io import DataError

    flags = {**_endpoint_flags("upstream", "openai", "base_url", upstream), "upstream.model": upstream_model,
             **_endpoint_flags("pas_llm", "local", "model", pas_model), "prompts": prompts, "output": output}
    cfg = _stage_config(PASCompareConfig, config, set_, help_config, flags)
    if cfg is None:
        return
    try:
        if not cfg.prompts:
            raise ValueError("no prompt set: give --prompts FILE")
        from novalign.pas.compare import run_compare

        run_compare(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command("run")
def run_command(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (e.g. recipes/demo.yaml); see --help-config."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (its inputs must be finished)."),
    from_: Optional[str] = typer.Option(None, "--from", help="Rerun this stage and every later one."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key, e.g. --set sft.optim.lr=1e-4 (repeatable)."),
    help_config: bool = typer.Option(False, "--help-config", help="List every recipe option with default and help."),
) -> None:
    """The whole recipe in one command: world data, pretraining, SFT, preference data, reward model, GRPO,
    merging, evaluation and a report, each stage under runs/<name>/<stage>/. Finished stages whose config and
    inputs are unchanged are skipped; a killed run resumes where it stopped."""
    from novalign.config import RecipeConfig

    if recipe is None and not help_config:
        _fail("give a recipe file, e.g. novalign run recipes/demo.yaml")
    cfg = _stage_config(RecipeConfig, recipe, set_, help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError, OutputLocked
    from novalign.recipe import run_recipe

    try:
        status = run_recipe(cfg, only=only, start=from_, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError, OutputLocked) as exc:
        _fail(str(exc))
    ran = [s for s, v in status.items() if v == "ran"]
    typer.echo(f"done: ran {', '.join(ran) or 'nothing'}; report: {Path(cfg.runs_dir) / cfg.name / 'report.md'}")


data_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="The data flywheel (report sections 3-4): data steps on your own files.")
app.add_typer(data_app, name="data")


@data_app.command("prefs")
def data_prefs_command(config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                       help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Preference groups from prompts (report 3.3): n samples per prompt from a local model, or the responses
    already in the records; scored by a reward mix; ROUGE-L near-duplicates and prompts without a score
    difference dropped (counted). Writes prefs.jsonl (the `novalign rm` group format), prompt_scores.jsonl and
    stats.json to output_dir."""
    from novalign.config import PrefsDataConfig

    cfg = _stage_config(PrefsDataConfig, config, set_, help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.prefs import run_prefs

    try:
        run_prefs(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("run")
def data_run_command(pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML (see --help-config, README)."),
                     set_: list[str] = _SET_OPT, help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Run a record pipeline (report section 3, Figure 4): sources, then steps (dedup, filters, llm_generate,
    llm_judge, sample, balance ...), each into run_dir/steps/<name>-<key>/; a killed run resumes where it stopped
    with no LLM request repeated. Writes run_dir/report.md and funnel.png."""
    from novalign.config.pipeline import PipelineConfig

    if help_config:  # the pipeline's keys, then each step type's `config` keys
        from novalign.flywheel.steps import STEP_TYPES  # importing the package registers the built-in steps

        for schema in [PipelineConfig, *(STEP_TYPES[t].Config for t in sorted(STEP_TYPES))]:
            _print_config_help(schema)
        return
    if pipeline is None:
        _fail("give the pipeline YAML: novalign data run pipeline.yaml (see --help-config)")
    cfg = _stage_config(PipelineConfig, pipeline, set_, False)
    from novalign.config import ConfigError
    from novalign.data.io import DataError
    from novalign.flywheel.pipeline import Pipeline

    try:
        Pipeline.from_config(cfg, str(pipeline)).run(console_print=typer.echo)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("constraints")
def data_constraints_command(
    check_file: Optional[Path] = typer.Option(None, "--check", help="Score a JSONL of {response, constraints} records."),
    coverage_file: Optional[Path] = typer.Option(None, "--coverage", help="A text file of constraint sentences, one a "
                                                 "line: the share the library can express."),
) -> None:
    """The instruction-following constraint library (report 4.1): list its types (name, category, a description);
    --check scores responses with its validators (CSR, ISR, per type, one JSON line); --coverage measures how much
    of an instruction pool's constraints it can express. The data steps (constraint_expand, response_reverse,
    sysmsg_decompose, sysmsg_assemble, textbook) run through `novalign data run`."""
    import json

    from novalign.data.io import DataError
    from novalign.eval.constraints import REGISTRY, describe

    try:
        if check_file is not None:
            from novalign.eval.constraints.evaluate import read_constrained, score_records

            typer.echo(json.dumps(score_records(read_constrained(check_file))))
        elif coverage_file is not None:
            from novalign.flywheel.constraints.attributes import coverage

            lines = [ln.strip() for ln in coverage_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
            typer.echo(json.dumps(coverage(lines), ensure_ascii=False))
        else:
            for name, t in REGISTRY.items():
                typer.echo(f"{name}\t{t.category}\t{describe(name, t.example)}")
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
annotate_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="The annotation app (report 3.2-3.3): ranking, 1-5 scores, error spans, edits, QC.")
app.add_typer(annotate_app, name="annotate")
_ANNOTATE_DB = typer.Option("sqlite:///runs/annotate.db", "--db", help="sqlite:///path or postgresql://user@host/db")


@annotate_app.command("serve")
def annotate_serve(db: str = _ANNOTATE_DB, host: str = typer.Option("127.0.0.1", help="Interface (loopback default)."),
                   port: int = typer.Option(8765, help="TCP port (0: a free one, printed).")) -> None:
    """Migrate the database, then serve the app (prints `novalign annotate: URL`)."""
    from novalign.annotate.server import serve

    serve(db, host, port, echo=lambda *a, **k: typer.echo(*a))


@annotate_app.command("migrate")
def annotate_migrate(db: str = _ANNOTATE_DB) -> None:
    """Bring the database schema to the newest Alembic migration."""
    from novalign.annotate.server import run_migrations

    run_migrations(db)
    typer.echo(f"migrated {db}")


@annotate_app.command("create-admin")
def annotate_create_admin(username: str = typer.Option("admin"), db: str = _ANNOTATE_DB,
                          password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                                       envvar="NOVALIGN_ADMIN_PASSWORD")) -> None:
    """Create an admin account (the first one; admins create the others in the app)."""
    _annotate_user(db, username, password, "admin", "*")


@annotate_app.command("create-user")
def annotate_create_user(username: str, role: str = typer.Option("annotator", help="admin, annotator or reviewer"),
                         skills: str = typer.Option("", help="Taxonomy labels, comma-separated (* = any)."),
                         db: str = _ANNOTATE_DB,
                         password: str = typer.Option(..., prompt=True, hide_input=True, envvar="NOVALIGN_USER_PASSWORD")
                         ) -> None:
    """Create an account from the command line (scripts; the admin page does the same)."""
    _annotate_user(db, username, password, role, skills)


def _annotate_user(db: str, username: str, password: str, role: str, skills: str) -> None:
    from novalign.annotate.accounts import AccountError
    from novalign.annotate.server import add_user

    try:
        add_user(db, username, password, role, skills)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"created {role} {username}")


@annotate_app.command("create-project")
def annotate_create_project(name: str, overlap: int = typer.Option(1, help="k annotators per task."),
                            route_field: str = typer.Option("labels.ability"), lease_seconds: int = 1800,
                            db: str = _ANNOTATE_DB) -> None:
    """Create a project (the admin page does the same)."""
    from novalign.annotate.accounts import AccountError
    from novalign.annotate.server import add_project

    try:
        add_project(db, name, overlap, route_field, lease_seconds)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"created project {name}")


@annotate_app.command("import")
def annotate_import(project: str, path: Path, db: str = _ANNOTATE_DB) -> None:
    """Import tasks: the hand-off JSONL, preference groups JSONL, or a Label Studio JSON export."""
    from novalign.annotate.server import import_tasks
    from novalign.data.io import DataError

    try:
        counts = import_tasks(db, project, path)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"imported {counts['tasks']} tasks and {counts['results']} results into {project}")


@annotate_app.command("export")
def annotate_export(project: str, output: Path, format_: str = typer.Option("rm", "--format",
                    help="rm, trl, sft, results, label-studio or argilla"),
                    normalize: str = typer.Option("minmax", help="Per-annotator score normalization (rm)."),
                    db: str = _ANNOTATE_DB) -> None:
    """Export a project's annotations (rejected submissions left out)."""
    from novalign.annotate.server import export_records

    try:
        summary = export_records(db, project, format_, output, normalize)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"{output}: {summary}")
def _chain_command(name: str, step_type: str, help_text: str) -> None:
    """``novalign data <name>``: one step of the preference-data chain (issue 18) on a file."""

    def command(input_file: Path = typer.Option(..., "--input", help="Records (JSONL/Parquet): prompts, groups or texts."),
                run_dir: Path = typer.Option(Path("runs/prefdata"), "--run-dir", help="The step's folder goes here."),
                output: Optional[Path] = typer.Option(None, "--output", help="Copy the step's records.jsonl here."),
                id_field: Optional[str] = typer.Option(None, "--id-field", help="Record field with a unique id."),
                base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible URL of the LLM (.../v1)."),
                model: Optional[str] = typer.Option(None, "--model", help="Model name (or folder with --backend local)."),
                backend: str = typer.Option("openai", "--backend", help="openai, local (a model folder) or vllm."),
                api_key: Optional[str] = typer.Option(None, "--api-key", help="API key of the LLM endpoint."),
                config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                help_config: bool = _HELP_CONFIG_OPT) -> None:
        from novalign.flywheel.steps import STEP_TYPES

        cfg = _stage_config(STEP_TYPES[step_type].Config, config, set_, help_config)
        if cfg is None:
            return
        from novalign.config.llm import LLMConfig
        from novalign.data.io import DataError
        from novalign.flywheel.chain import run_single

        llm = None
        if base_url or model:
            llm = LLMConfig(backend=backend, model=model or "", base_url=base_url, api_key=api_key)
        try:
            stats = run_single(step_type, cfg, input_file, run_dir, llm=llm, output=output, id_field=id_field,
                               console_print=typer.echo)
        except (DataError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        typer.echo(f"{name}: {stats['records_in']} in, {stats['records_out']} out, dropped {stats['dropped_by_reason']}")

    command.__doc__ = f"{help_text} (step `{step_type}`; --help-config lists its keys)"
    data_app.command(name)(command)


def _register_chain_commands() -> None:
    from novalign.flywheel.chain import CHAIN_COMMANDS

    for name, (step_type, help_text) in CHAIN_COMMANDS.items():
        _chain_command(name, step_type, help_text)


_register_chain_commands()


@data_app.command("annotate-export")
def data_annotate_export_command(
    input_file: Path = typer.Option(..., "--input", help="Group records {prompt, responses: [{content, ...}]}."),
    output: Path = typer.Option(..., "--output", help="Annotation tasks JSONL (novalign.data.annotation)."),
    score_field: str = typer.Option("score", help="Response field shown to annotators as the machine score."),
) -> None:
    """Export preference groups as annotation tasks (ranking, 1-5 helpfulness/fluency/safety, error spans)."""
    from novalign.data.io import DataError
    from novalign.flywheel.chain import export_tasks

    try:
        n = export_tasks(input_file, output, score_field=score_field)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"exported {n} tasks -> {output}")


@data_app.command("annotate-import")
def data_annotate_import_command(
    tasks: Path = typer.Option(..., "--tasks", help="The exported tasks JSONL."),
    results: list[Path] = typer.Option(..., "--results", help="Finished annotations JSONL (repeatable)."),
    output: Path = typer.Option(..., "--output", help="RM-ready groups {prompt, responses: [{content, score, model, rank}]}."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Also write TRL pairs (prompt, chosen, rejected, scores)."),
    normalize: str = typer.Option("minmax", help="Per-annotator normalization: minmax, zscore, range or none."),
    max_pairs: Optional[int] = typer.Option(None, help="Most pairs per group (widest score gap first)."),
) -> None:
    """Import finished annotations: per-annotator score normalization (equation 1's r-hat), RM groups, TRL pairs."""
    from novalign.data.io import DataError
    from novalign.flywheel.chain import import_results

    try:
        stats = import_results(tasks, list(results), output, pairs, normalize=normalize, max_pairs=max_pairs)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"imported {stats['results']} results from {stats['annotators']} annotators: {stats['groups']} groups, "
               f"{stats['pairs']} pairs -> {output}")
# ---- the prompt system (report 3.1.1): voted labels, the distilled classifier, coverage (issue 16)


@data_app.command("label")
def data_label_command(
        input: Path = typer.Argument(..., help="Prompt records (JSONL / Parquet) with a `prompt` field."),
        output: Path = typer.Argument(..., help="Labeled records: labels, label_confidence, label_votes."),
        labeler: list[str] = typer.Option(..., "--labeler", help="A labeler: model, model@URL or name=model@URL "
                                          "(repeat for several); URL defaults to --base-url."),
        base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server of the labelers."),
        n: int = typer.Option(1, help="Votes per labeler (samples at --temperature)."),
        method: str = typer.Option("dawid_skene", help="dawid_skene or majority."),
        taxonomy: Optional[Path] = typer.Option(None, help="Taxonomy YAML (default: the bundled one)."),
        review_share: float = typer.Option(0.1, help="Share of least confident records sent to review."),
        review_out: Optional[Path] = typer.Option(None, help="Review queue (labels annotation tasks)."),
        review_unit: str = typer.Option("label", help="label: the least confident labels; record: prompts."),
        run_dir: Path = typer.Option(Path("runs/label"), help="Pipeline folder (steps, request cache)."),
        temperature: float = typer.Option(0.7), max_tokens: int = typer.Option(256)) -> None:
    """Vote labels on every dimension of the taxonomy with k LLM labelers (majority or Dawid-Skene), a
    confidence per label, failed votes counted; the least confident share to a review queue."""
    from novalign.config.llm import LLMConfig
    import json

    from novalign.flywheel.prompt_system import label_file

    try:
        summary = label_file(input, output, labeler, run_dir=run_dir, n=n, method=method,
                             taxonomy=str(taxonomy) if taxonomy else None, review_share=review_share,
                             review_out=review_out, review_unit=review_unit, llm=LLMConfig(base_url=base_url, progress=False),
                             temperature=temperature, max_tokens=max_tokens, console_print=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary))


@data_app.command("label-import")
def data_label_import_command(
        labeled: Path = typer.Argument(..., help="Labeled records (novalign data label's output)."),
        results: list[Path] = typer.Argument(..., help="Annotation result files (kind: labels)."),
        output: Path = typer.Option(..., "--out", help="Records with the human labels over the votes."),
        taxonomy: Optional[Path] = typer.Option(None)) -> None:
    """Human label corrections from the review queue win over the voted labels."""
    from novalign.data.io import DataError
    import json

    from novalign.flywheel.prompt_system import import_corrections

    try:
        typer.echo(json.dumps(import_corrections(labeled, results, output, str(taxonomy) if taxonomy else None)))
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("train-classifier")
def data_train_classifier_command(
        input: Path = typer.Argument(..., help="Labeled records."),
        out: Path = typer.Option(..., "--out", help="Classifier folder."),
        field: str = typer.Option("labels", help="The labels to learn (dotted path)."),
        true_field: Optional[str] = typer.Option(None, help="Also score against these labels (e.g. true_labels)."),
        test_share: float = typer.Option(0.2, help="Held-out share for the scores (0: none)."),
        taxonomy: Optional[Path] = typer.Option(None),
        char_ngrams: bool = typer.Option(True, help="Add hashed character n-grams to the MiniLM embedding.")) -> None:
    """Train the prompt classifier (frozen all-MiniLM-L6-v2 embeddings, one logistic-regression head per
    dimension) on voted labels; prints held-out accuracy / macro-F1 beside a TF-IDF + LR baseline."""
    import json

    from novalign.flywheel.prompt_system import train_from_file

    try:
        metrics = train_from_file(input, out, field=field, true_field=true_field, test_share=test_share,
                                  taxonomy=str(taxonomy) if taxonomy else None, char_ngrams=char_ngrams)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(metrics))


@data_app.command("classify")
def data_classify_command(input: Path = typer.Argument(...), output: Path = typer.Argument(...),
                          model: Path = typer.Option(..., "--model", help="Classifier folder."),
                          overwrite: bool = typer.Option(False, help="Replace labels already present.")) -> None:
    """Label prompts with the trained classifier, without an LLM."""
    import json

    from novalign.flywheel.prompt_system import classify_file

    try:
        typer.echo(json.dumps(classify_file(input, output, model, overwrite=overwrite)))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))


@data_app.command("coverage")
def data_coverage_command(input: Path = typer.Argument(..., help="Labeled records."),
                          out: Path = typer.Option(Path("runs/coverage"), "--out"),
                          field: str = typer.Option("labels"), taxonomy: Optional[Path] = typer.Option(None),
                          min_count: int = typer.Option(10, help="Leaves with fewer records are thin."),
                          crosstab: list[str] = typer.Option(["ability,language", "ability,difficulty"],
                                                             help="Two dimensions, comma-separated (repeat).")) -> None:
    """Coverage of labeled prompts: counts per leaf, empty and thin leaves, cross-tabs; coverage.md, .json, PNGs."""
    import json

    from novalign.flywheel.prompt_system import coverage_file

    try:
        pairs = [tuple(c.split(",", 1)) for c in crosstab]
        rep = coverage_file(input, out, field=field, taxonomy=str(taxonomy) if taxonomy else None,
                            min_count=min_count, crosstabs=pairs)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"records": rep["records"], "files": rep["files"]}))


@data_app.command("select-diverse")
def data_select_diverse_command(input: Optional[Path] = typer.Option(None, "--input", help="Records file."),
                                output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Output folder."),
                                budget: Optional[float] = typer.Option(None, help="A share in (0, 1] or a count."),
                                config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                                help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Task-aware diversity selection (report 3.1.2): two-level k-means, LCS hard pairs among near neighbours,
    a triplet fine-tune of all-MiniLM-L6-v2, layered agglomerative clustering, a budget covering the clusters.
    Writes selected.jsonl, clusters.jsonl (each record's cluster path), report.md, cluster_sizes.png, embedder/."""
    from novalign.config.selection import SelectDiverseRunConfig

    flags = {"input": str(input) if input else None, "output_dir": str(output_dir) if output_dir else None,
             "budget": budget}
    cfg = _stage_config(SelectDiverseRunConfig, config, [*set_, *_flag_overrides(flags)], help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.diversity_run import run_select_diverse

    try:
        run_select_diverse(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))


@data_app.command("score-quality")
def data_score_quality_command(input: Optional[Path] = typer.Option(None, "--input", help="Records file."),
                               output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Output folder."),
                               config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                               help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Anchored pairwise prompt quality (report 3.1.3): anchors per bucket, several judges on Clarity /
    Practicality / Complexity / Novelty, each pair judged in both orders, aggregated per prompt; a threshold per
    bucket. Writes scored.jsonl, selected.jsonl, anchors.jsonl, judgments.jsonl, stats.json, report.md."""
    from novalign.config.selection import ScoreQualityRunConfig

    flags = {"input": str(input) if input else None, "output_dir": str(output_dir) if output_dir else None}
    cfg = _stage_config(ScoreQualityRunConfig, config, [*set_, *_flag_overrides(flags)], help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.quality_run import run_score_quality

    try:
        run_score_quality(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


def _flag_overrides(flags: dict) -> list[str]:
    """Given command-line flags as ``key=value`` overrides (values JSON-quoted, so a path stays a string)."""
    import json

    return [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
