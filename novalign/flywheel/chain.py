"""The preference-data chain as commands: ``novalign data <step>`` runs one chain step on a file (a one-step
pipeline, so it resumes, caches LLM replies and records every drop like ``novalign data run``), and
``novalign data annotate-export`` / ``annotate-import`` are the hand-off to and from annotators.

A whole chain is a pipeline YAML (``novalign data run``), e.g. ``respond -> autorate -> response_rouge ->
prefilter -> drop_rules -> revise -> rm_groups``; see the README's quick start.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the CLI imports this module at start-up: keep it light
    from pydantic import BaseModel

    from novalign.config.llm import LLMConfig

__all__ = ["CHAIN_COMMANDS", "run_single", "export_tasks", "import_results"]

CHAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "respond": ("respond", "n samples per prompt from several models with quotas (report 3.3 defaults: 5 samples, "
                "temperature 1, top_p 0.99, top_k 50) -> one group per prompt, model and parameters per response."),
    "autorate": ("autorate", "The three AutoRators (absolute, pairwise same-chain-same-result, golden answer with "
                 "rule checkers), chosen by the prompt's labels."),
    "rm-score": ("rm_score", "Score every response with a trained reward model (as `novalign rm score`)."),
    "prefilter": ("prefilter", "A graded best / middle / worst subset per group by a reward-model or judge score."),
    "rouge": ("response_rouge", "ROUGE-L filter: near-identical responses out, prompts the models answer alike out."),
    "drop-rules": ("drop_rules", "Drop all-high and within-margin groups (counted by reason); flag all-low ones."),
    "rm-groups": ("rm_groups", "RM-ready groups {prompt, responses: [{content, score, model}]} for novalign rm."),
    "revise": ("revise", "Critique then revise all-low groups (for annotators, or judge-checked into SFT records)."),
    "backtranslate": ("backtranslate", "Instruction back-translation of high-quality texts with self-curation."),
    "style": ("style", "Style cards (concise-direct, detailed-structured, your own) into prompts, label kept."),
    "refusal-label": ("refusal_label", "Refusal detector: rules, plus an optional judge."),
    "refusal-govern": ("refusal_govern", "Cap the share of refusals per category (surplus dropped, counted)."),
    "refusal-constraints": ("refusal_constraints", "Refusal constraints into the system message of chosen categories."),
}
"""``novalign data <command>`` -> (the step type it runs, its help line)."""


def run_single(step_type: str, config: "BaseModel | dict", input_path: str | Path, run_dir: str | Path, *,
               llm: "LLMConfig | None" = None, output: str | Path | None = None, id_field: str | None = None,
               console_print: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one step on ``input_path`` into ``run_dir`` (copying its records to ``output`` when given); returns
    the step's stats (in, out, dropped by reason)."""
    from novalign.flywheel.pipeline import Pipeline

    p = Pipeline(run_dir, llm=llm, progress=False)
    p.source("input", input_path, id_field=id_field)
    p.step(step_type, step_type, config if isinstance(config, dict) else config.model_dump())
    result = p.run(console_print=console_print)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.outputs[step_type], output)
    return result.steps[0]


def export_tasks(groups_path: str | Path, tasks_path: str | Path, *, score_field: str = "score") -> int:
    """Annotation tasks (``novalign.data.annotation`` format) from group records; returns how many."""
    from novalign.data.annotation import write_tasks
    from novalign.data.io import DataError, iter_records
    from novalign.flywheel.handoff import group_to_task

    tasks = []
    for line, record in iter_records(Path(groups_path)):
        if not isinstance(record.get("responses"), list) or "prompt" not in record:
            raise DataError(groups_path, line, "responses", "a group record needs `prompt` and a `responses` list",
                            reason="not a group")
        record.setdefault("_id", f"{Path(groups_path).stem}-{line}")
        try:
            tasks.append(group_to_task(record, score_field=score_field))
        except ValueError as exc:
            raise DataError(groups_path, line, None, str(exc), reason="bad group") from None
    return write_tasks(tasks_path, tasks)


def import_results(tasks_path: str | Path, results_paths: list[str | Path], groups_out: str | Path,
                   pairs_out: str | Path | None = None, *, normalize: str = "minmax",
                   weights: dict[str, float] | None = None, max_pairs: int | None = None) -> dict[str, Any]:
    """RM-ready groups (and TRL pairs) from finished annotations; writes them and ``<groups_out>.stats.json``."""
    from novalign.data.annotation import read_tasks
    from novalign.data.io import write_json_atomic, write_jsonl
    from novalign.flywheel.handoff import import_annotations, read_results_located

    tasks, _ = read_tasks([tasks_path])
    located = [(str(p), line, r) for p in results_paths for line, r in read_results_located(p)]
    groups, pairs, stats = import_annotations(tasks, located, weights=weights, normalize=normalize, max_pairs=max_pairs)
    write_jsonl(groups_out, groups)
    if pairs_out is not None:
        write_jsonl(pairs_out, pairs)
    write_json_atomic(Path(str(groups_out) + ".stats.json"), stats.to_dict(), indent=1)
    return stats.to_dict()
