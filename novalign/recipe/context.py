"""What every stage of ``novalign run`` shares: the context a stage function gets, stage keys, done markers,
and where the recipe's models and data live.

This module imports nothing else of the recipe, so stages, the report and the runner all build on it
without a cycle (``runner -> stages -> report -> context``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from novalign.config import RecipeConfig
from novalign.data.io import iter_records

__all__ = ["RecipeContext", "stage_key", "read_done", "base_model_dir", "stage_models", "model_stage", "environment"]


def stage_key(config: dict, input_keys: dict[str, str]) -> str:
    """sha256 of the stage's config sections and its inputs' keys (canonical JSON), 16 hex digits.

    >>> stage_key({"lr": 1e-3}, {}) == stage_key({"lr": 1e-3}, {})
    True
    """
    blob = json.dumps({"config": config, "inputs": input_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_done(stage_dir: Path) -> dict | None:
    """The stage's ``DONE.json``, or None when it has not finished."""
    path = stage_dir / "DONE.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class RecipeContext:
    """What a stage function gets: the recipe, the run folder, its own folder, every stage's key."""

    cfg: RecipeConfig
    run_dir: Path
    stage: str
    keys: dict[str, str]
    print: Callable[[str], None] = print

    @property
    def out(self) -> Path:
        return self.run_dir / self.stage

    def dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def enabled(self, stage: str) -> bool:
        return self.cfg.stages is None or stage in self.cfg.stages

    def world_file(self, name: str) -> str:
        """A file the world stage wrote (``world/<name>.jsonl``)."""
        if not self.enabled("world"):
            raise ValueError(f"stage {self.stage}: needs the world's {name}.jsonl, but the recipe has no world stage; "
                             f"name the data in the recipe's `data:` section instead")
        return str(self.dir("world") / f"{name}.jsonl")

    def read(self, path: str | Path) -> list[dict]:
        return [record for _, record in iter_records(Path(path))]


def base_model_dir(ctx: RecipeContext) -> str:
    """The base model: ``base.path`` when given, else the pretrain stage's model."""
    if ctx.cfg.base.path:
        return ctx.cfg.base.path
    if not ctx.enabled("pretrain"):
        raise ValueError("no base model: set base.path or enable the pretrain stage")
    return str(ctx.dir("pretrain") / "model")


def stage_models(ctx: RecipeContext) -> dict[str, tuple[str, bool]]:
    """Every model the recipe made, in report order: label -> (directory, evaluate as plain-text base).
    A label ending in ``+pas`` is that model behind the PAS model."""
    # the base twice: honestly (plain-text few-shot) and, for contrast, with a chat template it never saw;
    # plain few-shot needs the world's prompt format, so a recipe on user data evaluates the base as chat only
    base = base_model_dir(ctx)
    models = {"base": (base, True), "base_chat": (base, False)} if ctx.enabled("world") else {"base": (base, False)}
    if ctx.enabled("sft"):
        models["sft"] = (str(ctx.dir("sft") / "model"), False)
    if ctx.enabled("grpo"):
        models["grpo"] = (str(ctx.dir("grpo") / "model"), False)
    if ctx.enabled("merge"):
        for spec in ctx.cfg.merge.specialists:
            models[f"spec_{spec.name}"] = (str(ctx.dir("merge") / f"spec_{spec.name}" / "model"), False)
        for method in ctx.cfg.merge.methods:
            models[f"merge_{method}"] = (str(ctx.dir("merge") / method), False)
    if ctx.enabled("pas"):
        for label in ctx.cfg.pas.in_front_of:
            if label not in models or models[label][1]:
                raise ValueError(f"pas.in_front_of: {label!r} is not a chat model of this recipe; "
                                 f"choose from {', '.join(m for m, (_, plain) in models.items() if not plain)}")
            models[f"{label}+pas"] = models[label]
    return models


def model_stage(label: str) -> str:
    """The stage that made the model ``label`` (without a ``+pas`` suffix)."""
    return {"base": "pretrain", "base_chat": "pretrain", "sft": "sft", "grpo": "grpo"}.get(label, "merge")


def environment() -> dict:
    """What a CPU run's numbers depend on besides the seed: package versions and torch's CPU kernel set.

    Measured here: tokenizer training and initialization are identical across thread counts, and training on 1
    or 2 threads gives bit-identical weights; forcing torch's kernels from AVX512 to AVX2
    (``ATEN_CPU_CAPABILITY=avx2``) moves an SFT loss in the 6th decimal, which is enough for greedy answers to
    diverge over a whole demo. So a table is reproducible given the seed, these versions and this kernel set.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    packages = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "packages": packages, "cpu": cpu,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}
