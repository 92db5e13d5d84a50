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

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="novalign: the Baichuan Alignment recipe, end to end (data, PAS, SFT, reward model, RL, merging, evaluation).",
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


@app.command("sft")
def sft_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see --help-config)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.epochs=2 (repeatable)."),
    help_config: bool = typer.Option(False, "--help-config", help="List every config option with default and help."),
) -> None:
    """Supervised fine-tuning with sample packing (report sections 2.1-2.2). Works under torchrun."""
    from novalign.config import ConfigError, SFTConfig, load_config

    if help_config:
        _print_config_help(SFTConfig)
        return
    try:
        cfg = load_config(SFTConfig, config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    from novalign.data.io import DataError
    from novalign.train.sft import run_sft

    try:
        result = run_sft(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"done: {result.state.step} steps, final loss {result.final_loss:.4f}" if result.final_loss is not None else "done")


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
    import json

    from novalign.data.chat import normalize_messages
    from novalign.data.io import DataError, iter_records
    from novalign.models.generate import generate_chat
    from novalign.models.load import load_model, load_tokenizer

    convs: list[list[dict]] = [[{"role": "user", "content": p}] for p in prompt]
    answers: list[str | None] = [None] * len(convs)
    if input_file is not None:
        try:
            for line, record in iter_records(input_file):
                messages = normalize_messages(record, path=str(input_file), line=line)
                convs.append(messages[:-1] if messages[-1]["role"] == "assistant" else messages)
                answers.append(record.get("answer"))
                if limit and len(convs) >= limit + len(prompt):
                    break
        except (DataError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    if not convs:
        _fail("nothing to answer: give --prompt or --input")
    try:
        tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    except ValueError as exc:
        _fail(str(exc))
    replies = generate_chat(model, tokenizer, convs, max_new_tokens=max_new_tokens, temperature=temperature)
    rows, graded = [], []
    for conv, reply, answer in zip(convs, replies, answers):
        row = {"prompt": conv[-1]["content"], "reply": reply}
        if answer is not None:
            row.update(answer=answer, correct=answer.strip().lower() in reply.lower())
            graded.append(row["correct"])
        rows.append(row)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows[:8]:
        typer.echo(f"> {row['prompt']}\n{row['reply']}\n")
    if graded:
        typer.echo(f"answer found in {sum(graded)}/{len(graded)} replies ({sum(graded) / len(graded):.1%})")


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
