"""`novalign data ...`: the data flywheel's steps on your own files (report sections 3-4)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from novalign.cli.common import (_CONFIG_OPT, _HELP_CONFIG_OPT, _SET_OPT, _fail, _flag_overrides, _print_config_help,
                                 _stage_config)


data_app = typer.Typer(no_args_is_help=True, add_completion=False,
                       help="The data flywheel (report sections 3-4): data steps on your own files.")




@data_app.command("prefs")
def data_prefs_command(config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                       help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Preference groups from prompts (report 3.3): n samples per prompt from a local model, or the responses
    already in the records; scored by a reward mix; ROUGE-L near-duplicates and prompts without a score
    difference dropped (counted). Writes prefs.jsonl (the `novalign rm` group format), prompt_scores.jsonl and
    stats.json to output_dir."""
    from novalign.config import PrefsDataConfig

    cfg = _stage_config(PrefsDataConfig, config, set_, help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.prefs import run_prefs

    try:
        run_prefs(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("run")
def data_run_command(pipeline: Optional[Path] = typer.Argument(None, help="Pipeline YAML (see --help-config, README)."),
                     set_: list[str] = _SET_OPT, help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Run a record pipeline (report section 3, Figure 4): sources, then steps (dedup, filters, llm_generate,
    llm_judge, sample, balance ...), each into run_dir/steps/<name>-<key>/; a killed run resumes where it stopped
    with no LLM request repeated. Writes run_dir/report.md and funnel.png."""
    from novalign.config.pipeline import PipelineConfig

    if help_config:  # the pipeline's keys, then each step type's `config` keys
        from rich.console import Console
        from rich.table import Table

        from novalign.flywheel.steps import STEP_TYPES, describe_step_types  # importing it registers the steps

        types = Table(title="Step types (a step's `type`; its `config` keys: the table of its config class below)")
        for column in ("type", "config class", "what it does"):
            types.add_column(column)
        for row in describe_step_types():
            types.add_row(*row)
        Console().print(types)
        for schema in [PipelineConfig, *(STEP_TYPES[t].Config for t in sorted(STEP_TYPES))]:
            _print_config_help(schema)
        return
    if pipeline is None:
        _fail("give the pipeline YAML: novalign data run pipeline.yaml (see --help-config)")
    cfg = _stage_config(PipelineConfig, pipeline, set_, False)
    from novalign.config import ConfigError
    from novalign.data.io import DataError
    from novalign.flywheel.pipeline import Pipeline

    try:
        Pipeline.from_config(cfg, str(pipeline)).run(console_print=typer.echo)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("constraints")
def data_constraints_command(
    check_file: Optional[Path] = typer.Option(None, "--check", help="Score a JSONL of {response, constraints} records."),
    coverage_file: Optional[Path] = typer.Option(None, "--coverage", help="A text file of constraint sentences, one a "
                                                 "line: the share the library can express."),
) -> None:
    """The instruction-following constraint library (report 4.1): list its types (name, category, a description);
    --check scores responses with its validators (CSR, ISR, per type, one JSON line); --coverage measures how much
    of an instruction pool's constraints it can express. The data steps (constraint_expand, response_reverse,
    sysmsg_decompose, sysmsg_assemble, textbook) run through `novalign data run`."""
    import json

    from novalign.data.io import DataError
    from novalign.eval.constraints import REGISTRY, describe

    try:
        if check_file is not None:
            from novalign.eval.constraints.evaluate import read_constrained, score_records

            typer.echo(json.dumps(score_records(read_constrained(check_file))))
        elif coverage_file is not None:
            from novalign.flywheel.constraints.attributes import coverage

            lines = [ln.strip() for ln in coverage_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
            typer.echo(json.dumps(coverage(lines), ensure_ascii=False))
        else:
            for name, t in REGISTRY.items():
                typer.echo(f"{name}\t{t.category}\t{describe(name, t.example)}")
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


def _chain_command(name: str, step_type: str, help_text: str) -> None:
    """``novalign data <name>``: one step of the preference-data chain (issue 18) on a file."""

    def command(input_file: Path = typer.Option(..., "--input", help="Records (JSONL/Parquet): prompts, groups or texts."),
                run_dir: Path = typer.Option(Path("runs/prefdata"), "--run-dir", help="The step's folder goes here."),
                output: Optional[Path] = typer.Option(None, "--output", help="Copy the step's records.jsonl here."),
                id_field: Optional[str] = typer.Option(None, "--id-field", help="Record field with a unique id."),
                base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible URL of the LLM (.../v1)."),
                model: Optional[str] = typer.Option(None, "--model", help="Model name (or folder with --backend local)."),
                backend: str = typer.Option("openai", "--backend", help="openai, local (a model folder) or vllm."),
                api_key: Optional[str] = typer.Option(None, "--api-key", help="API key of the LLM endpoint."),
                config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                help_config: bool = _HELP_CONFIG_OPT) -> None:
        from novalign.flywheel.steps import STEP_TYPES

        cfg = _stage_config(STEP_TYPES[step_type].Config, config, set_, help_config)
        if cfg is None:
            return
        from novalign.config.llm import LLMConfig
        from novalign.data.io import DataError
        from novalign.flywheel.chain import run_single

        llm = None
        if base_url or model:
            llm = LLMConfig(backend=backend, model=model or "", base_url=base_url, api_key=api_key)
        try:
            stats = run_single(step_type, cfg, input_file, run_dir, llm=llm, output=output, id_field=id_field,
                               console_print=typer.echo)
        except (DataError, ValueError, FileNotFoundError) as exc:
            _fail(str(exc))
        typer.echo(f"{name}: {stats['records_in']} in, {stats['records_out']} out, dropped {stats['dropped_by_reason']}")

    command.__doc__ = f"{help_text} (step `{step_type}`; --help-config lists its keys)"
    data_app.command(name)(command)


def _register_chain_commands() -> None:
    from novalign.flywheel.chain import CHAIN_COMMANDS

    for name, (step_type, help_text) in CHAIN_COMMANDS.items():
        _chain_command(name, step_type, help_text)

_register_chain_commands()


@data_app.command("annotate-export")
def data_annotate_export_command(
    input_file: Path = typer.Option(..., "--input", help="Group records {prompt, responses: [{content, ...}]}."),
    output: Path = typer.Option(..., "--output", help="Annotation tasks JSONL (novalign.data.annotation)."),
    score_field: str = typer.Option("score", help="Response field shown to annotators as the machine score."),
) -> None:
    """Export preference groups as annotation tasks (ranking, 1-5 helpfulness/fluency/safety, error spans)."""
    from novalign.data.io import DataError
    from novalign.flywheel.chain import export_tasks

    try:
        n = export_tasks(input_file, output, score_field=score_field)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"exported {n} tasks -> {output}")


@data_app.command("annotate-import")
def data_annotate_import_command(
    tasks: Path = typer.Option(..., "--tasks", help="The exported tasks JSONL."),
    results: list[Path] = typer.Option(..., "--results", help="Finished annotations JSONL (repeatable)."),
    output: Path = typer.Option(..., "--output", help="RM-ready groups {prompt, responses: [{content, score, model, rank}]}."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Also write TRL pairs (prompt, chosen, rejected, scores)."),
    normalize: str = typer.Option("minmax", help="Per-annotator normalization: minmax, zscore, range or none."),
    max_pairs: Optional[int] = typer.Option(None, help="Most pairs per group (widest score gap first)."),
) -> None:
    """Import finished annotations: per-annotator score normalization (equation 1's r-hat), RM groups, TRL pairs."""
    from novalign.data.io import DataError
    from novalign.flywheel.chain import import_results

    try:
        stats = import_results(tasks, list(results), output, pairs, normalize=normalize, max_pairs=max_pairs)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"imported {stats['results']} results from {stats['annotators']} annotators: {stats['groups']} groups, "
               f"{stats['pairs']} pairs -> {output}")


@data_app.command("label")
def data_label_command(
        input: Path = typer.Argument(..., help="Prompt records (JSONL / Parquet) with a `prompt` field."),
        output: Path = typer.Argument(..., help="Labeled records: labels, label_confidence, label_votes."),
        labeler: list[str] = typer.Option(..., "--labeler", help="A labeler: model, model@URL or name=model@URL "
                                          "(repeat for several); URL defaults to --base-url."),
        base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server of the labelers."),
        n: int = typer.Option(1, help="Votes per labeler (samples at --temperature)."),
        method: str = typer.Option("dawid_skene", help="dawid_skene or majority."),
        taxonomy: Optional[Path] = typer.Option(None, help="Taxonomy YAML (default: the bundled one)."),
        review_share: float = typer.Option(0.1, help="Share of least confident records sent to review."),
        review_out: Optional[Path] = typer.Option(None, help="Review queue (labels annotation tasks)."),
        review_unit: str = typer.Option("label", help="label: the least confident labels; record: prompts."),
        run_dir: Path = typer.Option(Path("runs/label"), help="Pipeline folder (steps, request cache)."),
        temperature: float = typer.Option(0.7), max_tokens: int = typer.Option(256)) -> None:
    """Vote labels on every dimension of the taxonomy with k LLM labelers (majority or Dawid-Skene), a
    confidence per label, failed votes counted; the least confident share to a review queue."""
    from novalign.config.llm import LLMConfig
    import json

    from novalign.flywheel.prompt_system import label_file

    try:
        summary = label_file(input, output, labeler, run_dir=run_dir, n=n, method=method,
                             taxonomy=str(taxonomy) if taxonomy else None, review_share=review_share,
                             review_out=review_out, review_unit=review_unit, llm=LLMConfig(base_url=base_url, progress=False),
                             temperature=temperature, max_tokens=max_tokens, console_print=typer.echo)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary))


@data_app.command("label-import")
def data_label_import_command(
        labeled: Path = typer.Argument(..., help="Labeled records (novalign data label's output)."),
        results: list[Path] = typer.Argument(..., help="Annotation result files (kind: labels)."),
        output: Path = typer.Option(..., "--out", help="Records with the human labels over the votes."),
        taxonomy: Optional[Path] = typer.Option(None)) -> None:
    """Human label corrections from the review queue win over the voted labels."""
    from novalign.data.io import DataError
    import json

    from novalign.flywheel.prompt_system import import_corrections

    try:
        typer.echo(json.dumps(import_corrections(labeled, results, output, str(taxonomy) if taxonomy else None)))
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("train-classifier")
def data_train_classifier_command(
        input: Path = typer.Argument(..., help="Labeled records."),
        out: Path = typer.Option(..., "--out", help="Classifier folder."),
        field: str = typer.Option("labels", help="The labels to learn (dotted path)."),
        true_field: Optional[str] = typer.Option(None, help="Also score against these labels (e.g. true_labels)."),
        test_share: float = typer.Option(0.2, help="Held-out share for the scores (0: none)."),
        taxonomy: Optional[Path] = typer.Option(None),
        char_ngrams: bool = typer.Option(True, help="Offer character 1-3-gram TF-IDF features beside the MiniLM embedding (each head picks its blocks by CV)."),
        kind: str = typer.Option("embedding", help="embedding (MiniLM + logistic-regression heads) or lm (a tiny "
                                 "causal LM fine-tuned on prompt -> label JSON)."),
        lm_config: Optional[Path] = typer.Option(None, help="--kind lm: a YAML/JSON of LMClassifierConfig fields "
                                                 "(model size, steps, lr, instruction, ...)."),
        lm_steps: Optional[int] = typer.Option(None, help="--kind lm: optimizer steps (overrides lm-config).")) -> None:
    """Train the prompt classifier on voted labels: frozen all-MiniLM-L6-v2 embeddings with one
    logistic-regression head per dimension (--kind embedding), or a fine-tuned tiny causal LM (--kind lm);
    prints held-out accuracy / macro-F1 beside a TF-IDF + LR baseline."""
    import json

    from novalign.flywheel.prompt_system import train_from_file

    if kind not in ("embedding", "lm"):
        _fail(f"--kind {kind!r}: choose embedding or lm")
    try:
        if kind == "lm":
            metrics = _train_lm(input, out, field, true_field, test_share, taxonomy, lm_config, lm_steps)
        else:
            metrics = train_from_file(input, out, field=field, true_field=true_field, test_share=test_share,
                                      taxonomy=str(taxonomy) if taxonomy else None, char_ngrams=char_ngrams)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(metrics))


def _train_lm(input: Path, out: Path, field: str, true_field: Optional[str], test_share: float,
              taxonomy: Optional[Path], lm_config: Optional[Path], lm_steps: Optional[int]) -> dict:
    import yaml
    from pydantic import ValidationError

    from novalign.flywheel.classify_lm import LMClassifierConfig, train_lm_from_file

    raw = {}
    if lm_config is not None:
        try:
            raw = yaml.safe_load(lm_config.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ValueError(f"{lm_config}:{mark.line + 1 if mark else '?'}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{lm_config}: expected a mapping of LMClassifierConfig fields")
    if lm_steps is not None:
        raw["steps"] = lm_steps
    try:
        cfg = LMClassifierConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{lm_config or '--lm-steps'}: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    return train_lm_from_file(input, out, field=field, true_field=true_field, test_share=test_share,
                              taxonomy=str(taxonomy) if taxonomy else None, config=cfg)


@data_app.command("classify")
def data_classify_command(input: Path = typer.Argument(...), output: Path = typer.Argument(...),
                          model: Path = typer.Option(..., "--model", help="Classifier folder."),
                          overwrite: bool = typer.Option(False, help="Replace labels already present.")) -> None:
    """Label prompts with the trained classifier (either kind: the folder says which), without an LLM."""
    import json

    from novalign.flywheel.classify_lm import classify_lm_file, is_lm_classifier
    from novalign.flywheel.prompt_system import classify_file

    try:
        if is_lm_classifier(model):
            typer.echo(json.dumps(classify_lm_file(input, output, model, overwrite=overwrite)))
            return
        typer.echo(json.dumps(classify_file(input, output, model, overwrite=overwrite)))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        _fail(str(exc))


@data_app.command("coverage")
def data_coverage_command(input: Path = typer.Argument(..., help="Labeled records."),
                          out: Path = typer.Option(Path("runs/coverage"), "--out"),
                          field: str = typer.Option("labels"), taxonomy: Optional[Path] = typer.Option(None),
                          min_count: int = typer.Option(10, help="Leaves with fewer records are thin."),
                          crosstab: list[str] = typer.Option(["ability,language", "ability,difficulty"],
                                                             help="Two dimensions, comma-separated (repeat).")) -> None:
    """Coverage of labeled prompts: counts per leaf, empty and thin leaves, cross-tabs; coverage.md, .json, PNGs."""
    import json

    from novalign.flywheel.prompt_system import coverage_file

    try:
        pairs = [tuple(c.split(",", 1)) for c in crosstab]
        rep = coverage_file(input, out, field=field, taxonomy=str(taxonomy) if taxonomy else None,
                            min_count=min_count, crosstabs=pairs)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"records": rep["records"], "files": rep["files"]}))


@data_app.command("select-diverse")
def data_select_diverse_command(input: Optional[Path] = typer.Option(None, "--input", help="Records file."),
                                output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Output folder."),
                                budget: Optional[float] = typer.Option(None, help="A share in (0, 1] or a count."),
                                config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                                help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Task-aware diversity selection (report 3.1.2): two-level k-means, LCS hard pairs among near neighbours,
    a triplet fine-tune of all-MiniLM-L6-v2, layered agglomerative clustering, a budget covering the clusters.
    Writes selected.jsonl, clusters.jsonl (each record's cluster path), report.md, cluster_sizes.png, embedder/."""
    from novalign.config.selection import SelectDiverseRunConfig

    flags = {"input": str(input) if input else None, "output_dir": str(output_dir) if output_dir else None,
             "budget": budget}
    cfg = _stage_config(SelectDiverseRunConfig, config, [*set_, *_flag_overrides(flags)], help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.diversity_run import run_select_diverse

    try:
        run_select_diverse(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))


@data_app.command("score-quality")
def data_score_quality_command(input: Optional[Path] = typer.Option(None, "--input", help="Records file."),
                               output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Output folder."),
                               config: Optional[Path] = _CONFIG_OPT, set_: list[str] = _SET_OPT,
                               help_config: bool = _HELP_CONFIG_OPT) -> None:
    """Anchored pairwise prompt quality (report 3.1.3): anchors per bucket, several judges on Clarity /
    Practicality / Complexity / Novelty, each pair judged in both orders, aggregated per prompt; a threshold per
    bucket. Writes scored.jsonl, selected.jsonl, anchors.jsonl, judgments.jsonl, stats.json, report.md."""
    from novalign.config.selection import ScoreQualityRunConfig

    flags = {"input": str(input) if input else None, "output_dir": str(output_dir) if output_dir else None}
    cfg = _stage_config(ScoreQualityRunConfig, config, [*set_, *_flag_overrides(flags)], help_config)
    if cfg is None:
        return
    from novalign.data.io import DataError
    from novalign.flywheel.quality_run import run_score_quality

    try:
        run_score_quality(cfg, console_print=typer.echo)
    except (DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
