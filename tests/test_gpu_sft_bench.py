"""bench/gpu_sft.py starts on the lent GPU image (no pydantic, novalign not installed) and runs every mode.

Both runs are real runs of the script on CPU at the tiny shape, in a subprocess where ``import pydantic``
fails (``sys.modules["pydantic"] = None``), from the repo root with ``PYTHONPATH=.`` as on the GPU machine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_estimate as est  # noqa: E402

MODES = ("hf_padded_random", "hf_grouped", "hf_packed_sdpa", "novalign_packed")
NO_PYDANTIC = ("import runpy, sys; sys.modules['pydantic'] = None; sys.argv = ['bench/gpu_sft.py'] + sys.argv[1:]; "
               "runpy.run_path('bench/gpu_sft.py', run_name='__main__')")


def _run(*flags: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", NO_PYDANTIC, *flags, "--threads", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pydantic" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_check_mode_runs_every_mode_without_pydantic():
    out = _run("--check")
    assert out["check"] is True and out["ok"] is True and out["problems"] == []
    for m in MODES:
        assert out[f"{m}_tokens_per_s"] > 0 and out[f"{m}_steps"] >= 1, m
    # counted at run time: on CPU the packed mode takes the exact loop; the HF modes never enter novalign's code
    assert set(out["novalign_packed_kernel_calls"]) == {"sdpa_loop/bfloat16"}
    assert out["hf_packed_sdpa_kernel_calls"] == {}
    # the HF packed baseline isolates samples as novalign's kernel does; the one-segment control does not
    assert out["packed_sdpa_vs_varlen_max_abs_err"] < 1e-4 < 0.1 < out["leak_control_max_abs_err"]
    # tiny shape: vocab 512 x hidden 64 embedding, tied, counted once
    assert out["params"] - out["params_non_embedding"] == 512 * 64


def test_quick_tiny_reports_all_modes_and_speedups():
    out = _run("--quick", "--tiny")
    for m in MODES:
        assert out[f"{m}_tokens_per_s"] > 0, m
        assert out[f"{m}_mfu_non_embedding"] < out[f"{m}_mfu"]
    for m in MODES[:-1]:
        assert out[f"speedup_vs_{m}"] > 0
    # same samples in every mode; packing pads least, random order most
    assert out["utilization_packed"] > out["utilization_grouped"] > out["utilization_padded_random"]
    assert out["hf_packed_sdpa_loss"] == pytest.approx(out["novalign_packed_loss"], rel=2e-2)


def test_estimates_by_hand():
    """Shape: 2 layers, hidden 4, intermediate 8, kv width 2, vocab 10, 100 params.
    Activations per token and layer (bf16): norms' fp32 inputs 2*4*4 = 32, norm outputs/q/k/v/attn/o_proj
    2*(5*4 + 2*2) = 48, MLP 2*4*8 = 64, residuals 2*2*4 = 16 -> 160 bytes.
    3 tokens, no checkpointing: states 100*8 = 800, activations 2 layers*160*3 = 960, loss chunk
    min(4096, 3) = 3 -> 2*4*3*10 = 240; (800 + 960 + 240) * 1.1 = 2200, + 1 GiB.
    Checkpointing k=1: 2 group inputs 2*(2 bytes*4)*3 = 48 + one layer's 480 -> (800 + 528 + 240) * 1.1 = 1724.8.
    FLOPs of 3 tokens in one causal segment of 3 (sum s^2 = 9): 6*100*3 = 1800 + 3.5*2*4*2*9 = 504 -> 2304.
    MFU of 10 tokens/s at peak 6000: 6*100*10/6000 = 1.0; non-embedding N = 100 - 10*4 = 60."""
    s = est.Shape(layers=2, hidden=4, intermediate=8, kv_width=2, vocab=10, params=100)
    assert est.activation_bytes_per_token_layer(s, amp=False) == 160
    assert est.step_memory_bytes(s, amp=False, grad_ckpt=0, tokens=3) == 2200 + est.GIB
    assert est.step_memory_bytes(s, amp=False, grad_ckpt=1, tokens=3) == 1724 + est.GIB
    assert est.step_flops(s, grad_ckpt=0, tokens=3, causal_sq=9) == pytest.approx(2304)
    assert est.mfu(100, 10, 6000) == pytest.approx(1.0)
    assert est.non_embedding_params(s) == 60
    assert est.peak_flops_for("NVIDIA H100 80GB HBM3", 1.0) == (989e12, "datasheet (H100)")
    assert est.peak_flops_for("NVIDIA H100 PCIe", 1.0)[0] == 756e12
    assert est.peak_flops_for("NVIDIA H200", 1.0)[0] == 989e12
    assert est.peak_flops_for("NVIDIA A100-SXM4-80GB", 312e12)[0] == 312e12
