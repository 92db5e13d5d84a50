"""Two processes on one output folder (issue 22 item 7): the second `novalign run` / `novalign eval` is refused
with a message naming the folder and the holder's pid, and a SIGKILLed holder leaves no stale lock."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from novalign.data.io import OutputLocked, output_lock

_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from novalign.data.io import output_lock
with output_lock({folder!r}, "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), folder=str(folder))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    from novalign.config import EvalConfig, RecipeConfig
    from novalign.eval.runner import run_eval
    from novalign.recipe import run_recipe

    run_dir = tmp_path / "runs" / "demo"
    proc = _holder(run_dir)
    try:
        with pytest.raises(OutputLocked, match=f"{run_dir}: another `test holder` \\(pid {proc.pid}\\)"):
            run_recipe(RecipeConfig(runs_dir=str(tmp_path / "runs"), stages=["world"]), console_print=lambda *_: None)
        assert not (run_dir / "world").exists()  # refused before anything was written
        eval_dir = tmp_path / "eval"
        other = _holder(eval_dir)
        try:
            cfg = EvalConfig.model_validate({"models": [{"name": "m", "responses": str(tmp_path / "r.jsonl")}],
                                             "suites": [{"type": "ifeval", "data": str(tmp_path / "x.jsonl")}],
                                             "output_dir": str(eval_dir)})
            (tmp_path / "r.jsonl").write_text("")
            (tmp_path / "x.jsonl").write_text("")
            with pytest.raises(OutputLocked, match="another `test holder`"):
                run_eval(cfg)
        finally:
            other.kill()
            other.wait()
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the kernel drops a flock with its holder: no stale lock
        proc.wait()
    with output_lock(run_dir, "novalign run"):
        assert (run_dir / ".novalign.lock").read_text() == f"{os.getpid()} novalign run"
    with output_lock(run_dir, "novalign run"):  # released on exit, so it can be taken again
        time.sleep(0)
