"""Loading: YAML + ``--set key.path=value`` overrides, error messages with did-you-mean, and
``describe`` for ``--help-config``."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from novalign.config.base import ConfigError, Strict

T = TypeVar("T", bound=Strict)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a YAML tree; a numeric key indexes a list that already has that entry
    (``suites.0.options.n=4``)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: '{where}' is not an entry of a list of {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:depth])}' is not a section")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=2", "data.train_files=[a.jsonl]"]`` -> typed pairs (values parsed as YAML)."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at ``loc`` in ``model`` (for did-you-mean suggestions); a list index or a mapping key in
    ``loc`` (``merge.specialists.0.focus``) steps into the entry's section."""
    current: Any = model
    entry = False  # the next part of loc is a list index or a mapping key
    for part in loc:
        if entry:
            entry = False
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        nested = _nested_models(field.annotation)
        if nested is None:
            return []
        kind, current = nested
        entry = kind in ("list", "dict")
    if isinstance(current, type) and issubclass(current, BaseModel) and not entry:
        return list(current.model_fields)
    return []


def format_validation_error(err: ValidationError, schema: type[BaseModel], source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            valid = _field_names(schema, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f" (did you mean '{'.'.join(loc[:-1] + (close[0],))}'?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read ``path`` (YAML), apply ``key.path=value`` overrides, validate against ``schema``."""
    tree: dict = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        tree = loaded or {}
    for key, value in parse_overrides(overrides or []):
        _set_path(tree, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema, source)) from None


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _nested_models(ann: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field holds a nested config: ("one", M) for ``M`` or ``M | None``; ("list", M) for ``list[M]``;
    ("dict", M) for ``dict[str, M]``; None for a plain value."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "one", ann
    args = getattr(ann, "__args__", ())
    origin = getattr(ann, "__origin__", None)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if not models:
        return None
    if origin is list:
        return "list", models[0]
    if origin is dict:
        return "dict", models[0]
    return "one", models[0]  # a union such as ``M | None``


def describe(schema: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf option -- used by ``novalign <stage> --help-config``.

    ``defaults`` is the section's default instance, so that a stage overriding a shared section's defaults
    (``train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))``) shows its own values.
    Nested sections are expanded: ``a.b`` for a section (or an optional one), ``a[].b`` for each entry of a
    list of sections, ``a.<name>.b`` for a mapping of named sections.
    """
    rows = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}{name}"
        if defaults is not None:
            default = getattr(defaults, name)
        elif field.is_required():
            default = "(required)"
        else:
            default = field.default_factory() if field.default_factory else field.default
        nested = _nested_models(field.annotation)
        if nested is None:
            rows.append((key, default if default == "(required)" else repr(default), field.description or ""))
            continue
        kind, model = nested
        if field.description:
            rows.append((key, "(section)" if kind == "one" else f"({kind} of sections)", field.description))
        if kind == "one":
            rows.extend(describe(model, key + ".", default if isinstance(default, BaseModel) else None))
        else:
            rows.extend(describe(model, key + ("[]." if kind == "list" else ".<name>.")))
    return rows
