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


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
