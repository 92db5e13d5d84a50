"""``novalign run`` on the user's own data: no world stage, every source named in the recipe's ``data:`` section
(SFT files, preference sampling prompts, GRPO prompts, eval suites), the tiny model as ``base.path``."""

import json
from pathlib import Path

import pytest

from conftest import ROOT
from novalign.config import RecipeConfig

_TRAIN = {"micro_batch_size": 4, "grad_accum": 1, "progress": False, "tensorboard": False}


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _user_files(tmp: Path) -> dict[str, str]:
    """Single-turn demo chats, relabelled the way a user's data looks: a `capability` field, an `answer`."""
    rows = [json.loads(line) for line in (ROOT / "novalign/assets/demo_sft.jsonl").read_text().splitlines()]
    rows = [r | {"capability": r.pop("task")} for r in rows if "/" not in r["task"]]
    sft = [r for r in rows if r["capability"] in ("uppercase", "arithmetic")][:48]
    prompts = [{"prompt": r["messages"][0]["content"], "answer": r["answer"], "capability": r["capability"]}
               for r in sft[:6]]
    # preference prompts with the user's own responses (a good one and a bad one): scored, not sampled
    scored = [p | {"responses": [p["answer"], "I do not know."]} for p in prompts]
    math = [{"prompt": r["messages"][0]["content"], "answer": r["answer"]} for r in rows
            if r["capability"] == "arithmetic"][-4:]
    return {"sft": _jsonl(tmp / "my_sft.jsonl", sft), "prompts": _jsonl(tmp / "my_prompts.jsonl", prompts),
            "scored": _jsonl(tmp / "my_scored.jsonl", scored),
            "math": _jsonl(tmp / "my_math.jsonl", math)}


def _recipe(tmp: Path, model_dir: Path) -> RecipeConfig:
    files = _user_files(tmp)
    return RecipeConfig.model_validate({
        "name": "mine", "runs_dir": str(tmp / "runs"), "threads": 1,
        "stages": ["sft", "prefs", "rm", "grpo", "merge", "eval", "report"],
        "base": {"path": str(model_dir)},
        "data": {"sft_files": [files["sft"]], "prompt_files": [files["scored"]],
                 "rl_prompt_files": [files["prompts"]],
                 "eval_suites": [{"type": "math", "data": files["math"]}]},
        "sft": {"data": {"max_length": 128}, "optim": {"lr": 2e-3, "warmup_ratio": 0.0},
                "train": _TRAIN | {"max_steps": 6}},
        "sft_replay": 0.0,
        "prefs": {"n": 4, "max_new_tokens": 12},
        "rm": {"data": {"max_length": 128, "train_eval_pairs": 0}, "scores": {"range": [0, 1], "normalize": "range"},
               "packing": {"row_len": 256}, "train": _TRAIN | {"max_steps": 2, "micro_batch_size": 1}},
        "grpo": {"rewards": [{"type": "exact_answer", "mode": "contains"}],
                 "rollout": {"prompts_per_iteration": 2, "n": 2, "max_new_tokens": 12, "batch_size": 8},
                 "loss": {"kl_top_k": 20, "ppo_epochs": 1}, "ptx": {"coef": 0.05, "max_length": 128},
                 "optim": {"lr": 1e-4, "warmup_ratio": 0.0, "schedule": "constant"},
                 "train": {"max_steps": 1, "micro_batch_size": 4, "progress": False, "tensorboard": False,
                           "sample_every": 0}},
        "rl_rewards": {"verifier": 1.0, "reward_model": 0.25},
        "merge": {"specialists": [{"name": "upper", "focus": ["uppercase"]}, {"name": "math", "focus": ["arithmetic"]}],
                  "train": {"data": {"max_length": 128}, "train": _TRAIN | {"max_steps": 2}},
                  "methods": ["linear"]},
        "eval": {"max_new_tokens": 12, "batch_size": 8},
    })


@pytest.fixture(scope="module")
def user_run(tiny_model_dir, tmp_path_factory):
    from novalign.recipe import run_recipe

    tmp = tmp_path_factory.mktemp("user")
    cfg = _recipe(tmp, tiny_model_dir)
    return cfg, Path(cfg.runs_dir) / cfg.name, run_recipe(cfg, console_print=lambda *_: None)


def test_a_recipe_runs_end_to_end_on_user_files(user_run):
    cfg, run_dir, status = user_run
    assert status == {s: "ran" for s in cfg.stages}
    assert not (run_dir / "world").exists()
    # the GRPO prompts are the user's, with their answers for the exact_answer reward
    rows = [json.loads(line) for line in (run_dir / "grpo" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["answer"] and r["messages"][-1]["role"] == "user" for r in rows)
    # the specialists mixed the user's data by its capability field: focus in full, 10 % of the rest
    spec = [json.loads(line) for line in (run_dir / "merge" / "spec_upper" / "data.jsonl").read_text().splitlines()]
    caps = [r["capability"] for r in spec]
    source = [json.loads(line)["capability"] for line in Path(cfg.data.sft_files[0]).read_text().splitlines()]
    assert caps.count("uppercase") == source.count("uppercase")
    assert caps.count("arithmetic") == int(source.count("arithmetic") * 0.1)
    # eval: the user's suite through `novalign eval`, every model of the recipe, records on disk
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["stages"]) == {"base", "sft", "grpo", "spec_upper", "spec_math", "merge_linear"}
    for rates in summary["stages"].values():
        assert set(rates) >= {"math.accuracy"} and 0.0 <= rates["math.accuracy"] <= 1.0
    records = list((run_dir / "eval" / "suites").glob("sft-*/sft/math.jsonl"))
    assert len(records) == 1 and len(records[0].read_text().splitlines()) == 4
    assert "math.accuracy" in (run_dir / "report.md").read_text()


def test_a_rerun_skips_every_stage(user_run):
    from novalign.recipe import run_recipe

    cfg, _, _ = user_run
    assert run_recipe(cfg, console_print=lambda *_: None) == {s: "skipped" for s in cfg.stages}


def test_a_missing_source_names_the_data_section(tiny_model_dir, tmp_path):
    from novalign.recipe import run_recipe

    cfg = RecipeConfig.model_validate({"runs_dir": str(tmp_path), "stages": ["sft"], "base": {"path": str(tiny_model_dir)}})
    with pytest.raises(ValueError, match="no world stage; name the data in the recipe's `data:` section"):
        run_recipe(cfg, console_print=lambda *_: None)
    with pytest.raises(ValueError, match="unknown stage 'sfy' \\(did you mean 'sft'\\?\\)"):
        run_recipe(cfg.model_copy(update={"stages": ["sfy"]}), console_print=lambda *_: None)
