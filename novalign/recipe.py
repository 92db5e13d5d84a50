"""``novalign run RECIPE``: the whole recipe, stage after stage, each under ``<runs_dir>/<name>/<stage>/``.

    world -> pretrain -> sft -> pas -> prefs -> rm -> grpo -> merge -> eval -> report

How reruns work:

* Every stage has a **key**: a hash of its own config section (the values that differ from the defaults) and
  the keys of the stages it reads (:func:`stage_key`). Change a learning rate and that stage and everything
  downstream get new keys; a new config field with a default leaves finished stages finished.
* A finished stage writes ``DONE.json`` (key, wall seconds) atomically, last. On a rerun a stage whose
  ``DONE.json`` holds the current key is skipped.
* A stage that started but did not finish (killed) left ``STARTED.json`` with its key: with the same key its
  folder is kept and its trainer resumes from its own latest checkpoint; with another key (or when forced by
  ``--only`` / ``--from``) the folder is cleared first, so no stale checkpoint is resumed.
* ``--only STAGE`` runs that stage alone (the stages it reads must be finished); ``--from STAGE`` reruns
  that stage and every later one, reusing finished earlier stages.

Extension points: a new stage is a function ``run(ctx) -> None`` in :mod:`novalign.recipe_stages` plus an
entry in :data:`STAGES` (its inputs and config section); ``eval`` picks up every model a stage registers in
:func:`novalign.recipe_stages.stage_models` (PAS adds ``<label>+pas`` rows: a model behind the PAS model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from novalign.config import RECIPE_STAGES, RecipeConfig

__all__ = ["STAGES", "StageSpec", "RecipeContext", "stage_key", "plan_stages", "run_recipe", "read_done"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[str, ...]  # stages whose outputs this one reads (when they are part of the recipe)
    sections: tuple[str, ...]  # RecipeConfig fields that configure it
    keep_on_change: bool = False  # keep the folder when the key changes (the stage caches by its own keys)


STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("world", (), ("world",)),
    StageSpec("pretrain", ("world",), ("base", "pretrain")),
    StageSpec("sft", ("world", "pretrain"), ("base", "sft", "sft_replay")),
    StageSpec("pas", ("world", "pretrain", "sft"), ("pas",)),
    StageSpec("prefs", ("world", "sft"), ("prefs",)),
    StageSpec("rm", ("prefs", "sft"), ("rm",)),
    StageSpec("grpo", ("world", "sft", "prefs", "rm"), ("grpo", "rl_rewards", "rl_prompt_filter")),
    StageSpec("merge", ("world", "sft"), ("merge",)),
    StageSpec("eval", ("world", "pretrain", "sft", "pas", "grpo", "merge"), ("base", "eval"), keep_on_change=True),
    StageSpec("report", ("eval",), ()),
]}
assert tuple(STAGES) == RECIPE_STAGES


def stage_key(config: dict, input_keys: dict[str, str]) -> str:
    """sha256 of the stage's config sections and its inputs' keys (canonical JSON), 16 hex digits.

    >>> stage_key({"lr": 1e-3}, {}) == stage_key({"lr": 1e-3}, {})
    True
    """
    blob = json.dumps({"config": config, "inputs": input_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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
        return stage in self.cfg.stages


def compute_keys(cfg: RecipeConfig) -> dict[str, str]:
    """Every enabled stage's key, in pipeline order."""
    keys: dict[str, str] = {}
    # only the values that differ from the defaults: a field added to a stage config later (with a default)
    # does not invalidate finished runs; the flip side is that a changed default in code needs --from
    dumped = cfg.model_dump(mode="json", exclude_defaults=True)
    for name, spec in STAGES.items():
        if name not in cfg.stages:
            continue
        section = {s: dumped.get(s) for s in spec.sections}
        keys[name] = stage_key(section, {i: keys[i] for i in spec.inputs if i in keys})
    return keys


def plan_stages(cfg: RecipeConfig, only: str | None = None, start: str | None = None) -> list[tuple[str, bool]]:
    """(stage, forced) in order: ``--only`` gives one forced stage, ``--from`` forces it and every later one."""
    enabled = [s for s in RECIPE_STAGES if s in cfg.stages]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in enabled:
            raise ValueError(f"{flag} {value}: not a stage of this recipe; its stages are {', '.join(enabled)}")
    if only is not None and start is not None:
        raise ValueError("give --only or --from, not both")
    if only is not None:
        return [(only, True)]
    first = enabled.index(start) if start is not None else len(enabled)
    return [(s, i >= first) for i, s in enumerate(enabled)]


def _prepare_dir(out: Path, key: str, forced: bool, keep: bool) -> None:
    started = out / "STARTED.json"
    old = json.loads(started.read_text()).get("key") if started.is_file() else None
    if out.exists() and (forced or old != key) and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "DONE.json").unlink(missing_ok=True)
    _write_json_atomic(started, {"key": key, "started": time.time()})


def run_recipe(cfg: RecipeConfig, *, only: str | None = None, start: str | None = None,
               console_print: Callable[[str], None] = print) -> dict[str, str]:
    """Run the recipe; returns {stage: "ran" | "skipped"}.

    Raises:
        ValueError: an unknown ``--only`` / ``--from`` stage, or ``--only`` on a stage whose inputs are
            not finished with their current keys.
    """
    from novalign import recipe_stages

    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.runs_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    keys = compute_keys(cfg)
    status: dict[str, str] = {}
    for stage, forced in plan_stages(cfg, only, start):
        out = run_dir / stage
        done = read_done(out)
        if not forced and done is not None and done.get("key") == keys[stage]:
            console_print(f"[{stage}] up to date (key {keys[stage]}), skipped")
            status[stage] = "skipped"
            continue
        missing = [i for i in STAGES[stage].inputs if i in keys and (read_done(run_dir / i) or {}).get("key") != keys[i]]
        if missing:
            raise ValueError(f"stage {stage} needs finished stages {', '.join(missing)} (run them first, or drop --only)")
        console_print(f"[{stage}] running (key {keys[stage]})")
        _prepare_dir(out, keys[stage], forced, STAGES[stage].keep_on_change)
        t0 = time.time()
        getattr(recipe_stages, f"run_{stage}")(RecipeContext(cfg, run_dir, stage, keys, console_print))
        wall = time.time() - t0
        _write_json_atomic(out / "DONE.json", {"key": keys[stage], "wall_s": wall, "finished": time.time()})
        console_print(f"[{stage}] done in {wall:.1f} s")
        status[stage] = "ran"
    return status
