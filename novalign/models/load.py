"""Loading and saving local model directories (no hub access).

A *model directory* is what :func:`save_pretrained_dir` writes and what
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` read:
``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files
and the chat template (transformers 5 stores it in ``chat_template.jinja``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from novalign.data.io import atomic_directory

__all__ = ["ModelDirError", "check_vocabulary_fits", "check_weights", "load_model", "load_tokenizer",
           "read_json_file", "resolve_dtype", "save_pretrained_dir"]

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

_MAKE_TINY_HINT = "To build a tiny local model for testing, run: python -m novalign.models.tiny <out_dir>"


class ModelDirError(ValueError):
    """A path is not a usable local model/tokenizer directory. The message says how to fix it."""


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Map ``"bf16"``, ``"float32"``, ``torch.float16``... to a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_ALIASES)} or a torch.dtype")
    return _DTYPE_ALIASES[key]


def _require_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelDirError(f"{what} directory {str(p)!r} does not exist. Only local paths are supported. "
                            + _MAKE_TINY_HINT)
    if not p.is_dir():
        raise ModelDirError(f"{what} path {str(p)!r} is not a directory. " + _MAKE_TINY_HINT)
    return p


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory and insist on a chat template.

    Raises:
        ModelDirError: if the directory is missing, holds no tokenizer, or the tokenizer has
            no chat template.
    """
    p = _require_dir(path, "Tokenizer")
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (p / name).is_file():  # a clear error naming the file, line and column, not one from deep inside
            read_json_file(p / name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(
            f"Could not load a tokenizer from {str(p)!r} ({type(exc).__name__}: {exc}). Expected tokenizer.json "
            "and tokenizer_config.json in that directory. " + _MAKE_TINY_HINT
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelDirError(
            f"The tokenizer in {str(p)!r} has no chat template. Fix: put a Jinja template in "
            f"{str(p / 'chat_template.jinja')!r} (or set tokenizer.chat_template = '...' and call "
            "tokenizer.save_pretrained(dir)); novalign.models.tiny.CHATML_TEMPLATE and LLAMA3_TEMPLATE are "
            "ready-made ones."
        )
    return tokenizer


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "float32",
    attn_implementation: str | None = None,
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """Load a causal LM from a local directory.

    Args:
        path: Directory with ``config.json`` and weights.
        dtype: Parameter dtype (``torch.dtype`` or a name such as ``"bf16"``).
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` lets
            transformers choose.
        device: Device to move the model to.

    Raises:
        ModelDirError: if the directory is missing or does not hold a causal LM.
    """
    p = _require_dir(path, "Model")
    if not (p / "config.json").is_file():
        hint = ""
        if (p / "adapter_config.json").is_file():
            hint = (" It looks like a PEFT adapter directory: load its base model, then wrap it with "
                    "peft.PeftModel.from_pretrained(base, adapter_dir) (or point at the merged model's directory).")
        raise ModelDirError(f"{str(p)!r} has no config.json, so it is not a model directory.{hint} " + _MAKE_TINY_HINT)
    raw_config = read_json_file(p / "config.json")
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(f"Could not read the config in {str(p)!r}: {exc}") from exc
    check_weights(p)
    check_vocabulary_fits(p, raw_config)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelDirError(
            f"{str(p)!r} holds a {', '.join(archs)} model, not a causal LM. load_model only loads decoder-only "
            "language models (architectures ending in 'ForCausalLM')."
        )
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelDirError(
                f"{str(p)!r} (model_type={config.model_type!r}) is not a causal-LM directory: {exc}"
            ) from exc
        raise ModelDirError(f"Could not load the model in {str(p)!r}: {exc}") from exc
    except (OSError, RuntimeError, KeyError) as exc:  # weights that do not match the config, a damaged file
        raise ModelDirError(f"Could not load the weights in {str(p)!r}: {type(exc).__name__}: {exc}") from exc
    return model.to(device)


def read_json_file(path: Path) -> Any:
    """``path`` parsed as UTF-8 JSON, or a :class:`ModelDirError` naming the file, line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{str(path)!r} line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})") from exc


def _weight_files(p: Path) -> list[Path]:
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set((read_json_file(index).get("weight_map") or {}).values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if not shards or missing:
            raise ModelDirError(f"{str(index)!r} names shards that are not there: {missing or 'none listed'}")
        return [p / s for s in shards]
    found = [f for f in (p / "model.safetensors", p / "pytorch_model.bin") if f.is_file()]
    if not found:
        raise ModelDirError(f"{str(p)!r} has config.json but no weights: expected model.safetensors, "
                            "model.safetensors.index.json with its shards, or pytorch_model.bin")
    return found[:1]


def check_weights(p: Path) -> None:
    """Every weight file is there and readable: a safetensors header that parses and data that reaches as far
    as the header says (a truncated or random file fails here, before any tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    for f in _weight_files(p):
        if f.suffix != ".safetensors":
            continue
        size = f.stat().st_size
        with open(f, "rb") as handle:
            head = handle.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < header_len <= size - 8:
            raise ModelDirError(f"{str(f)!r} is not a safetensors file (truncated or damaged: header length "
                                f"{header_len}, file size {size} bytes)")
        try:
            with safe_open(str(f), framework="pt") as opened:
                opened.keys()
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelDirError(f"{str(f)!r} is damaged or truncated: {exc}") from exc


def check_vocabulary_fits(p: Path, raw_config: dict) -> None:
    """A tokenizer saved beside the model must not produce ids past the embedding matrix (config
    ``vocab_size`` rows): such an id is an IndexError at the first training step, long after loading."""
    tokenizer_file = p / "tokenizer.json"
    rows = raw_config.get("vocab_size") if isinstance(raw_config, dict) else None
    if not tokenizer_file.is_file() or not isinstance(rows, int):
        return
    spec = read_json_file(tokenizer_file)
    vocab = (spec.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t.get("id", -1) for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    largest = max((i for i in ids if isinstance(i, int)), default=-1)
    if largest >= rows:
        raise ModelDirError(f"the tokenizer in {str(tokenizer_file)!r} has token id {largest}, but the model in "
                            f"{str(p)!r} has only {rows} embedding rows (config.json vocab_size): resize the "
                            "embeddings or use the tokenizer the model was trained with")


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a hard dependency, but stay importable without it
        return False
    return isinstance(model, PeftModel)


def _write_into(tmp: Path, model: Any, tokenizer: PreTrainedTokenizerBase | None, dtype: torch.dtype | None) -> None:
    """Write every file of a model directory into ``tmp`` (which must exist and be empty)."""
    if _is_peft_model(model):
        model.save_pretrained(str(tmp / "adapter"))
        model = copy.deepcopy(model).merge_and_unload()
    state_dict = None
    if dtype is not None:
        state_dict = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    model.save_pretrained(str(tmp), state_dict=state_dict)
    if dtype is not None:
        # save_pretrained records the in-memory dtype; record the dtype actually stored instead.
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in cfg or key == "dtype":
                cfg[key] = str(dtype).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
        _patch_tokenizer_config(tmp, tokenizer)


def _patch_tokenizer_config(directory: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the saved tokenizer reload exactly as it was.

    * An absent ``unk_token`` is written as an explicit ``null``: otherwise transformers 5
      model-specific classes (e.g. ``Qwen2Tokenizer``, forced for ``model_type == "qwen2"``)
      fall back to their default unk token and add it to the vocabulary.
    * Older transformers versions keep the chat template inside ``tokenizer_config.json``
      instead of ``chat_template.jinja``; nothing to do then. If neither holds it, write
      ``chat_template.jinja`` ourselves.
    """
    cfg_path = directory / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if getattr(tokenizer, "unk_token", None) is None and "unk_token" not in cfg:
        cfg["unk_token"] = None
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and "chat_template" not in cfg and not (directory / "chat_template.jinja").exists():
        (directory / "chat_template.jinja").write_text(template, encoding="utf-8")


def save_pretrained_dir(
    model: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Save model + tokenizer as a self-contained directory, atomically.

    Files are written into ``.<name>.tmp-<pid>`` next to ``out_dir`` and renamed into place;
    an existing ``out_dir`` is moved aside first and deleted afterwards, so ``out_dir`` never
    holds a half-written model.

    A ``peft.PeftModel`` is saved twice: its adapter goes to ``out_dir/adapter/`` and a
    merged copy (the original model is left untouched) is saved as full weights, so the
    directory loads with plain ``AutoModelForCausalLM.from_pretrained``.

    Args:
        model: A ``PreTrainedModel`` or a ``peft.PeftModel`` around one.
        tokenizer: Saved alongside (tokenizer files and chat template); may be ``None``.
        out_dir: Destination directory.
        dtype: If given, weights (and ``config.dtype``) are stored in this dtype; the
            in-memory model is not modified.

    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir).expanduser().absolute()
    with atomic_directory(out) as tmp:
        _write_into(tmp, model, tokenizer, resolve_dtype(dtype) if dtype is not None else None)
    return out
