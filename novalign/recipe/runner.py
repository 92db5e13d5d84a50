"""``novalign run RECIPE``: the whole recipe, stage after stage, each under ``<runs_dir>/<name>/<stage>/``.

    world -> pretrain -> sft -> pas -> prefs -> rm -> grpo -> merge -> eval -> report

The runner only wires: the stages and what they read are the table :data:`novalign.recipe.stages.STAGES`.
How reruns work:

* Every stage has a **key**: a hash of its own config sections (the values that differ from the defaults), the
  data sources that feed it when they are set, and the keys of the stages it reads (:func:`compute_keys`).
  Change a learning rate and that stage and everything downstream get new keys; a new config field with a
  default leaves finished stages finished.
* A finished stage writes ``DONE.json`` (key, wall seconds) atomically, last. On a rerun a stage whose
  ``DONE.json`` holds the current key is skipped.
* A stage that started but did not finish (killed) left ``STARTED.json`` with its key: with the same key its
  folder is kept and its trainer resumes from its own latest checkpoint; with another key (or when forced by
  ``--only`` / ``--from``) the folder is cleared first, so no stale checkpoint is resumed.
* ``--only STAGE`` runs that stage alone (the stages it reads must be finished); ``--from STAGE`` reruns
  that stage and every later one, reusing finished earlier stages.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from novalign.config import RecipeConfig
from novalign.data.io import output_lock, write_json_atomic
from novalign.recipe.context import RecipeContext, environment, read_done, stage_key
from novalign.recipe.stages import STAGES

__all__ = ["compute_keys", "plan_stages", "run_recipe", "active_stages"]


def active_stages(cfg: RecipeConfig) -> list[str]:
    """The recipe's stages in pipeline order (``stages`` unset: all of them).

    Raises:
        ValueError: a stage name that is not in the table, with the closest known name.
    """
    import difflib

    if cfg.stages is None:
        return list(STAGES)
    for name in cfg.stages:
        if name not in STAGES:
            close = difflib.get_close_matches(name, list(STAGES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"stages: unknown stage {name!r}{hint}; the stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in cfg.stages]


def _lookup(dumped: dict, dotted: str):
    value = dumped
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compute_keys(cfg: RecipeConfig) -> dict[str, str]:
    """Every enabled stage's key, in pipeline order."""
    keys: dict[str, str] = {}
    # only the values that differ from the defaults: a field added to a stage config later (with a default)
    # does not invalidate finished runs; the flip side is that a changed default in code needs --from
    dumped = cfg.model_dump(mode="json", exclude_defaults=True)
    for name in active_stages(cfg):
        spec = STAGES[name]
        section = {s: dumped.get(s) for s in spec.sections}
        section |= {s: v for s in spec.sources if (v := _lookup(dumped, s)) is not None}
        if any(s.startswith("data.") for s in section):
            section |= {s: v for s in spec.user_sources if (v := _lookup(dumped, s)) is not None}
        keys[name] = stage_key(section, {i: keys[i] for i in spec.inputs if i in keys})
    return keys


def plan_stages(cfg: RecipeConfig, only: str | None = None, start: str | None = None) -> list[tuple[str, bool]]:
    """(stage, forced) in order: ``--only`` gives one forced stage, ``--from`` forces it and every later one."""
    enabled = active_stages(cfg)
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
    write_json_atomic(started, {"key": key, "started": time.time()})


def run_recipe(cfg: RecipeConfig, *, only: str | None = None, start: str | None = None,
               console_print: Callable[[str], None] = print) -> dict[str, str]:
    """Run the recipe; returns {stage: "ran" | "skipped"}.

    Raises:
        ValueError: an unknown ``--only`` / ``--from`` stage, or ``--only`` on a stage whose inputs are
            not finished with their current keys.
        OutputLocked: another process is running a recipe in the same run folder.
    """
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.runs_dir) / cfg.name
    keys = compute_keys(cfg)
    with output_lock(run_dir, "novalign run"):  # a second run on the same folder is refused, not interleaved
        write_json_atomic(run_dir / "recipe.json", cfg.model_dump(mode="json"), indent=1)
        write_json_atomic(run_dir / "environment.json", environment())  # what the numbers depend on besides the seed
        return _run_stages(cfg, run_dir, keys, plan_stages(cfg, only, start), console_print)


def _run_stages(cfg: RecipeConfig, run_dir: Path, keys: dict[str, str], plan: list[tuple[str, bool]],
                console_print: Callable[[str], None]) -> dict[str, str]:
    status: dict[str, str] = {}
    for stage, forced in plan:
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
        STAGES[stage].run(RecipeContext(cfg, run_dir, stage, keys, console_print))
        wall = time.time() - t0
        write_json_atomic(out / "DONE.json", {"key": keys[stage], "wall_s": wall, "finished": time.time()})
        console_print(f"[{stage}] done in {wall:.1f} s")
        status[stage] = "ran"
    return status
