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

__all__ = ["ModelDirError", "resolve_dtype", "load_tokenizer", "load_model", "save_pretrained_dir"]

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
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelDirError(f"Could not read the config in {str(p)!r}: {exc}") from exc
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
        raise
    return model.to(device)


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
