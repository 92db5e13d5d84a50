"""GPU benchmark: SFT throughput, MFU and peak memory of packing vs dynamic padding at Qwen2-1.5B scale.

What it measures
----------------
A random-init model with the shape of Qwen2-1.5B (hidden 1536, 28 layers, 12 heads, 2 KV heads,
intermediate 8960, vocab 151936, tied embeddings, ~1.54 B parameters) is trained on synthetic SFT samples
with log-normal lengths (median 400, sigma 1.0, clipped to [16, 4096]; labels on the last 60 % of each
sample) in two modes, each with a fresh model (same seed) and a fresh optimizer:

* **baseline -- dynamic padding**: random batches of ``--batch-size`` (8) samples right-padded to the
  longest one (at most 8 x 4096 tokens, typically ~12k), transformers' ``"sdpa"`` attention with the
  padding mask;
* **novalign packing**: best-fit-decreasing rows of ``--row-len`` (16,384) tokens, one row per step,
  the ``novalign_varlen`` attention backend (flash-attn if installed, else torch's ``varlen_attn``).

Both modes use ``SFTObjective`` (chunked cross-entropy that projects only positions with a label, so the
padded baseline does not pay for logits at padding -- a baseline *more* favourable than the Hugging Face
default, which computes logits at every position). Both train on exactly the same samples: the timed
packed rows, and the same samples regrouped into padded batches.

Reported (one JSON line on stdout; progress on stderr): ``padded_tokens_per_s`` / ``packed_tokens_per_s``
(real, non-padding tokens per second of forward + backward + AdamW step, after ``--warmup`` untimed steps),
``speedup`` (packed / padded), ``padded_mfu`` / ``packed_mfu`` = 6 * params * real tokens/s / peak FLOP/s
(peak 989e12, H100/H200 dense bf16; attention FLOPs and recomputation are not counted, so this is model
FLOPs utilization on useful tokens), ``padded_peak_mem_gib`` / ``packed_peak_mem_gib``
(``torch.cuda.max_memory_allocated`` over the mode: weights, gradients, optimizer state, activations), and
the utilization of both plans. A CUDA out-of-memory error in one mode is caught: that mode reports
``"<mode>_error"`` and null numbers, the other still runs.

Precision (``--precision``):

* ``bf16`` (default, the faster one): parameters, gradients and AdamW state in bf16, and
  ``torch.optim.AdamW(fused=True)`` updates the bf16 weights directly. There is no fp32 master copy, so
  small updates are rounded away -- acceptable for a throughput benchmark, not for real training.
* ``amp``: fp32 parameters, gradients and AdamW state, forward under ``torch.autocast(bfloat16)``. The
  honest training setup; it costs a cast of the weights every step and ~2x the state memory.

Options: ``--compile`` (``torch.compile(dynamic=True)`` on each decoder layer; warm-up raised to 3 steps),
``--grad-ckpt K`` (multi-layer gradient checkpointing with groups of K layers, 0 = off), ``--steps``,
``--warmup``. On CPU ``--compile`` is not representative: the varlen CPU fallback loops over samples in
Python (``cu_seqlens.tolist()``), which breaks the graph and recompiles for every new segment count.

On a machine without CUDA the script runs the same code path with a tiny shape (``--tiny``: hidden 64,
2 layers, vocab 512, 1024-token rows) and prints the same keys, so it can be checked before spending GPU
time::

    python bench/gpu_sft.py --quick --tiny        # CPU smoke run, < 30 s
    python bench/gpu_sft.py                       # on the GPU
    python bench/gpu_sft.py --compile --grad-ckpt 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import traceback

import torch

from novalign.models.attention import resolve_backend, varlen_kernel_name
from novalign.models.checkpointing import decoder_layers, enable_multi_layer_checkpointing
from novalign.models.packing import (
    collate_packed,
    collate_padded,
    plan_packed_rows,
    plan_padded_batches,
    utilization,
)
from novalign.train.sft_objective import SFTObjective

from common import log, make_samples  # bench/common.py (the script's folder is on sys.path)

GIB = 1024**3


def model_config(args):
    from transformers import Qwen2Config

    if args.tiny:
        shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=512)
    else:
        shape = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     intermediate_size=8960, vocab_size=151936)
    return Qwen2Config(**shape, max_position_embeddings=32768, tie_word_embeddings=True, use_cache=False)


def build(args, attn_implementation: str, device: torch.device):
    """Fresh model (same seed every time) + AdamW, with optional checkpointing and per-layer compile."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialize directly on the device (fast for 1.5 B parameters)
        model = AutoModelForCausalLM.from_config(model_config(args), attn_implementation=attn_implementation, dtype=dtype)
    model.train()
    if args.grad_ckpt > 0:
        enable_multi_layer_checkpointing(model, args.grad_ckpt)
    if args.compile:
        for layer in decoder_layers(model):
            layer.compile(dynamic=True)  # lengths, segment counts and max_seqlen change every step
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError) as exc:  # fused AdamW unavailable for this device/dtype
        log(f"fused AdamW unavailable ({exc}); using foreach")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, foreach=True)
    return model, opt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args, name: str, attn: str, warm_batches, timed_batches, device: torch.device, num_params: int) -> dict:
    """Train one mode; returns its numbers, or ``{"error": ...}`` on CUDA out-of-memory."""
    model = opt = None
    objective = SFTObjective(chunk_size=args.loss_chunk)
    autocast = args.precision == "amp"
    try:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model, opt = build(args, attn, device)

        def step(batch, n_loss: int):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss_sum, _ = objective.loss_sum(model, batch)
            (loss_sum / max(n_loss, 1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss_sum.detach()

        t_warm = time.perf_counter()
        for batch, n_loss in warm_batches:
            step(batch, n_loss)
        sync(device)
        log(f"  {name}: {len(warm_batches)} warm-up steps in {time.perf_counter() - t_warm:.1f} s")
        real = sum(b.num_real_tokens for b, _ in timed_batches)
        losses = []
        t0 = time.perf_counter()
        for batch, n_loss in timed_batches:
            losses.append(step(batch, n_loss))  # no host sync inside the timed loop
        sync(device)
        elapsed = time.perf_counter() - t0
        total_loss = float(torch.stack(losses).float().sum()) / max(sum(n for _, n in timed_batches), 1)
        tps = real / elapsed
        res = {
            "tokens_per_s": tps,
            "mfu": 6 * num_params * tps / args.peak_flops,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
            "seconds": elapsed,
            "steps": len(timed_batches),
            "real_tokens": real,
            "loss": total_loss,
        }
        log(f"  {name}: {tps:,.0f} real tok/s, MFU {res['mfu']:.3f}, peak {res['peak_mem_gib'] or 0:.1f} GiB, "
            f"{len(timed_batches)} steps in {elapsed:.1f} s")
        return res
    except torch.OutOfMemoryError as exc:
        log(f"  {name}: CUDA out of memory: {str(exc).splitlines()[0]}")
        return {"error": "CUDA OOM: " + str(exc).splitlines()[0][:300],
                "peak_mem_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None}
    except Exception as exc:  # keep the other mode's numbers; the error goes into the JSON
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        model = opt = None  # drop the references before emptying the CUDA cache
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed packed steps (rows); padded mode trains the same samples")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up packed rows (their samples warm up padded mode)")
    p.add_argument("--row-len", type=int, default=16384, help="packed row length")
    p.add_argument("--batch-size", type=int, default=8, help="samples per padded batch")
    p.add_argument("--num-samples", type=int, default=4000, help="generated set (plan utilization is computed on all of it)")
    p.add_argument("--max-len", type=int, default=4096, help="longest sample")
    p.add_argument("--median-len", type=float, default=400.0)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--precision", choices=["bf16", "amp"], default="bf16",
                   help="bf16: bf16 params + fused AdamW on them; amp: fp32 params + bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer")
    p.add_argument("--grad-ckpt", type=int, default=0, help="gradient checkpointing group size k (0 = off)")
    p.add_argument("--loss-chunk", type=int, default=4096, help="SFTObjective chunk size for the cross-entropy")
    p.add_argument("--modes", default="padded,packed", help="which modes to run, comma-separated")
    p.add_argument("--peak-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s for MFU (H100/H200 SXM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shape (hidden 64, 2 layers, vocab 512, 1024-token rows); forced on CPU")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, 1000 generated samples")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type != "cuda" and not args.tiny:
        log("no CUDA device: running the --tiny shape (the full shape would take hours on CPU)")
        args.tiny = True
    if args.tiny:
        args.row_len = min(args.row_len, 1024)
        args.max_len = min(args.max_len, args.row_len)
    if args.quick:
        args.warmup, args.steps, args.num_samples = 1, 2, 1000
    elif args.compile and args.warmup < 3:
        args.warmup = 3  # first compile, then one recompile with dynamic shapes, then steady state
        log("--compile: warm-up raised to 3 steps")
    if args.compile:
        import torch._dynamo as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(64, getattr(dynamo.config, name)))
    if args.max_len > args.row_len:
        p.error("--max-len must be <= --row-len")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    samples = make_samples(args.num_samples, median=args.median_len, sigma=args.sigma, min_len=16,
                           max_len=args.max_len, vocab=model_config(args).vocab_size, seed=args.seed)
    lengths = [len(s[0]) for s in samples]
    rows = plan_packed_rows(lengths, args.row_len, seed=args.seed, epoch=0)
    need = args.warmup + args.steps
    if len(rows) < need:
        p.error(f"only {len(rows)} packed rows from {len(samples)} samples; raise --num-samples")
    full_pad = plan_padded_batches(len(samples), args.batch_size, seed=args.seed, epoch=0)
    full_util = {
        "padded": utilization(sum(lengths), sum(len(b) * max(lengths[i] for i in b) for b in full_pad)),
        "packed": utilization(sum(lengths), len(rows) * args.row_len),
    }

    def packed_batches(rs):
        out = []
        for r in rs:
            b = collate_packed(samples, [r], args.row_len, pad_id=0)
            out.append((b.to(device), b.num_loss_tokens))  # count on the host: no sync in the loop
        return out

    def padded_batches(rs):
        idx = [i for r in rs for i in r]  # exactly the samples of these packed rows
        plan = plan_padded_batches(len(idx), args.batch_size, seed=args.seed, epoch=0)
        out = []
        for b_idx in plan:
            b = collate_padded([samples[idx[j]] for j in b_idx], pad_id=0)
            out.append((b.to(device), b.num_loss_tokens))
        return out

    warm_rows, timed_rows = rows[: args.warmup], rows[args.warmup : need]
    pk_warm, pk_timed = packed_batches(warm_rows), packed_batches(timed_rows)
    pd_warm, pd_timed = padded_batches(warm_rows), padded_batches(timed_rows)
    timed_real = sum(b.num_real_tokens for b, _ in pk_timed)
    assert timed_real == sum(b.num_real_tokens for b, _ in pd_timed)
    timed_util = {
        "padded": utilization(timed_real, sum(b.num_row_tokens for b, _ in pd_timed)),
        "packed": utilization(timed_real, sum(b.num_row_tokens for b, _ in pk_timed)),
    }
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        meta = AutoModelForCausalLM.from_config(model_config(args))
    num_params = sum(p.numel() for p in meta.parameters())  # tied embedding counted once
    del meta
    varlen = resolve_backend("auto")
    log(f"{num_params / 1e9:.3f} B params, {args.precision}, device {device}, varlen kernel {varlen_kernel_name(device)}; "
        f"utilization padded {full_util['padded']:.3f} / packed {full_util['packed']:.3f}; timed: {len(pk_timed)} packed rows, "
        f"{len(pd_timed)} padded batches, {timed_real} real tokens")

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    res = {}
    for mode in modes:
        log(f"{mode}:")
        if mode == "padded":
            res[mode] = run_mode(args, mode, "sdpa", pd_warm, pd_timed, device, num_params)
        elif mode == "packed":
            res[mode] = run_mode(args, mode, varlen, pk_warm, pk_timed, device, num_params)
        else:
            p.error(f"unknown mode {mode!r}")

    def get(mode, key, nd=4, sig=False):
        v = res.get(mode, {}).get(key)
        if v is None:
            return None
        return float(f"{v:.{nd}g}") if sig else round(v, nd)

    pad_tps, pack_tps = get("padded", "tokens_per_s", 1), get("packed", "tokens_per_s", 1)
    out = {
        "bench": "gpu_sft",
        "padded_tokens_per_s": pad_tps,
        "packed_tokens_per_s": pack_tps,
        "speedup": round(pack_tps / pad_tps, 3) if pad_tps and pack_tps else None,
        "padded_mfu": get("padded", "mfu", 4, sig=True),
        "packed_mfu": get("packed", "mfu", 4, sig=True),
        "padded_peak_mem_gib": get("padded", "peak_mem_gib", 2),
        "packed_peak_mem_gib": get("packed", "peak_mem_gib", 2),
        "padded_utilization": round(full_util["padded"], 4),
        "packed_utilization": round(full_util["packed"], 4),
        "padded_utilization_timed": round(timed_util["padded"], 4),
        "packed_utilization_timed": round(timed_util["packed"], 4),
        "padded_steps": len(pd_timed),
        "packed_steps": len(pk_timed),
        "padded_seconds": get("padded", "seconds", 3),
        "packed_seconds": get("packed", "seconds", 3),
        "padded_loss": get("padded", "loss"),
        "packed_loss": get("packed", "loss"),
        "timed_real_tokens": timed_real,
        "params": num_params,
        "row_len": args.row_len,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "compile": args.compile,
        "grad_ckpt": args.grad_ckpt,
        "varlen_kernel": varlen_kernel_name(device),
        "tiny": args.tiny,
        "quick": args.quick,
        "peak_flops": args.peak_flops,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    for mode in ("padded", "packed"):
        if "error" in res.get(mode, {}):
            out[f"{mode}_error"] = res[mode]["error"]
    import transformers

    out["transformers"] = transformers.__version__
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
