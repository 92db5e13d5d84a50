"""GPU benchmark: SFT throughput, MFU and peak memory of novalign packing against what users have, at Qwen2-1.5B scale.

What it measures
----------------
A random-init model with the shape of Qwen2-1.5B (hidden 1536, 28 layers, 12 heads, 2 KV heads,
intermediate 8960, vocab 151936, tied embeddings, ~1.54 B parameters) is trained on synthetic SFT samples
with log-normal lengths (median 400, sigma 1.0, clipped to [16, 4096]; labels on the last 60 % of each
sample). Four modes, each with a fresh model (same seed) and a fresh AdamW, in one run, on exactly the same
samples (those of the timed packed rows):

* ``hf_padded_random`` -- the Hugging Face Trainer default: random-order batches of ``--batch-size`` (8)
  samples right-padded to the longest, transformers' ``"sdpa"`` attention with the padding mask;
* ``hf_grouped`` -- the Trainer with ``group_by_length=True``: the same, batched by transformers' own
  ``get_length_grouped_indices`` (random mega-batches sorted by length), so a batch pads little;
* ``hf_packed_sdpa`` -- packed rows fed to transformers' ``"sdpa"`` without a mask: transformers finds the
  samples from the restarts in ``position_ids`` and builds a block-diagonal mask over the row;
* ``novalign_packed`` -- best-fit-decreasing rows of ``--row-len`` (16,384) tokens, one row per step, the
  ``novalign_varlen`` attention (flash-attn if installed, else torch's ``varlen_attn``).

All modes use ``SFTObjective`` (chunked cross-entropy that projects only positions with a label -- the Hugging
Face default computes logits at every position, so every baseline here is *more* favourable than a stock one).

Before anything is trained the script prints, per mode, its estimated peak memory and seconds
(``bench/gpu_estimate.py``) and the estimated total; a mode whose memory estimate exceeds the card, or whose
time estimate exceeds what is left of ``--budget-s``, is skipped and its reason is in the JSON
(``<mode>_skipped``). A CUDA out-of-memory error is still caught (``<mode>_error``); the other modes run.

Reported (one JSON line on stdout; progress on stderr), per mode: ``<mode>_tokens_per_s`` (real, non-padding
tokens per second of forward + backward + AdamW step, over ``--steps`` (>= 30) packed rows' samples after
``--warmup`` untimed steps), ``<mode>_mfu`` = 6 N tokens/s / peak with N = all parameters (the tied
embedding once) and ``<mode>_mfu_non_embedding`` with N less the embedding (attention FLOPs and recomputation
not counted), ``<mode>_peak_mem_gib`` (``torch.cuda.max_memory_allocated``) beside ``<mode>_est_mem_gib``,
``<mode>_seconds`` beside ``<mode>_est_seconds``, ``<mode>_steps``, ``<mode>_loss``, the plan utilization,
and ``<mode>_kernel_calls``: the attention kernels the mode really ran, counted at run time by
``novalign.models.attention`` (``torch_varlen/bfloat16``: 28 calls a forward). The speedups of
``novalign_packed`` over each baseline are ``speedup_vs_<mode>``. Peak FLOP/s: 989e12 for H100 SXM and H200
(dense bf16), 756e12 for H100 PCIe, else ``--peak-flops``.

Precision (``--precision``): ``bf16`` (default): bf16 parameters, gradients and AdamW state, fused AdamW on
them (no fp32 master copy: fine for throughput, not for training). ``amp``: fp32 parameters under
``torch.autocast(bfloat16)``, the honest training setup and SFT's default on a GPU; the attention inputs are
cast to the compute dtype so the fused kernel is kept (``<mode>_kernel_calls`` shows it).

Options: ``--grad-ckpt K`` (default 1: without it the random-order padded batches of up to 8 x 4096 tokens do
not fit 80 GB), ``--compile`` (not in the default run: it adds minutes of compilation), ``--modes``.

It runs from the repo root with ``PYTHONPATH=.`` on an image with torch, transformers and numpy only (novalign
not installed, no pydantic): it imports nothing of novalign that needs more. ``--check`` imports everything
and runs one tiny step of every mode (and of ``novalign_packed`` under ``amp``) in seconds, and fails if a
packed step on CUDA did not run a fused kernel -- run it first on a lent GPU::

    PYTHONPATH=. python bench/gpu_sft.py --check           # seconds
    PYTHONPATH=. python bench/gpu_sft.py                   # the run, < 6 min on an H100 (estimate printed)
    PYTHONPATH=. python bench/gpu_sft.py --quick --tiny    # CPU smoke run of all modes
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
import traceback

import torch

from novalign.models import attention
from novalign.models.checkpointing import decoder_layers, enable_multi_layer_checkpointing
from novalign.models.packing import collate_packed, collate_padded, plan_packed_rows, plan_padded_batches, utilization
from novalign.train.sft_objective import SFTObjective

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import length_grouped_batches, log, make_samples  # noqa: E402  (bench/common.py)
import gpu_estimate as est  # noqa: E402

MODES = ("hf_padded_random", "hf_grouped", "hf_packed_sdpa", "novalign_packed")
BASELINES = MODES[:-1]


def model_config(args):
    from transformers import Qwen2Config

    if args.tiny:
        shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=512)
    else:
        shape = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     intermediate_size=8960, vocab_size=151936)
    return Qwen2Config(**shape, max_position_embeddings=32768, tie_word_embeddings=True, use_cache=False)


def model_shape(args) -> est.Shape:
    from transformers import AutoModelForCausalLM

    cfg = model_config(args)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in meta.parameters())  # parameters() yields a tied weight once
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return est.Shape(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                     cfg.num_key_value_heads * head_dim, cfg.vocab_size, params)


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
    except (RuntimeError, TypeError):  # fused AdamW unavailable for this device/dtype (CPU bf16)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, foreach=True)
    return model, opt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Plan:
    """One mode's batches (host tensors moved to the device) and what the estimates need of each step."""

    warm: list
    timed: list
    steps_meta: list  # per step: (tokens processed, sum of squared causal segment lengths, masked rows, width)


def mode_batches(mode: str, samples, rows, args) -> tuple[list, list]:
    """The batches of ``rows``'s samples for ``mode``: (Batch, loss tokens) pairs and estimate metadata."""
    if mode in ("hf_packed_sdpa", "novalign_packed"):
        out = []
        for r in rows:
            b = collate_packed(samples, [r], args.row_len, pad_id=0)
            seg = (b.cu_seqlens[1:] - b.cu_seqlens[:-1]).tolist()
            if mode == "hf_packed_sdpa":  # no cu_seqlens, no mask: transformers reads the position ids
                b = dataclasses.replace(b, cu_seqlens=None, max_seqlen=0, attention_mask=None)
                out.append((b, (b.num_row_tokens, 0, 1, args.row_len)))
            else:
                out.append((b, (b.num_row_tokens, sum(s * s for s in seg), 0, 0)))
        return [b for b, _ in out], [m for _, m in out]
    idx = [i for r in rows for i in r]  # exactly the samples of these packed rows
    if mode == "hf_padded_random":
        plan = plan_padded_batches(len(idx), args.batch_size, seed=args.seed, epoch=0)
    else:
        plan = length_grouped_batches([len(samples[i][0]) for i in idx], args.batch_size, args.seed)
    batches = [collate_padded([samples[idx[j]] for j in b], pad_id=0) for b in plan]
    return batches, [(b.num_row_tokens, 0, b.input_ids.shape[0], b.input_ids.shape[1]) for b in batches]


def make_plan(mode: str, samples, warm_rows, timed_rows, args, device) -> Plan:
    warm, warm_meta = mode_batches(mode, samples, warm_rows, args)
    timed, timed_meta = mode_batches(mode, samples, timed_rows, args)
    move = lambda bs: [(b.to(device), b.num_loss_tokens) for b in bs]  # noqa: E731  count on the host: no sync
    return Plan(move(warm), move(timed), warm_meta + timed_meta)


def estimate(plan: Plan, shape: est.Shape, args, peak: float, mode: str) -> tuple[float, float]:
    """(peak GiB, seconds incl. model init) of a mode, from ``bench/gpu_estimate.py``'s models."""
    amp = args.precision == "amp"
    mem = max(est.step_memory_bytes(shape, amp=amp, grad_ckpt=args.grad_ckpt, tokens=t, mask_rows=mr, mask_width=mw,
                                    loss_chunk=args.loss_chunk) for t, _, mr, mw in plan.steps_meta)
    mfu = est.ASSUMED_MFU["varlen" if mode == "novalign_packed" else "sdpa_mask"]
    flops = sum(est.step_flops(shape, grad_ckpt=args.grad_ckpt, tokens=t, causal_sq=sq, masked_rows=mr, masked_width=mw)
                for t, sq, mr, mw in plan.steps_meta)
    return mem / est.GIB, flops / (peak * mfu) + 15.0  # + model init, first-step kernel selection


def run_mode(args, name, attn, plan: Plan, device, shape: est.Shape, peak: float) -> dict:
    """Train one mode; its numbers, or ``{"error": ...}`` (CUDA out-of-memory or another failure)."""
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
        for batch, n_loss in plan.warm:
            step(batch, n_loss)
        sync(device)
        log(f"  {name}: {len(plan.warm)} warm-up steps in {time.perf_counter() - t_warm:.1f} s")
        real = sum(b.num_real_tokens for b, _ in plan.timed)
        attention.reset_kernel_calls()
        losses = []
        t0 = time.perf_counter()
        for batch, n_loss in plan.timed:
            losses.append(step(batch, n_loss))  # no host sync inside the timed loop
        sync(device)
        elapsed = time.perf_counter() - t0
        calls = attention.kernel_calls(by_dtype=True)
        tps = real / elapsed
        res = {
            "tokens_per_s": tps,
            "mfu": est.mfu(shape.params, tps, peak),
            "mfu_non_embedding": est.mfu(est.non_embedding_params(shape), tps, peak),
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / est.GIB if device.type == "cuda" else None,
            "seconds": elapsed,
            "steps": len(plan.timed),
            "loss": float(torch.stack(losses).float().sum()) / max(sum(n for _, n in plan.timed), 1),
            "kernel_calls": calls,  # empty for the HF modes: transformers' own SDPA never enters novalign's code
        }
        log(f"  {name}: {tps:,.0f} real tok/s, MFU {res['mfu']:.3f}, peak {res['peak_mem_gib'] or 0:.1f} GiB, "
            f"{len(plan.timed)} steps in {elapsed:.1f} s, attention {res['kernel_calls']}")
        return res
    except torch.OutOfMemoryError as exc:
        log(f"  {name}: CUDA out of memory: {str(exc).splitlines()[0]}")
        return {"error": "CUDA OOM: " + str(exc).splitlines()[0][:300],
                "peak_mem_gib": torch.cuda.max_memory_allocated(device) / est.GIB if device.type == "cuda" else None}
    except Exception as exc:  # keep the other modes' numbers; the error goes into the JSON
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        model = opt = None  # drop the references before emptying the CUDA cache
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed packed rows (>= 30); the other modes train their samples")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up packed rows (their samples warm up the others)")
    p.add_argument("--row-len", type=int, default=16384, help="packed row length")
    p.add_argument("--batch-size", type=int, default=8, help="samples per padded batch")
    p.add_argument("--num-samples", type=int, default=4000, help="generated set (plan utilization is computed on all of it)")
    p.add_argument("--max-len", type=int, default=4096, help="longest sample")
    p.add_argument("--median-len", type=float, default=400.0)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--precision", choices=["bf16", "amp"], default="bf16",
                   help="bf16: bf16 params + fused AdamW on them; amp: fp32 params + bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (not in the default run)")
    p.add_argument("--grad-ckpt", type=int, default=1, help="gradient checkpointing group size k (0 = off)")
    p.add_argument("--loss-chunk", type=int, default=4096, help="SFTObjective chunk size for the cross-entropy")
    p.add_argument("--modes", default=",".join(MODES), help="which modes to run, comma-separated")
    p.add_argument("--peak-flops", type=float, default=989e12, help="peak FLOP/s for MFU on a device not in the table")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip a mode whose time estimate exceeds what is left")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shape (hidden 64, 2 layers, vocab 512, 1024-token rows); forced on CPU")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed rows of 512 tokens, 400 samples of median 64")
    p.add_argument("--estimate-only", action="store_true",
                   help="print the memory/time estimates of the run (off a GPU: as on an 80 GB H100) and exit")
    p.add_argument("--check", action="store_true", help="imports + one tiny step of every mode, in seconds; fails on a lost kernel")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if args.check:
        args.tiny, args.quick = True, True
    if args.quick:  # short samples too: a smoke run checks the code paths, not the numbers
        args.warmup, args.steps, args.num_samples = (0, 1, 200) if args.check else (1, 2, 400)
        args.row_len, args.max_len, args.median_len = min(args.row_len, 512), min(args.max_len, 256), min(args.median_len, 64.0)
    elif args.steps < 30:
        p.error("--steps must be >= 30 (timing fewer steps is noise); use --quick for a smoke run")
    if args.compile and args.warmup < 3:
        args.warmup = 3  # first compile, then one recompile with dynamic shapes, then steady state
    if args.max_len > args.row_len:
        p.error("--max-len must be <= --row-len")
    return args, p


def packed_sdpa_error(args, plan: Plan, varlen: str, device) -> tuple[float, float]:
    """Max |difference| of the final hidden states of one packed row under transformers' position-id
    detection (``hf_packed_sdpa``) and under novalign's varlen attention, fp32, same weights: proof that the
    HF packed baseline isolates samples too (a leak would make it a different computation, not a baseline).
    Also returns the difference to a control in which the row is one segment (samples attend across
    boundaries), which must be large: the comparison can fail."""
    from novalign.models.forward import decoder_hidden_states

    fp32 = argparse.Namespace(**{**vars(args), "precision": "amp", "grad_ckpt": 0, "compile": False})
    batch = plan.timed[0][0]
    one_segment = torch.tensor([0, batch.num_row_tokens], dtype=torch.int32, device=device)
    runs = (("sdpa", dataclasses.replace(batch, cu_seqlens=None, max_seqlen=0)), (varlen, batch),
            (varlen, dataclasses.replace(batch, cu_seqlens=one_segment, max_seqlen=batch.num_row_tokens)))
    hidden = []
    for attn, b in runs:
        model, _ = build(fp32, attn, device)
        with torch.no_grad():
            hidden.append(decoder_hidden_states(model.eval(), b))
        del model
    return float((hidden[0] - hidden[1]).abs().max()), float((hidden[0] - hidden[2]).abs().max())


def check_problems(runs: dict[str, dict], device: torch.device) -> list[str]:
    """Errors of the check's runs, and on CUDA every packed run must have run a fused varlen kernel only."""
    problems = [f"{m}: {r['error']}" for m, r in runs.items() if "error" in r]
    for m, r in runs.items():
        calls = r.get("kernel_calls") or {}
        fused_only = bool(calls) and all(k.startswith(("torch_varlen", "flash_attn")) for k in calls)
        if m.startswith("novalign_packed") and device.type == "cuda" and not fused_only:
            problems.append(f"{m} ran {calls} on CUDA, not a fused varlen kernel only")
    return problems


def run_modes(args, plans, estimates, free_bytes, t_start, *, device, shape, peak, varlen) -> dict[str, dict]:
    """Every mode in turn, unless its memory estimate exceeds the free memory or its time estimate what is left
    of ``--budget-s`` (then ``{"skipped": reason}``)."""
    res: dict[str, dict] = {}
    for mode in args.modes:
        mem_gib, secs = estimates[mode]
        left = args.budget_s - (time.perf_counter() - t_start)
        if free_bytes is not None and mem_gib * est.GIB > 0.95 * free_bytes:
            res[mode] = {"skipped": f"estimated {mem_gib:.1f} GiB > 95 % of the {free_bytes / est.GIB:.1f} GiB free"}
        elif device.type == "cuda" and not args.check and secs > left:
            res[mode] = {"skipped": f"estimated {secs:.0f} s > {left:.0f} s left of --budget-s {args.budget_s:.0f}"}
        else:
            log(f"{mode}:")
            res[mode] = run_mode(args, mode, varlen if mode == "novalign_packed" else "sdpa", plans[mode], device, shape, peak)
            if "error" not in res[mode]:
                res[mode]["est_mem_gib"], res[mode]["est_seconds"] = mem_gib, secs
            continue
        log(f"{mode}: skipped: {res[mode]['skipped']}")
    return res


def run_checks(args, plans, res, *, device, shape, peak, varlen) -> list[str]:
    """``--check``: the packed mode under ``amp`` too (where the fused kernel used to be lost), the kernels
    counted, and HF packed sdpa against novalign's varlen on the same row; the problems found."""
    runs = dict(res)
    if "novalign_packed" not in plans:
        return check_problems(runs, device)
    amp_args = argparse.Namespace(**{**vars(args), "precision": "amp"})
    runs["novalign_packed_amp"] = run_mode(amp_args, "novalign_packed (amp)", varlen, plans["novalign_packed"],
                                           device, shape, peak)
    problems = check_problems(runs, device)
    err, leak = packed_sdpa_error(args, plans["novalign_packed"], varlen, device)
    res["packed_sdpa_vs_varlen"] = {"max_abs_err": err, "leak_control": leak}
    if not err < 1e-2 or not leak > 10 * err:
        problems.append(f"hf_packed_sdpa vs novalign_packed hidden states: {err:.3g} (leak control {leak:.3g})")
    return problems


def main(argv=None) -> int:
    args, p = parse_args(argv)
    import accelerate  # noqa: F401  (the image's packages: fail here, in seconds, not after minutes)
    import peft  # noqa: F401
    import transformers

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type != "cuda" and not args.tiny and not args.estimate_only:
        log("no CUDA device: running the --tiny shape (the full shape would take hours on CPU)")
        args.tiny = True
    if args.tiny:
        args.row_len = min(args.row_len, 1024)
        args.max_len = min(args.max_len, args.row_len)
    if args.compile:
        import torch._dynamo as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(64, getattr(dynamo.config, name)))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_source = est.peak_flops_for(device_name if device.type == "cuda" or not args.estimate_only else "H100",
                                           args.peak_flops)
    shape = model_shape(args)

    samples = make_samples(args.num_samples, median=args.median_len, sigma=args.sigma, min_len=16,
                           max_len=args.max_len, vocab=shape.vocab, seed=args.seed)
    lengths = [len(s[0]) for s in samples]
    rows = plan_packed_rows(lengths, args.row_len, seed=args.seed, epoch=0)
    need = args.warmup + args.steps
    if len(rows) < need:
        p.error(f"only {len(rows)} packed rows from {len(samples)} samples; raise --num-samples")
    warm_rows, timed_rows = rows[: args.warmup], rows[args.warmup : need]
    varlen = attention.resolve_backend("auto")
    plans = {m: make_plan(m, samples, warm_rows, timed_rows, args, device) for m in args.modes}
    timed_real = sum(len(samples[i][0]) for r in timed_rows for i in r)
    free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else (
        79.2 * est.GIB if args.estimate_only else None)  # an 80 GB H100 less the CUDA context
    estimates = {m: estimate(plans[m], shape, args, peak, m) for m in args.modes}
    log(f"{shape.params / 1e9:.3f} B params ({est.non_embedding_params(shape) / 1e9:.3f} B non-embedding), "
        f"{args.precision}, grad-ckpt {args.grad_ckpt}, {device_name}, peak {peak / 1e12:.0f} TFLOP/s ({peak_source}); "
        f"timed: {len(timed_rows)} packed rows, {timed_real} real tokens")
    for m in args.modes:
        log(f"  estimate {m}: {estimates[m][0]:.1f} GiB peak, {estimates[m][1]:.0f} s, {len(plans[m].timed)} timed steps")
    log(f"estimated total: {sum(s for _, s in estimates.values()) + (time.perf_counter() - t_start):.0f} s "
        f"({'as on an 80 GB H100' if args.estimate_only and device.type != 'cuda' else 'GPU estimate'}"
        f"{'; meaningless on CPU' if device.type != 'cuda' and not args.estimate_only else ''})")

    if args.estimate_only:
        fits = {m: free_bytes is None or e[0] * est.GIB <= 0.95 * free_bytes for m, e in estimates.items()}
        print(json.dumps({"bench": "gpu_sft", "estimate_only": True, "device": device_name, "peak_flops": peak,
                          **{f"{m}_est_mem_gib": round(e[0], 2) for m, e in estimates.items()},
                          **{f"{m}_est_seconds": round(e[1], 1) for m, e in estimates.items()},
                          **{f"{m}_fits": fits[m] for m in estimates},
                          "est_total_seconds": round(sum(e[1] for m, e in estimates.items() if fits[m]), 1)}))
        return 0
    ctx = dict(device=device, shape=shape, peak=peak, varlen=varlen)
    res = run_modes(args, plans, estimates, free_bytes, t_start, **ctx)
    problems = run_checks(args, plans, res, **ctx) if args.check else []
    out = report(args, res, shape, peak, peak_source, device_name, timed_real, plans, rows, lengths, t_start)
    out["transformers"] = transformers.__version__
    if args.check:
        errs = res.get("packed_sdpa_vs_varlen", {})
        out.update(check=True, ok=not problems, problems=problems,
                   packed_sdpa_vs_varlen_max_abs_err=errs.get("max_abs_err"), leak_control_max_abs_err=errs.get("leak_control"))
    print(json.dumps(out), flush=True)
    return 1 if problems else 0


def report(args, res, shape, peak, peak_source, device_name, timed_real, plans, rows, lengths, t_start) -> dict:
    def get(mode, key, nd=4, sig=False):
        v = res.get(mode, {}).get(key)
        if v is None or isinstance(v, (dict, str)):
            return v
        return float(f"{v:.{nd}g}") if sig else round(v, nd)

    out: dict = {"bench": "gpu_sft"}
    for m in args.modes:
        tokens = sum(b.num_row_tokens for b, _ in plans[m].timed)
        out.update({
            f"{m}_tokens_per_s": get(m, "tokens_per_s", 1), f"{m}_mfu": get(m, "mfu", 4, True),
            f"{m}_mfu_non_embedding": get(m, "mfu_non_embedding", 4, True), f"{m}_peak_mem_gib": get(m, "peak_mem_gib", 2),
            f"{m}_est_mem_gib": round(est_v, 2) if (est_v := res[m].get("est_mem_gib")) else None,
            f"{m}_seconds": get(m, "seconds", 3), f"{m}_est_seconds": get(m, "est_seconds", 1),
            f"{m}_steps": len(plans[m].timed), f"{m}_loss": get(m, "loss"),
            f"{m}_utilization_timed": round(utilization(timed_real, tokens), 4), f"{m}_kernel_calls": get(m, "kernel_calls"),
            f"{m}_attention": "novalign_varlen" if m == "novalign_packed" else "sdpa (transformers)",
        })
        for flag in ("skipped", "error"):
            if flag in res[m]:
                out[f"{m}_{flag}"] = res[m][flag]
    ours = get("novalign_packed", "tokens_per_s", 1)
    for m in BASELINES:
        base = get(m, "tokens_per_s", 1) if m in args.modes else None
        out[f"speedup_vs_{m}"] = round(ours / base, 3) if ours and base else None
    full_pad = plan_padded_batches(len(lengths), args.batch_size, seed=args.seed, epoch=0)
    full_grp = length_grouped_batches(lengths, args.batch_size, args.seed)
    pad_tokens = lambda plan: sum(len(b) * max(lengths[i] for i in b) for b in plan)  # noqa: E731
    out.update({
        "utilization_padded_random": round(utilization(sum(lengths), pad_tokens(full_pad)), 4),
        "utilization_grouped": round(utilization(sum(lengths), pad_tokens(full_grp)), 4),
        "utilization_packed": round(utilization(sum(lengths), len(rows) * args.row_len), 4),
        "timed_real_tokens": timed_real, "params": shape.params, "params_non_embedding": est.non_embedding_params(shape),
        "peak_flops": peak, "peak_flops_source": peak_source, "row_len": args.row_len, "batch_size": args.batch_size,
        "precision": args.precision, "compile": args.compile, "grad_ckpt": args.grad_ckpt, "tiny": args.tiny,
        "quick": args.quick, "total_seconds": round(time.perf_counter() - t_start, 1), "device": device_name,
        "torch": torch.__version__,
    })
    return out


if __name__ == "__main__":
    sys.exit(main())
