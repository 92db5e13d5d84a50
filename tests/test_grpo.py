"""`novalign grpo` end to end on a tiny random model: it learns, it runs from the CLI, it resumes exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from rl_helpers import rerun_from_step_2, rl_config, share_of_e, write_prompts
from safetensors.torch import load_file

DEMO = ROOT / "novalign" / "assets" / "demo_sft.jsonl"


def _prompts(path: Path, count: int = 4) -> Path:
    return write_prompts(path, count)


def _config(model_dir: Path, out: Path, prompts: Path, **sections):
    return rl_config("grpo", model_dir, out, prompts, **sections)


def test_grpo_raises_the_reward_and_the_kl_grows_from_zero(tiny_model_dir, tmp_path):
    """20 iterations of 4 prompts x 4 responses of 8 tokens (~2 s): mean reward of the last two iterations
    well above the first two (0.07 -> 0.67 on this seed); KL 0 at the start (policy = reference), then > 0."""
    from novalign.train.rl.rewards import verifier_reward, weighted_mix
    from novalign.train.grpo import run_grpo

    cfg = _config(tiny_model_dir, tmp_path / "run", _prompts(tmp_path / "p.jsonl"), train={"max_steps": 20})
    result = run_grpo(cfg, reward=weighted_mix([(verifier_reward(share_of_e, name="share_of_e"), 1.0)]),
                      console_print=lambda *_: None)
    hist = result.history
    assert [h["step"] for h in hist] == list(range(1, 21))
    first = sum(h["reward_mean"] for h in hist[:2]) / 2
    last = sum(h["reward_mean"] for h in hist[-2:]) / 2
    assert last > first + 0.2, (first, last)
    kls = [h["kl_mean"] for h in hist]
    assert all(torch.isfinite(torch.tensor(kls)))
    assert abs(kls[0]) < 1e-5 and kls[-1] > 0.01
    assert hist[-1]["reward_share_of_e_mean"] == pytest.approx(hist[-1]["reward_mean"])
    assert 0 <= hist[-1]["clip_fraction"] <= 1 and 0 <= hist[-1]["truncated_fraction"] <= 1


def test_cli_run_writes_a_loadable_model_and_metrics(tiny_model_dir, tmp_path):
    """Two iterations through `novalign grpo` with the config's exact_answer reward and the PTX term on."""
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, out, _prompts(tmp_path / "p.jsonl"), train={"max_steps": 2},
                  rewards=[{"type": "exact_answer", "mode": "contains", "weight": 1.0}],
                  ptx={"coef": 0.1, "train_files": [str(DEMO)], "max_length": 256, "micro_batch_size": 2})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "novalign.cli", "grpo", "--config", str(path)], check=False, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward_mean", "reward_std", "reward_exact_answer_contains_mean", "kl_mean", "clip_fraction",
                "response_length", "truncated_fraction", "loss", "ptx_loss", "entropy"):
        assert key in records[-1], key
    assert all(0 < r["entropy"] < float("inf") for r in records)  # nats, at most ln V
    assert all(0 <= r["ptx_loss"] < float("inf") for r in records)  # a KL penalty: never negative
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size > 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == 2


def test_resume_from_a_checkpoint_gives_identical_weights(tiny_model_dir, tmp_path):
    """Run 4 iterations with a checkpoint at 2; rerun from that checkpoint alone: the same final weights."""
    from novalign.train.grpo import run_grpo

    prompts = _prompts(tmp_path / "p.jsonl", count=6)
    full = tmp_path / "full"
    cfg = _config(tiny_model_dir, full, prompts, train={"max_steps": 4, "save_every": 2},
                  rewards=[{"type": "exact_answer", "mode": "contains"}], rollout={"prompts_per_iteration": 2})
    quiet = {"console_print": lambda *_: None}
    from novalign.train.rl.rewards import verifier_reward

    reward = verifier_reward(share_of_e)
    run_grpo(cfg, reward=reward, **quiet)
    resumed = tmp_path / "resumed"
    result = rerun_from_step_2(run_grpo, cfg, reward, full, resumed)
    assert result.resumed_from is not None and result.resumed_from.name == "step-00000002"
    a, b = load_file(full / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it did train
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]


def test_truncated_responses_get_the_configured_reward(tiny_model_dir, tmp_path):
    """One new token: every response that did not stop at once is truncated and scored -1 instead of its
    reward (share_of_e of a one-token text, or 0 for an empty one), so the mean reward is -truncated_fraction."""
    from novalign.train.rl.rewards import verifier_reward
    from novalign.train.grpo import run_grpo

    cfg = _config(tiny_model_dir, tmp_path / "run", _prompts(tmp_path / "p.jsonl"), train={"max_steps": 1},
                  rollout={"max_new_tokens": 1}, loss={"truncated_reward": -1.0})
    record = run_grpo(cfg, reward=verifier_reward(share_of_e), console_print=lambda *_: None).history[-1]
    assert record["truncated_fraction"] > 0.5
    assert record["reward_mean"] == pytest.approx(-record["truncated_fraction"])


def test_bad_input_is_an_error(tiny_model_dir, tmp_path):
    from novalign.config import RewardComponentConfig
    from novalign.train.grpo import build_reward, load_prompts, run_grpo

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts([str(empty)])
    with pytest.raises(ValueError, match="needs `path`"):
        build_reward([RewardComponentConfig(type="reward_model")])
    cfg = _config(tiny_model_dir, tmp_path / "run", _prompts(tmp_path / "p.jsonl"), model={"lora": {"r": 2}})
    with pytest.raises(ValueError, match="does not support LoRA"):
        run_grpo(cfg)


def test_config_reward_components_score(tiny_model_dir):
    """exact_answer, ifeval and reward_model components build from the config and give one number each."""
    from novalign.config import RewardComponentConfig as C
    from novalign.train.grpo import build_reward

    mix = build_reward([C(type="exact_answer", mode="contains", weight=2.0), C(type="ifeval", weight=1.0),
                        C(type="reward_model", path=str(tiny_model_dir), weight=0.5)])
    prompts = [[{"role": "user", "content": "say 42 in lowercase"}]] * 2
    scored = mix.evaluate(prompts, ["it is 42", "NO"], answer=["42", "42"],
                          instruction_id_list=[["change_case:english_lowercase"]] * 2, kwargs=[[{}]] * 2)
    assert scored.components["exact_answer_contains"] == [1.0, 0.0]
    assert scored.components["ifeval"] == [1.0, 0.0]
    assert len(scored.total) == 2 and all(isinstance(x, float) for x in scored.total)


def test_help_config_lists_the_grpo_options():
    from typer.testing import CliRunner

    from novalign.cli import app

    result = CliRunner().invoke(app, ["grpo", "--help-config"])
    assert result.exit_code == 0, result.output
    for key in ("rewards", "rollout.n", "loss.beta", "loss.kl_top_k", "ptx.coef", "train.max_steps"):
        assert key in result.output, key


def test_sample_table_every_n_iterations(tiny_model_dir, tmp_path):
    """train.sample_every = 2 over 3 iterations: iteration 2's 16 rollouts in samples.jsonl (prompt, completion,
    reward), and a TensorBoard text table."""
    from novalign.train.rl.rewards import verifier_reward
    from novalign.train.grpo import run_grpo

    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, out, _prompts(tmp_path / "p.jsonl"),
                  train={"max_steps": 3, "sample_every": 2, "tensorboard": True})
    run_grpo(cfg, reward=verifier_reward(share_of_e, name="share_of_e"), console_print=lambda *_: None)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["step"] for r in rows} == {2}
    assert sorted((r["prompt_index"], r["sample_index"]) for r in rows) == [(g, j) for g in range(4) for j in range(4)]
    for r in rows:
        assert r["prompt"].startswith("Say something about topic ")
        assert r["reward"] == pytest.approx(share_of_e(r["completion"]))
        assert isinstance(r["truncated"], bool)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"samples" in b"".join(e.read_bytes() for e in events)


def test_mini_batches_split_each_pass_into_optimizer_steps(tiny_model_dir, tmp_path):
    """mini_batch_bounds(10, 3): cuts round(i * 10 / 3) = 0, 3, 7, 10 -> (0, 3), (3, 7), (7, 10); 5 > 4 rows is an error.
    A run of 2 iterations x 2 ppo_epochs x 2 mini_batches takes 2 * 2 * 2 = 8 optimizer steps (counted by a torch
    optimizer hook), where mini_batches 1 takes 4; the lr schedule spans all 8 (linear to 0: the first step's
    lr is 1e-3, the last logged one 1e-3 * (1 - 7/8) = 1.25e-4)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from novalign.train.rl.rewards import verifier_reward, weighted_mix
    from novalign.train.grpo import run_grpo
    from novalign.train.rl.loop import mini_batch_bounds

    assert mini_batch_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(ValueError, match="mini_batches = 5"):
        mini_batch_bounds(4, 5)
    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        for m in (1, 2):
            steps.clear()
            cfg = _config(tiny_model_dir, tmp_path / f"m{m}", _prompts(tmp_path / "p.jsonl"), train={"max_steps": 2},
                          loss={"ppo_epochs": 2, "mini_batches": m},
                          optim={"lr": 1e-3, "schedule": "linear", "min_lr_ratio": 0.0, "warmup_ratio": 0.0})
            result = run_grpo(cfg, reward=weighted_mix([(verifier_reward(share_of_e, name="e"), 1.0)]),
                              console_print=lambda *_: None)
            assert len(steps) == 2 * 2 * m
            if m == 2:
                assert result.history[-1]["lr"] == pytest.approx(1e-3 * (1 - 7 / 8))
    finally:
        handle.remove()


def test_prompt_records_are_checked_before_any_model_loads(tmp_path):
    """A wrong prompt type and a missing `answer` (what exact_answer reads) are DataErrors naming file, line and
    field when the prompts are read -- before the model loads and rolls out (issue 22 item 9); with
    skip_invalid they are skipped and counted: 3 records, 2 bad -> 1 prompt, and a report of 2."""
    from novalign.data.io import DataError
    from novalign.train.rl.inputs import load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok", "answer": "e"}\n{"prompt": 42, "answer": "e"}\n{"prompt": "no answer"}\n')
    with pytest.raises(DataError, match="p.jsonl:2: field 'prompt': must be a string or a list"):
        load_prompts([str(path)], required=("answer",))
    path.write_text('{"prompt": "ok", "answer": "e"}\n{"prompt": "no answer"}\n')
    with pytest.raises(DataError, match="p.jsonl:2: field 'answer': missing"):
        load_prompts([str(path)], required=("answer",))
    path.write_text('{"prompt": "ok", "answer": "e"}\n{"prompt": 42, "answer": "e"}\n{"prompt": "no answer"}\n')
    printed = []
    rows = load_prompts([str(path)], required=("answer",), skip_invalid=True, console_print=printed.append)
    assert len(rows) == 1 and "skipped 2 invalid records" in printed[0]
