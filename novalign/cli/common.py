"""Helpers shared by the `novalign` sub-command modules: errors, typed configs from --config/--set, options."""

from __future__ import annotations

import functools

import typer


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


def _flag_overrides(flags: dict) -> list[str]:
    """Given command-line flags as ``key=value`` overrides (values JSON-quoted, so a path stays a string)."""
    import json

    return [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
