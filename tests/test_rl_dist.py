"""GRPO and PPO data parallel under torchrun (2 CPU processes, gloo) train exactly as one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from rl_helpers import rl_config, write_prompts
from safetensors.torch import load_file

DEMO = ROOT / "novalign" / "assets" / "demo_sft.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_two_processes_match_one_process(tiny_model_dir, tmp_path, stage):
    """One iteration of 4 prompts x n responses and 2 optimizer steps, PTX on (3 SFT samples per step: 2 on
    rank 0, 1 on rank 1). torchrun with 2 processes -- each rolling out 2 prompts, the token-mean taken over the
    whole iteration via all-reduced counts, gradients summed -- gives the single process's rollouts (the same
    completions, seeded by their global index), the same logged metrics and the same final weights (PPO: value
    head too). One iteration: after an optimizer step, float round-off of the summation order (Adam turns it
    into +-lr on near-zero gradients) can flip a later sampled token, so later rollouts need not be identical."""
    from novalign.train.grpo import run_grpo
    from novalign.train.ppo import run_ppo

    prompts = write_prompts(tmp_path / "p.jsonl", count=6)
    n = 4 if stage == "grpo" else 2
    # one prompt's group per generate call and the same thread count in both runs: every forward has the same
    # shapes and kernels in 1 and 2 processes, so no float round-off can flip a sampled token
    sections = dict(train={"max_steps": 1, "sample_every": 1}, optim={"lr": 1e-3}, rollout={"n": n, "batch_size": n},
                    rewards=[{"type": "exact_answer", "mode": "contains"}],
                    ptx={"coef": 0.1, "train_files": [str(DEMO)], "max_length": 256, "micro_batch_size": 3})
    one = rl_config(stage, tiny_model_dir, tmp_path / "one", prompts, **sections)
    (run_grpo if stage == "grpo" else run_ppo)(one, console_print=lambda *_: None)

    two = one.model_copy(update={"output_dir": str(tmp_path / "two")})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(two.model_dump(mode="json")))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "novalign.cli", stage, "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    samples = [[json.loads(x) for x in (tmp_path / d / "samples.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [(r["step"], r["prompt"], r["completion"]) for r in samples[0]] == \
        [(r["step"], r["prompt"], r["completion"]) for r in samples[1]]
    a, b = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in b] == [1]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "reward_std", "kl_mean", "loss", "ptx_loss", "clip_fraction", "entropy",
                    "response_length", "advantage_std"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (key, ra[key], rb[key])
    files = ["model/model.safetensors"] + (["value_head.safetensors"] if stage == "ppo" else [])
    for name in files:
        wa, wb = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=1e-4, msg=f"{name}: {k}")


def test_a_rank_share_draws_the_samples_of_the_whole_batch(tiny_model_dir):
    """first_prompt = 1: prompts 1-2 rolled out alone get the completions they get in the 3-prompt call (one
    prompt's group per generate call, so the two calls run the same shapes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from novalign.train.rl.rollout import HFRollout

    engine = HFRollout(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                       batch_size=2)
    prompts = [[{"role": "user", "content": f"topic {i}"}] for i in range(3)]
    whole = engine.generate(prompts, n=2, max_new_tokens=6, seed=11)
    share = engine.generate(prompts[1:], n=2, max_new_tokens=6, seed=11, first_prompt=1)
    assert [r.completion_ids for r in share] == [r.completion_ids for r in whole[2:]]
    assert [r.prompt_index for r in share] == [0, 0, 1, 1]  # numbered within the share
    unshifted = engine.generate(prompts[1:], n=2, max_new_tokens=6, seed=11)
    assert [r.completion_ids for r in unshifted] != [r.completion_ids for r in whole[2:]]
