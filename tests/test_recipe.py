"""``novalign run``: the reduced demo end to end, skip-on-rerun, --only / --from, keys, resume, the report,
and the real-scale recipe validated by the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from novalign.config import ConfigError, RecipeConfig, load_config
from novalign.recipe import STAGES, compute_keys, plan_stages, run_recipe, stage_key
from novalign.recipe.report import deltas
from novalign.recipe.runner import _prepare_dir

RECIPE_STAGES = tuple(STAGES)

ROOT = Path(__file__).resolve().parent.parent


def test_real_scale_and_demo_recipes_validate():
    big = load_config(RecipeConfig, ROOT / "recipes" / "qwen2-7b.yaml")
    assert big.base.path and "pretrain" not in big.stages
    assert big.llm is not None and big.llm.base_url
    assert big.sft.train.precision == "bf16"
    # the user's data and the endpoint, not the world: every stage reads a data source, the judge is `llm`
    assert "world" not in big.stages and big.data.sft_files and big.data.rl_prompt_files and big.data.eval_suites
    judge = next(c for c in big.grpo.rewards if c.type == "llm_judge")
    assert judge.llm == big.llm
    assert set(compute_keys(big)) == set(big.stages)
    demo = load_config(RecipeConfig, ROOT / "recipes" / "demo.yaml")
    assert demo.stages is None  # every stage
    with pytest.raises(ConfigError, match="sft.optim.learning_rate: unknown key"):
        load_config(RecipeConfig, ROOT / "recipes" / "demo.yaml", ["sft.optim.learning_rate=1"])


def test_keys_change_downstream_only():
    """Changing the SFT learning rate changes the keys of sft and of every stage that reads it, not before."""
    cfg = RecipeConfig()
    before = compute_keys(cfg)
    cfg.sft.optim.lr = 3e-4
    after = compute_keys(cfg)
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"sft", "pas", "prefs", "rm", "grpo", "merge", "eval", "report"}
    cfg.sft.optim.lr = RecipeConfig().sft.optim.lr  # back to the default: back to the same keys
    assert compute_keys(cfg) == before
    assert stage_key({"a": 1}, {"x": "k"}) == stage_key({"a": 1}, {"x": "k"}) != stage_key({"a": 2}, {"x": "k"})


def test_plan_only_and_from():
    cfg = RecipeConfig(stages=["world", "pretrain", "sft", "eval", "report"])
    assert plan_stages(cfg, only="sft") == [("sft", True)]
    assert plan_stages(cfg, start="sft") == [("world", False), ("pretrain", False), ("sft", True), ("eval", True),
                                             ("report", True)]
    with pytest.raises(ValueError, match="--only grpo: not a stage of this recipe"):
        plan_stages(cfg, only="grpo")


def test_resume_keeps_a_started_folder_only_for_the_same_key(tmp_path):
    """Killed stage, same key: the folder (with its checkpoints) stays for the trainer to resume; a new key
    or a forced rerun clears it; DONE.json is removed either way until the stage finishes again."""
    out = tmp_path / "sft"
    _prepare_dir(out, "k1", forced=False, keep=False)
    (out / "checkpoints").mkdir()
    (out / "DONE.json").write_text("{}")
    _prepare_dir(out, "k1", forced=False, keep=False)
    assert (out / "checkpoints").is_dir() and not (out / "DONE.json").exists()
    _prepare_dir(out, "k2", forced=False, keep=False)
    assert not (out / "checkpoints").exists()
    (out / "checkpoints").mkdir()
    _prepare_dir(out, "k2", forced=True, keep=False)
    assert not (out / "checkpoints").exists()




def test_grpo_prompts_pool_and_capabilities(tmp_path):
    """A world with a GRPO pool of 3 prompts per capability: rl_capabilities [math, if] -> 6 prompts, none of
    them an eval prompt; 'mixed' cannot filter a pool; an unknown capability is named."""
    from novalign.recipe import RecipeContext
    from novalign.recipe.stages import _grpo_prompts
    from novalign.world import build_world, write_world
    from novalign.world.generator import task_key

    cfg = RecipeConfig.model_validate({
        "world": {"num_countries": 10, "sft_per_capability": 10, "rl_per_capability": 2, "eval_per_capability": 4,
                  "corpus_fact_repeats": 1, "corpus_worked_examples": 4, "pas_prompts": 4, "grpo_per_capability": 3},
        "rl_capabilities": ["math", "if"], "rl_prompt_filter": "all"})
    world = build_world(cfg.world)
    write_world(world, tmp_path / "world")
    ctx = RecipeContext(cfg, tmp_path, "grpo", {}, print=lambda *_: None)
    (tmp_path / "grpo").mkdir()
    rows = [json.loads(line) for line in _grpo_prompts(ctx).read_text().splitlines()]
    assert sorted(r["capability"] for r in rows) == ["if"] * 3 + ["math"] * 3
    held_out = {task_key(t) for ts in world["eval"].values() for t in ts}
    assert not {task_key(r) for r in rows} & held_out
    with pytest.raises(ValueError, match="unknown \\['maths'\\]"):
        _grpo_prompts(RecipeContext(cfg.model_copy(update={"rl_capabilities": ["maths"]}), tmp_path, "grpo", {}))
    with pytest.raises(ValueError, match="use rl_prompt_filter: all"):
        _grpo_prompts(RecipeContext(cfg.model_copy(update={"rl_prompt_filter": "mixed"}), tmp_path, "grpo", {}))


def test_deltas_by_hand():
    rates = {"base": {"math": 0.25, "if": 0.0}, "sft": {"math": 0.5, "if": 0.75}}
    assert deltas(rates, "base") == {"sft": {"math": 0.25, "if": 0.75}}
    assert deltas(rates, "grpo") == {}


# ------------------------------------------------------------------------------ the reduced demo, end to end


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(RecipeConfig, ROOT / "recipes" / "demo_ci.yaml", [f"runs_dir={runs}", "threads=1"])
    status = run_recipe(cfg, console_print=lambda *_: None)
    return cfg, runs / cfg.name, status


def test_ci_demo_completes_with_report(ci_run):
    cfg, run_dir, status = ci_run
    assert status == {s: "ran" for s in RECIPE_STAGES}
    for stage in RECIPE_STAGES:
        assert json.loads((run_dir / stage / "DONE.json").read_text())["key"]
    summary = json.loads((run_dir / "summary.json").read_text())
    models = {"base", "base_chat", "sft", "sft+pas", "grpo", "spec_math", "spec_if", "merge_linear",
              "merge_task_arithmetic", "merge_model_stock"}
    assert set(summary["stages"]) == models
    for rates in summary["stages"].values():
        assert set(rates) == {"math", "reason", "if", "role", "kqa", "code", "implicit", "mean"}
        assert all(0.0 <= r <= 1.0 for r in rates.values())
    assert set(summary["wall_s"]) >= set(RECIPE_STAGES) - {"report"}
    assert summary["eval_format"]["base"] == "plain few-shot" and summary["eval_format"]["sft"] == "chat"
    assert summary["eval_format"]["base_chat"] == "chat"
    report = (run_dir / "report.md").read_text()
    assert "| sft |" in report and "Delta against base" in report
    for chart in ("pass_rates.png", "deltas.png", "merge.png", "training_curves.png", "wall_times.png"):
        assert (run_dir / chart).stat().st_size > 1000


def test_ci_demo_pas_rewrites_the_prompts_the_sft_model_sees(ci_run):
    """sft+pas answered the same held-out prompts, each last user turn possibly rewritten by the PAS model; every
    complement it added is recorded next to the reply and really is in the prompt the SFT model answered."""
    _, run_dir, _ = ci_run
    plain = [json.loads(line) for line in open(run_dir / "eval" / "sft_replies.jsonl")]
    behind = [json.loads(line) for line in open(run_dir / "eval" / "sft+pas_replies.jsonl")]
    assert len(plain) == len(behind) and all("complement" in r for r in behind)
    for a, b in zip(plain, behind):
        assert b["prompt"] == (f"{a['prompt']} {b['complement']}" if b["complement"] else a["prompt"])
    assert (run_dir / "pas" / "trainer" / "model" / "config.json").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    share = summary["pas"]["sft+pas"]["complemented"]
    assert set(share) == {"math", "reason", "if", "role", "kqa", "code", "implicit"}
    assert share == {c: sum(bool(r["complement"]) for r in behind if r["capability"] == c) /
                     sum(r["capability"] == c for r in behind) for c in share}
    assert "## PAS in front of sft" in (run_dir / "report.md").read_text()


def test_ci_demo_sft_beats_the_honestly_evaluated_base(ci_run):
    _, run_dir, _ = ci_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["sft"]["mean"] > summary["stages"]["base"]["mean"]


def test_ci_demo_rerun_skips_and_only_reruns_one_stage(ci_run):
    from typer.testing import CliRunner

    from novalign.cli import app

    cfg, run_dir, _ = ci_run
    assert run_recipe(cfg, console_print=lambda *_: None) == {s: "skipped" for s in RECIPE_STAGES}
    before = {s: (run_dir / s / "DONE.json").read_text() for s in RECIPE_STAGES}
    result = CliRunner().invoke(app, ["run", str(ROOT / "recipes" / "demo_ci.yaml"), "--set",
                                      f"runs_dir={cfg.runs_dir}", "--only", "report"])
    assert result.exit_code == 0, result.output
    assert "[report] running" in result.output and result.output.count("running") == 1
    after = {s: (run_dir / s / "DONE.json").read_text() for s in RECIPE_STAGES}
    assert {s for s in RECIPE_STAGES if before[s] != after[s]} == {"report"}


def test_ci_demo_prefs_stage_is_the_preference_chain(ci_run):
    """The prefs stage ran the chain: its funnel is in stats.json and the report, the groups carry each
    response's model and score in the rm format, the base model answered its quota of 12 prompts spread over
    the capabilities (2 samples each), and prompt_scores has the SFT model's 8 scores for every RL prompt."""
    _, run_dir, _ = ci_run
    stats = json.loads((run_dir / "prefs" / "stats.json").read_text())
    assert stats["chain"] and [f["step"] for f in stats["funnel"]] == ["respond", "rate", "rouge", "prefilter",
                                                                        "rules", "rm"]
    assert stats["prompts"] == 36 and stats["samples_by_model"] == {"sft": 36 * 8, "base": 12 * 2}
    assert stats["funnel"][-1]["out"] == stats["groups"] > 0
    groups = [json.loads(line) for line in (run_dir / "prefs" / "prefs.jsonl").read_text().splitlines()]
    assert len(groups) == stats["groups"]
    for g in groups:
        assert g["prompt"][-1]["role"] == "user" and 2 <= len(g["responses"]) <= 3  # prefilter keep: 3
        assert len({r["score"] for r in g["responses"]}) >= 2
        assert all(r["model"] in ("sft", "base") and 0.0 <= r["score"] <= 1.0 for r in g["responses"])
    scores = [json.loads(line) for line in (run_dir / "prefs" / "prompt_scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in scores] == list(range(36)) and all(len(r["scores"]) == 8 for r in scores)
    (rated,) = (run_dir / "prefs" / "chain" / "steps").glob("rate-*")
    by_base = [g["capability"] for g in map(json.loads, (rated / "records.jsonl").read_text().splitlines())
               if any(r["model"] == "base" for r in g["responses"])]
    assert len(by_base) == 12 and set(by_base) == {"math", "reason", "if", "role", "kqa", "code"}
    assert "The preference-data chain on 36 prompts" in (run_dir / "report.md").read_text()
