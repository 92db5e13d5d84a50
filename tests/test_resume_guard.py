"""Resume only from whole checkpoints of the same run (issue 22 item 6): the manifest written last, incomplete
folders skipped, and a changed config or data file refused unless train.resume_changed."""

import json

import pytest
import torch
import yaml

from conftest import ROOT
from novalign.train.resume_guard import changed_keys, check_resume
from novalign.train.state import TrainState, is_complete, latest_checkpoint, save_checkpoint


def _save(root, step):
    return save_checkpoint(root, TrainState(step=step), model_state={"w": torch.ones(3)}, optimizer_state={"s": 1},
                           scheduler_state={"lr": 1}, rank=0, is_main=True, keep_last=5)


def test_a_checkpoint_missing_a_file_is_never_resumed_from(tmp_path):
    """Steps 1 and 2 saved; step 2 loses model.pt (a kill during pruning) -> step 1 is the newest complete one.
    A file cut short (size differs from the manifest) is incomplete too; a folder without a manifest as well."""
    root = tmp_path / "checkpoints"
    one, two = _save(root, 1), _save(root, 2)
    assert json.loads((two / "manifest.json").read_text())["files"]["model.pt"] == (two / "model.pt").stat().st_size
    (two / "model.pt").unlink()
    assert not is_complete(two) and latest_checkpoint(root) == one
    with open(one / "optimizer.pt", "ab") as fh:
        fh.write(b"x")
    assert latest_checkpoint(root) is None
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "trainer_state.json").write_text("{}")
    assert not is_complete(tmp_path / "bare")
    three = _save(root, 3)  # the next save removes the broken folders
    assert latest_checkpoint(root) == three and not one.exists() and not two.exists()


def test_changed_keys_by_hand():
    """lr 1e-3 -> 2e-3 and a new data file are changes; output_dir and train.progress may change."""
    before = {"output_dir": "a", "optim": {"lr": 1e-3}, "train": {"progress": True}, "data": {"train_files": ["x"]}}
    after = {"output_dir": "b", "optim": {"lr": 2e-3}, "train": {"progress": False}, "data": {"train_files": ["x", "y"]}}
    assert changed_keys(before, after) == ["data.train_files", "optim.lr"]


def test_check_resume_names_what_changed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    tree = {"output_dir": str(tmp_path), "optim": {"lr": 1e-3}, "data": {"train_files": [str(data)]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "inputs.json").write_text(json.dumps(check_resume(tmp_path, tree, False, False)))
    assert check_resume(tmp_path, tree, True, False)  # same run: fine
    with pytest.raises(ValueError, match="config keys optim.lr changed"):
        check_resume(tmp_path, tree | {"optim": {"lr": 5e-4}}, True, False)
    data.write_text('{"text": "b"}\n')  # same size, other content
    with pytest.raises(ValueError, match=f"data files {data} changed"):
        check_resume(tmp_path, tree, True, False)
    assert check_resume(tmp_path, tree, True, True)  # train.resume_changed
    assert check_resume(tmp_path, tree | {"optim": {"lr": 5e-4}}, False, False)  # no checkpoint: a fresh start


def test_sft_refuses_to_resume_under_another_learning_rate(tiny_model_dir, tmp_path):
    from novalign.config import SFTConfig
    from novalign.train.sft import run_sft

    tree = {"output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_model_dir)},
            "data": {"train_files": [str(ROOT / "novalign/assets/demo_sft.jsonl")], "max_length": 128},
            "packing": {"row_len": 256}, "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            "train": {"max_steps": 2, "save_every": 1, "micro_batch_size": 1, "grad_accum": 1, "progress": False,
                      "tensorboard": False}}
    run_sft(SFTConfig.model_validate(tree), console_print=lambda *_: None)
    changed = SFTConfig.model_validate(tree | {"optim": {"lr": 5e-4, "warmup_ratio": 0.0}})
    with pytest.raises(ValueError, match="config keys optim.lr changed"):
        run_sft(changed, console_print=lambda *_: None)
    more = SFTConfig.model_validate(tree | {"optim": {"lr": 5e-4, "warmup_ratio": 0.0},
                                            "train": tree["train"] | {"resume_changed": True}})
    assert run_sft(more, console_print=lambda *_: None).resumed_from is not None
