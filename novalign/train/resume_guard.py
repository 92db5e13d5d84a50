"""Refuse to resume a run whose config or data changed (issue 22 item 6).

A run records what it was started with in its ``output_dir``: ``config.yaml`` (the whole config) and
``inputs.json`` (every data file the config names, by size and a hash of its first and last MiB). When the
folder already holds a checkpoint, a new start compares both with the current ones first: resuming a
checkpoint under another learning rate, another data mix or edited data would silently train a model that no
config describes. Settings that do not change what is trained (progress bars, logging, checkpoint cadence, the
output folder itself) and the run's length (``train.max_steps``, ``train.epochs``: to train longer) may change; ``train.resume_changed: true`` resumes anyway.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["changed_keys", "data_fingerprint", "check_resume", "FREE_TO_CHANGE"]

# dotted config keys a resumed run may change: they do not change what is trained
FREE_TO_CHANGE = ("output_dir", "train.resume", "train.resume_changed", "train.progress", "train.tensorboard",
                  "train.save_every", "train.keep_last", "train.eval_every", "train.sample_every",
                  "train.max_steps", "train.epochs")  # the run's length: training longer is a resume
_EDGE = 1 << 20  # bytes hashed at each end of a data file


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def changed_keys(before: dict, after: dict) -> list[str]:
    """Dotted keys whose values differ between two config trees, minus :data:`FREE_TO_CHANGE`.

    >>> changed_keys({"optim": {"lr": 1}, "output_dir": "a"}, {"optim": {"lr": 2}, "output_dir": "b"})
    ['optim.lr']
    """
    a, b = _flatten(before), _flatten(after)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in FREE_TO_CHANGE)


def data_fingerprint(tree: dict) -> dict[str, list]:
    """``{path: [size, sha256 of its first and last MiB]}`` for every file under a ``*_files`` key of the config
    (a file that does not exist is recorded as missing)."""
    out: dict[str, list] = {}
    for key, value in _flatten(tree).items():
        if key.rsplit(".", 1)[-1].endswith("_files") and isinstance(value, list):
            for path in value:
                p = Path(str(path))
                if not p.is_file():
                    out[str(path)] = [None, "missing"]
                    continue
                size = p.stat().st_size
                h = hashlib.sha256()
                with open(p, "rb") as fh:
                    h.update(fh.read(_EDGE))
                    if size > _EDGE:
                        fh.seek(max(_EDGE, size - _EDGE))
                        h.update(fh.read(_EDGE))
                out[str(path)] = [size, h.hexdigest()[:16]]
    return out


def check_resume(out: Path, tree: dict, has_checkpoint: bool, allow_changed: bool) -> dict[str, list]:
    """Compare the current config ``tree`` and its data with what started the run in ``out``; returns the
    current data fingerprint (to be written as ``inputs.json``).

    Raises:
        ValueError: a checkpoint exists and the config or data changed (naming the keys / files), unless
            ``allow_changed``.
    """
    inputs = data_fingerprint(tree)
    if not has_checkpoint or allow_changed:
        return inputs
    problems = []
    old_cfg = out / "config.yaml"
    if old_cfg.is_file():
        keys = changed_keys(yaml.safe_load(old_cfg.read_text()) or {}, tree)
        if keys:
            problems.append("config keys " + ", ".join(keys))
    old_inputs = out / "inputs.json"
    if old_inputs.is_file():
        before = json.loads(old_inputs.read_text())
        files = sorted(f for f in set(before) | set(inputs) if before.get(f) != inputs.get(f))
        if files:
            problems.append("data files " + ", ".join(files))
    if problems:
        raise ValueError(f"{out}: holds checkpoints of a run started with other settings ({'; '.join(problems)} "
                         f"changed); resuming would train a model no config describes. Use a new output_dir, "
                         f"delete {out / 'checkpoints'}, or set train.resume_changed=true to resume anyway")
    return inputs
