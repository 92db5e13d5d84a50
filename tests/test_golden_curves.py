"""Golden loss curves: a fixed-seed tiny SFT, RM, DPO and GRPO run must log exactly the stored losses.

A refactor of the training code that moves any of these numbers is a bug (torchtitan's rule: a change keeps the
loss curve of a fixed-seed tiny run). The table in ``tests/data/golden_curves.json`` was written before the
"make room" refactor (issue 14) by ``python tests/test_golden_curves.py --write`` and must not be rewritten to
make a refactor pass; a deliberate change of the numerics rewrites it in its own commit, saying why.

Every step's training loss is compared to 6 decimals. The runs are single-threaded so that the reduction order,
and with it the last bits of every loss, does not depend on the machine's core count.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import ROOT  # noqa: E402
from rl_helpers import rl_config, share_of_e, write_prompts  # noqa: E402

GOLDEN = HERE / "data" / "golden_curves.json"
STEPS = 6
_TRAIN = {"micro_batch_size": 1, "grad_accum": 2, "max_steps": STEPS, "eval_every": 0, "save_every": 0,
          "seed": 0, "progress": False, "tensorboard": False}
_OPTIM = {"lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"}


def _losses(history: list[dict], key: str = "loss") -> list[float]:
    return [round(float(r[key]), 6) for r in history if key in r and "step" in r and not r.get("eval")]


def _sft(model_dir: Path, out: Path) -> list[float]:
    from novalign.config import SFTConfig
    from novalign.train.sft import run_sft

    cfg = SFTConfig.model_validate({
        "output_dir": str(out), "model": {"path": str(model_dir)},
        "data": {"train_files": [str(ROOT / "novalign/assets/demo_sft.jsonl")], "max_length": 256},
        "packing": {"enabled": True, "row_len": 512}, "optim": _OPTIM, "train": _TRAIN,
    })
    return _losses(run_sft(cfg, console_print=lambda *_: None).history)


def _rm(model_dir: Path, out: Path) -> list[float]:
    from novalign.config import RMConfig
    from novalign.train.rm import run_rm

    cfg = RMConfig.model_validate({
        "output_dir": str(out), "model": {"path": str(model_dir)},
        "data": {"train_files": [str(ROOT / "novalign/assets/demo_pref.jsonl")], "max_length": 256},
        "scores": {"dimensions": {"helpfulness": {"weight": 2.0, "range": [1, 10]},
                                  "fluency": {"weight": 1.0, "range": [1, 5]},
                                  "safety": {"weight": 1.0, "range": [1, 5]}},
                   "normalize": "minmax", "group_by": "annotator"},
        "loss": {"alpha": 1.0}, "packing": {"row_len": 512}, "optim": _OPTIM, "train": _TRAIN,
    })
    return _losses(run_rm(cfg, console_print=lambda *_: None).history)


def _dpo(model_dir: Path, out: Path) -> list[float]:
    from novalign.config import DPOConfig
    from novalign.train.preference import run_dpo

    cfg = DPOConfig.model_validate({
        "output_dir": str(out), "model": {"path": str(model_dir)},
        "data": {"train_files": [str(ROOT / "novalign/assets/demo_pref.jsonl")], "max_length": 256},
        "loss": {"beta": 0.1}, "packing": {"row_len": 512}, "optim": _OPTIM, "train": _TRAIN,
    })
    return _losses(run_dpo(cfg, console_print=lambda *_: None).history)


def _grpo(model_dir: Path, out: Path) -> list[float]:
    from novalign.train.rl.rewards import verifier_reward, weighted_mix
    from novalign.train.grpo import run_grpo

    prompts = write_prompts(out.parent / "grpo_prompts.jsonl")
    cfg = rl_config("grpo", model_dir, out, prompts, train={"max_steps": 3})
    reward = weighted_mix([(verifier_reward(share_of_e, name="share_of_e"), 1.0)])
    history = run_grpo(cfg, reward=reward, console_print=lambda *_: None).history
    # the reward and KL curves catch a change in the rollouts that the surrogate loss alone could hide
    return _losses(history) + _losses(history, "reward_mean") + _losses(history, "kl_mean")


RUNS = {"sft": _sft, "rm": _rm, "dpo": _dpo, "grpo": _grpo}


def _curves(model_dir: Path, tmp: Path) -> dict[str, list[float]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: run(model_dir, tmp / name) for name, run in RUNS.items()}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def curves(tiny_model_dir, tmp_path_factory) -> dict[str, list[float]]:
    return _curves(tiny_model_dir, tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("stage", list(RUNS))
def test_loss_curve_matches_the_stored_table(curves, stage):
    """Every logged step's loss (GRPO: loss, reward mean, KL mean) equals the stored golden value to 6 decimals (abs 2e-6: one unit of
    rounding either way)."""
    golden = json.loads(GOLDEN.read_text())[stage]
    assert len(curves[stage]) == len(golden) > 0
    assert curves[stage] == pytest.approx(golden, abs=2e-6), stage


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    from novalign.models.tiny import init_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-base"
        init_tiny_model(model, seed=0)
        table = _curves(model, Path(tmp))
    GOLDEN.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table))
