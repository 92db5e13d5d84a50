"""``novalign``: one subcommand per stage of the recipe.

    novalign init-model runs/tiny-base          # a tiny model + tokenizer trained here (no hub needed)
    novalign sft --config recipes/tiny_sft.yaml --set train.epochs=2
    novalign sft --help-config                  # every option, its default and its meaning
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from novalign.cli.annotate import annotate_app
from novalign.cli.common import _CONFIG_OPT, _HELP_CONFIG_OPT, _SET_OPT, _endpoint_flags, _fail, _stage_config
from novalign.cli.data import data_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="novalign: the Baichuan Alignment recipe -- PAS, SFT, reward model, DPO/KTO, GRPO/PPO, merging, evaluation, "
    "the whole recipe in one command (run), the data flywheel's steps (data) and the annotation app (annotate).",
)


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
    from novalign.data.chat import ToolsNotRendered
    from novalign.data.io import DataError, write_jsonl
    from novalign.models.generate import answer_rows, conversations_from_file, generate_chat
    from novalign.models.load import load_model, load_tokenizer

    convs: list[list[dict]] = [[{"role": "user", "content": p}] for p in prompt]
    answers: list[str | None] = [None] * len(convs)
    tools: list[list[dict] | None] = [None] * len(convs)
    if input_file is not None:
        try:
            more, more_answers, more_tools = conversations_from_file(input_file, limit)
        except (DataError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        convs, answers, tools = convs + more, answers + more_answers, tools + more_tools
    if not convs:
        _fail("nothing to answer: give --prompt or --input")
    try:
        tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    except ValueError as exc:
        _fail(str(exc))
    try:
        replies = generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, temperature=temperature,
                                tools=tools)
    except ToolsNotRendered as exc:
        _fail(f"{input_file}: {exc}")
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


# added last, so `novalign --help` lists them after the stages
app.add_typer(data_app, name="data")
app.add_typer(annotate_app, name="annotate")


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
