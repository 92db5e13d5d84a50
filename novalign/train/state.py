"""What a training checkpoint holds, and how it is written so that a kill at any moment is harmless.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<N>/`` with

- ``model.pt``       the trainable parameters (all weights, or only the LoRA adapters), unsharded;
- ``optimizer.pt``   optimizer state (unsharded, keyed by parameter name); ``scheduler.pt`` the LR schedule;
- ``rng-rank<R>.pt`` every RNG (python, numpy, torch CPU and CUDA) of every rank;
- ``trainer_state.json`` step, epoch and position in the epoch's data plan;
- ``manifest.json``  every other file's name and size -- written last. A folder is a complete checkpoint only
  when its manifest is there and every file it lists has its size: a kill during pruning (or a copy cut short)
  leaves a folder that is skipped, never resumed from.

It is first written under a hidden temporary name and then renamed into place in one ``os.rename``, so a
process killed half-way leaves only a ``.tmp-*`` folder that :func:`latest_checkpoint` ignores (and the
next save removes). Exact resume needs nothing else: the data plan of an epoch is a pure function of
(seed, epoch), so the step index says which micro-batches come next.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch the next step belongs to
    step_in_epoch: int = 0  # steps already done in that epoch
    tokens_seen: int = 0  # loss tokens consumed so far (all ranks)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    ckpt_root: Path,
    state: TrainState,
    *,
    model_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict | None,
    scheduler_state: dict | None,
    rank: int,
    is_main: bool,
    barrier=lambda: None,
    keep_last: int = 2,
) -> Path:
    """Write a checkpoint atomically (see module docstring). All ranks call it; rank 0 writes the shared
    files and does the rename, every rank writes its own RNG file into the temporary folder first."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state.step:08d}"
    tmp = ckpt_root / f".tmp-step-{state.step:08d}"
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(capture_rng(), tmp / f"rng-rank{rank}.pt")
    if is_main:
        if model_state is not None:
            torch.save(model_state, tmp / "model.pt")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if scheduler_state is not None:
            torch.save(scheduler_state, tmp / "scheduler.pt")
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST_FILE).write_text(json.dumps({"files": sizes}, indent=1))  # last: the completion mark
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(ckpt_root)
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for broken in [p for p in ckpt_root.glob("step-*") if not is_complete(p)]:  # a kill's leftovers
            shutil.rmtree(broken, ignore_errors=True)
    barrier()
    return final


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole checkpoint: its manifest, and every file the manifest lists at its size."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in files.items()) and STATE_FILE in files
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints (:func:`is_complete`; never a .tmp-* folder), oldest first. An incomplete
    ``step-*`` folder is skipped with a warning naming it."""
    import logging

    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.glob("step-*"):
        if is_complete(p):
            found.append(p)
        else:
            logging.getLogger("novalign.train").warning("%s: incomplete checkpoint (no manifest, or a file missing "
                                                        "or cut short), skipped", p)
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def load_checkpoint(path: Path, rank: int) -> tuple[TrainState, dict]:
    """Read a checkpoint folder; returns the train state and a dict of the other pieces (may be missing)."""
    state = TrainState(**json.loads((path / STATE_FILE).read_text()))
    pieces: dict = {}
    for name in ("model", "optimizer", "scheduler"):
        f = path / f"{name}.pt"
        if f.exists():
            pieces[name] = torch.load(f, map_location="cpu", weights_only=False)
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        pieces["rng"] = torch.load(rng_file, map_location="cpu", weights_only=False)
    return state, pieces
