"""The tiny RL task tests/test_grpo.py, test_ppo.py and test_rl_judge.py share: prompts, a dense rule reward, configs."""

import json
from pathlib import Path

# each stage's defaults for the tiny task; `sections` of rl_config override them key by key
_LOSS = {"grpo": {"beta": 0.01, "ppo_epochs": 2}, "ppo": {"beta": 0.01, "ppo_epochs": 2, "vf_coef": 0.1}}


def write_prompts(path: Path, count: int = 4) -> Path:
    """``count`` one-turn prompts with the gold answer "e" (for the exact_answer reward)."""
    path.write_text("".join(json.dumps({"prompt": f"Say something about topic {i}", "answer": "e"}) + "\n"
                            for i in range(count)))
    return path


def share_of_e(response: str) -> float:
    """The fraction of the response's characters that are the letter 'e': a dense reward a random model can learn."""
    return response.count("e") / max(1, len(response))


def rl_config(stage: str, model_dir: Path, out: Path, prompts: Path, **sections):
    """A GRPOConfig / PPOConfig (``stage``) for 4 prompts x 4 responses of 8 tokens on the tiny model; a dict in
    ``sections`` updates that section, anything else replaces the key."""
    from novalign.config import GRPOConfig, PPOConfig

    cfg = {
        "output_dir": str(out), "model": {"path": str(model_dir)}, "prompt_files": [str(prompts)],
        "rollout": {"prompts_per_iteration": 4, "n": 4, "max_new_tokens": 8},
        "loss": dict(_LOSS[stage]),
        "optim": {"lr": 3e-2, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"micro_batch_size": 8, "progress": False, "tensorboard": False, "seed": 0},
    }
    for key, value in sections.items():
        cfg[key].update(value) if isinstance(cfg.get(key), dict) else cfg.__setitem__(key, value)
    return {"grpo": GRPOConfig, "ppo": PPOConfig}[stage].model_validate(cfg)


def rerun_from_step_2(run, cfg, reward, full: Path, resumed: Path, outputs: tuple[str, ...] = ()):
    """Copy the finished 4-step run ``full`` to ``resumed``, delete its final model, its ``outputs`` (files
    beside the model, e.g. a value head) and its step-4 checkpoint, and run ``run`` there again: it must resume
    from the step-2 checkpoint. Returns the second run's result."""
    import shutil

    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "model")
    for name in outputs:
        (resumed / name).unlink()
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    return run(cfg.model_copy(update={"output_dir": str(resumed)}), reward=reward, console_print=lambda *_: None)
