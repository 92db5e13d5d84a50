"""Benchmark: novalign's streamed merge against a naive in-memory merge, for peak RSS and wall time.

What it measures
----------------
Three random Llama models of about 100M parameters each (hidden 768, 12 layers, vocab 32000, intermediate
1024: 106M) are saved as sharded safetensors (200 MB shards) in a temp folder: a base and two "fine-tunes"
``base + 0.01 * (shared + own)`` noise, so that their task vectors correlate the way fine-tunes of one base
do (Model Stock's ``t`` lands strictly between 0 and 1).

Both sides run the same maths (``novalign.merge.methods``, Model Stock by default, fp32 arithmetic) and
write the same sharded output:

* **naive**: ``safetensors.torch.load_file`` of every shard of every model (whole state dicts in memory),
  merge each tensor, keep the merged state dict, ``huggingface_hub.save_torch_state_dict``;
* **streamed**: ``novalign.merge.merge_models`` (row slices of one tensor at a time, output appended to
  pre-planned shards).

Each run is a FRESH subprocess, so its peak resident set (VmHWM; ``ru_maxrss`` where there is no /proc,
see :func:`_peak_rss_mb`) is its own; it counts touched pages of memory-mapped files too. The timed region
starts after the imports, whose footprint is reported as ``import_rss_mb`` (it is part of both peaks). All
shards are read once before the runs so the page cache is equally warm for both; each side runs ``--repeats``
times, alternating, and reports its fastest wall time and its highest peak. The parent then checks that both
outputs agree (``max_abs_diff``).

Both sides are memory-bound elementwise work. Workers run with one torch intra-op thread by default
(``--threads``): on a shared machine a busy core makes OpenMP threads spin at every op, which swamps the
comparison with noise (with 2 threads on a loaded 2-core box both walls varied 2-3x between runs).

One JSON line on stdout: ``streamed_peak_rss_mb``, ``naive_peak_rss_mb``, ``streamed_wall_s``,
``naive_wall_s``, ``rss_ratio`` and ``wall_ratio`` (streamed / naive; targets ≤ 0.25 and ≤ 1.0),
``targets_met``, ``rss_ratio_above_imports`` (the same ratio without the ~235 MB both pay for importing
torch), and the setup. The targets are for the full size; in ``--quick`` the import footprint dominates.

Usage::

    python bench/merge.py            # ~100M-parameter models, 200 MB shards
    python bench/merge.py --quick    # smoke run, ~10M parameters, < 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import log  # bench/common.py (the script's folder is on sys.path)

MODELS = ("base", "ft1", "ft2")


def _peak_rss_mb() -> float:
    """This process's peak resident set: VmHWM where /proc has it, else ru_maxrss.

    ru_maxrss of a freshly exec'd child also counts the resident set the parent had when it forked (Linux keeps
    the larger of the old and new memory maps' high-water marks across exec); VmHWM belongs to the new image
    alone. Both count memory-mapped file pages while they are mapped and touched.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------- setup


def make_models(args, root: Path) -> int:
    """Write base, ft1, ft2 as sharded safetensors + config.json; returns parameters per model."""
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        intermediate_size=args.intermediate, num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64, tie_word_embeddings=False,
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(args.seed)
    base = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    shared = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    dtype = getattr(torch, args.dtype)
    for name in MODELS:
        if name == "base":
            state = {k: v.to(dtype) for k, v in base.items()}
        else:
            state = {k: (base[k] + 0.01 * 0.02 * (shared[k] + torch.randn(s, generator=gen))).to(dtype)
                     for k, s in shapes.items()}
        (root / name).mkdir(parents=True, exist_ok=True)
        save_torch_state_dict(state, root / name, max_shard_size=f"{args.shard_mb}MB")
        cfg.dtype = args.dtype
        cfg.save_pretrained(root / name)
        del state
    return sum(int(torch.Size(s).numel()) for s in shapes.values())


# ---------------------------------------------------------------------------------------------- workers


def naive_merge(args, root: Path, out: Path) -> None:
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    from novalign.merge import METHODS

    def load(d: Path) -> dict:
        state = {}
        for f in sorted(d.glob("*.safetensors")):
            state.update(load_file(f))
        return state

    base, *models = [load(root / n) for n in MODELS]
    method = METHODS[args.method]() if args.method == "model_stock" else METHODS[args.method]((1.0, 1.0))
    merged = {}
    for name, b in base.items():
        merged[name] = method(b.float(), [m[name].float() for m in models]).to(b.dtype)
    out.mkdir(parents=True)
    save_torch_state_dict(merged, out, max_shard_size=f"{args.shard_mb}MB")
    shutil.copy2(root / "base" / "config.json", out / "config.json")


def streamed_merge(args, root: Path, out: Path) -> None:
    from novalign.merge import MergeConfig, merge_models

    merge_models(MergeConfig(
        method=args.method, base_model=str(root / "base"), models=[{"path": str(root / n)} for n in MODELS[1:]],
        output_dir=str(out), max_shard_size=f"{args.shard_mb}MB", chunk_mb=args.chunk_mb,
    ))


def worker(args) -> None:
    root, out = Path(args.root), Path(args.worker_out)
    import torch  # imported before the baseline so both sides start from the same footprint

    import novalign.merge  # noqa: F401

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import_rss = _peak_rss_mb()
    t0 = time.perf_counter()
    (naive_merge if args.worker == "naive" else streamed_merge)(args, root, out)
    wall = time.perf_counter() - t0
    res = {"peak_rss_mb": round(_peak_rss_mb(), 1), "wall_s": round(wall, 3), "import_rss_mb": round(import_rss, 1)}
    print(json.dumps(res))


# ---------------------------------------------------------------------------------------------- parent


def run_worker(args, kind: str, root: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--root", str(root), "--worker-out", str(out),
           "--method", args.method, "--shard-mb", str(args.shard_mb), "--chunk-mb", str(args.chunk_mb),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors import safe_open

    def index(d: Path) -> dict:
        return {k: f for f in sorted(d.glob("*.safetensors")) for k in safe_open(str(f), "pt").keys()}  # noqa: SIM118

    ia, ib = index(a), index(b)
    assert set(ia) == set(ib), "outputs hold different tensors"
    worst = 0.0
    for name in ia:
        with safe_open(str(ia[name]), "pt") as fa, safe_open(str(ib[name]), "pt") as fb:
            worst = max(worst, float((fa.get_tensor(name).float() - fb.get_tensor(name).float()).abs().max()))
    return worst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~10M-parameter models and 20 MB shards (smoke run)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--shard-mb", type=int, default=200, help="shard size of the inputs and of both outputs")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="stored dtype of the models")
    p.add_argument("--method", default="model_stock", choices=["model_stock", "task_arithmetic", "linear", "ties"])
    p.add_argument("--chunk-mb", type=float, default=8.0, help="novalign's merge.chunk_mb")
    p.add_argument("--repeats", type=int, default=3, help="runs per side (fastest wall time, highest peak kept)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where to put the models (default: a temp folder, deleted)")
    p.add_argument("--worker", choices=["naive", "streamed"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args)
        return
    if args.quick:
        args.hidden, args.layers, args.vocab, args.intermediate, args.shard_mb, args.repeats = 256, 4, 8000, 688, 20, 1

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="novalign-merge-bench-"))
    try:
        root = tmp / "models"
        log(f"writing 3 models to {root} ...")
        params = make_models(args, root)
        for f in root.rglob("*.safetensors"):  # warm the page cache equally for both sides
            f.read_bytes()
        runs: dict[str, list[dict]] = {"naive": [], "streamed": []}
        for r in range(args.repeats):
            for kind in (("naive", "streamed") if r % 2 == 0 else ("streamed", "naive")):
                res = run_worker(args, kind, root, tmp / f"out-{kind}")
                log(f"{kind}: {res}")
                runs[kind].append(res)
        diff = max_abs_diff(tmp / "out-naive", tmp / "out-streamed")
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    best = {k: {"peak": max(x["peak_rss_mb"] for x in v), "wall": min(x["wall_s"] for x in v)} for k, v in runs.items()}
    rss_ratio = best["streamed"]["peak"] / best["naive"]["peak"]
    wall_ratio = best["streamed"]["wall"] / best["naive"]["wall"]
    imports = runs["streamed"][0]["import_rss_mb"]
    out = {
        "streamed_peak_rss_mb": best["streamed"]["peak"],
        "naive_peak_rss_mb": best["naive"]["peak"],
        "streamed_wall_s": best["streamed"]["wall"],
        "naive_wall_s": best["naive"]["wall"],
        "rss_ratio": round(rss_ratio, 3),
        "wall_ratio": round(wall_ratio, 3),
        "targets_met": rss_ratio <= 0.25 and wall_ratio <= 1.0,
        "import_rss_mb": imports,
        "rss_ratio_above_imports": round((best["streamed"]["peak"] - imports) / (best["naive"]["peak"] - imports), 3),
        "max_abs_diff": diff,
        "method": args.method,
        "models": 3,
        "params_per_model": params,
        "stored_dtype": args.dtype,
        "model_mb": round(params * (4 if args.dtype == "float32" else 2) / 2**20, 1),
        "shard_mb": args.shard_mb,
        "chunk_mb": args.chunk_mb,
        "repeats": args.repeats,
        "threads": args.threads,
        "quick": args.quick,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
