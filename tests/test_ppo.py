"""`novalign ppo` end to end on a tiny random model: it learns, the critic fits, it runs from the CLI, it resumes exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import ROOT
from rl_helpers import rerun_from_step_2, rl_config, share_of_e, write_prompts
from safetensors.torch import load_file


def _prompts(path: Path, count: int = 4) -> Path:
    return write_prompts(path, count)


def _config(model_dir: Path, out: Path, prompts: Path, **sections):
    return rl_config("ppo", model_dir, out, prompts, **sections)


def test_ppo_raises_the_reward(tiny_model_dir, tmp_path):
    """30 iterations of 16 responses of 8 tokens (~4 s): the mean reward of the last two iterations well above the
    first two (0.08 -> 0.66 on this seed). lam = 1 (Monte-Carlo advantages minus the baseline): with lam = 0.95
    the zero-initialized critic's bootstrapped values slow learning on this short budget (0.08 -> 0.27)."""
    from novalign.train.rl.rewards import verifier_reward, weighted_mix
    from novalign.train.ppo import run_ppo

    cfg = _config(tiny_model_dir, tmp_path / "run", _prompts(tmp_path / "p.jsonl"), train={"max_steps": 30},
                  loss={"lam": 1.0})
    result = run_ppo(cfg, reward=weighted_mix([(verifier_reward(share_of_e, name="share_of_e"), 1.0)]),
                     console_print=lambda *_: None)
    hist = result.history
    assert [h["step"] for h in hist] == list(range(1, 31))
    first = sum(h["reward_mean"] for h in hist[:2]) / 2
    last = sum(h["reward_mean"] for h in hist[-2:]) / 2
    assert last > first + 0.3, (first, last)
    assert abs(hist[0]["kl_mean"]) < 1e-5 and hist[-1]["kl_mean"] > 0
    for key in ("value_loss", "policy_loss", "value_mean", "return_mean", "clip_fraction", "reward_share_of_e_mean"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in hist), key
    assert hist[0]["value_mean"] == 0.0 and hist[-1]["value_mean"] != 0.0  # the zero-initialized critic learned


def test_value_loss_decreases_on_a_fixed_batch(tiny_model_dir):
    """The critic alone, fitted to fixed returns on fixed sequences: its clipped value loss goes down."""
    from novalign.models.load import load_model
    from novalign.train.ppo import ActorCritic, logps_and_values
    from novalign.train.rl.algorithms import value_loss_sum

    torch.manual_seed(0)
    model = ActorCritic(load_model(str(tiny_model_dir)))
    seqs = [([1, 2, 3], [4, 5, 6, 7]), ([8, 9], [10, 11]), ([3], [12, 13, 14])]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    returns = torch.randn(3, 4) * mask
    opt = torch.optim.Adam(model.value_head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        with torch.no_grad():
            old = logps_and_values(model, seqs)[1]
        logps, values = logps_and_values(model, seqs)
        assert logps.shape == values.shape == mask.shape
        loss, count = value_loss_sum(values, old, returns, mask, clip_range=0.2)
        assert count == 9
        opt.zero_grad()
        (loss / count).backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_cli_run_writes_a_loadable_model_and_metrics(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, out, _prompts(tmp_path / "p.jsonl"), train={"max_steps": 2, "sample_every": 1},
                  rollout={"n": 1}, rewards=[{"type": "exact_answer", "mode": "contains", "weight": 1.0}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "novalign.cli", "ppo", "--config", str(path)], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward_mean", "reward_exact_answer_contains_mean", "kl_mean", "clip_fraction", "value_loss",
                "policy_loss", "response_length", "truncated_fraction", "loss", "entropy"):
        assert key in records[-1], key
    assert all(0 < r["entropy"] < float("inf") for r in records)  # nats, at most ln V
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [1] * 4 + [2] * 4  # sample_every = 1: every iteration's 4 x 1 rollouts
    assert all(set(r) >= {"prompt", "completion", "reward", "truncated"} for r in samples)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size > 0
    assert set(load_file(out / "value_head.safetensors")) == {"weight", "bias"}
    assert json.loads((out / "summary.json").read_text())["iterations"] == 2


def test_resume_from_a_checkpoint_gives_identical_weights(tiny_model_dir, tmp_path):
    """4 iterations with a checkpoint at 2; rerun from that checkpoint alone: the same policy and value head."""
    from novalign.train.rl.rewards import verifier_reward
    from novalign.train.ppo import run_ppo

    full = tmp_path / "full"
    cfg = _config(tiny_model_dir, full, _prompts(tmp_path / "p.jsonl", count=6),
                  train={"max_steps": 4, "save_every": 2}, rollout={"prompts_per_iteration": 2})
    quiet = {"console_print": lambda *_: None}
    reward = verifier_reward(share_of_e)
    run_ppo(cfg, reward=reward, **quiet)
    resumed = tmp_path / "resumed"
    result = rerun_from_step_2(run_ppo, cfg, reward, full, resumed, outputs=("value_head.safetensors",))
    assert result.resumed_from is not None and result.resumed_from.name == "step-00000002"
    for name in ("model/model.safetensors", "value_head.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]


def test_help_config_lists_the_ppo_options():
    from typer.testing import CliRunner

    from novalign.cli import app

    result = CliRunner().invoke(app, ["ppo", "--help-config"])
    assert result.exit_code == 0, result.output
    for key in ("rewards", "rollout.n", "loss.beta", "loss.gamma", "loss.lam", "loss.vf_coef", "loss.value_clip"):
        assert key in result.output, key
