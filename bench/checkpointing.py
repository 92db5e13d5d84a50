"""Benchmark: peak training memory against the group size k of multi-layer gradient checkpointing.

What it measures
----------------
Report section 2.2: checkpointing groups of k consecutive decoder layers needs about ``k*n + L/k`` units
of ``hidden_size`` per token in the backward pass (n = activations saved inside one layer, L = layers),
which is smallest at ``k = sqrt(L / n)``. The baseline is **no checkpointing (k = 0)**, measured in the
same run; ratios against it are reported.

For every k in ``[0, 1, 2, 4, ..., L]`` a FRESH subprocess (so its memory high-water mark is its own) builds
the same random-init Llama (default 8 layers, hidden 256, fp32 -- under bf16 autocast on CUDA, where
the varlen kernels need 16-bit inputs --, varlen attention), turns on
``enable_multi_layer_checkpointing(model, k)``, and runs forward + backward of ``SFTObjective`` on one
packed row of 4096 tokens (log-normal sample lengths, BFD). One untimed warm-up step comes first (so the
gradients already exist and are not counted), then the measured step, then ``--steps`` timed steps.

Per k (``results``):

* ``peak_mib``: the peak of memory allocated during forward + backward above what was allocated before the
  forward. On CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak of live tensor bytes, tracked
  exactly by a ``TorchDispatchMode`` that adds every new tensor storage and subtracts it when it is freed
  (the CPU allocator has no statistics of its own).
* ``saved_activation_mib``: memory still allocated at the end of the forward (what the backward needs:
  tensors autograd saved, plus the inputs kept by checkpointed groups), same accounting.
* ``peak_rss_mib`` (CPU): growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs
  just before the forward; ``ru_maxrss`` growth where that is not possible). The workers run with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns big freed blocks to the OS, but a freed-then-reused
  heap still blurs RSS; prefer ``peak_mib``.
* ``step_s``: the fastest of ``--steps`` timed forward + backward passes (the minimum is the least
  disturbed by other load on a shared machine; ``step_s_median`` is also given); ``loss`` and ``grad_norm`` (identical for every k
  up to float rounding -- checkpointing must not change the math).

Top level: ``n_measured`` (``measure_activations_per_layer`` on one layer at the row length),
``n_measured_64_tokens`` (the same at 64 tokens, what ``novalign.train.sft.auto_group_size`` uses),
``n_activations_only`` (saved bytes per layer counted once per storage and without parameters),
``n_empirical`` (k=0 saved memory / (L * tokens * hidden * bytes), bytes = 4, or 2 under autocast;
the embedding output and the loss are included, so it slightly overstates n), ``k_auto`` = optimal_group_size(L,
n_measured), ``k_auto_sft`` = auto_group_size(model), ``memory_ratio_k1_vs_off`` = peak_mib(k=1) /
peak_mib(k=0), and the device.

Usage::

    python bench/checkpointing.py            # 8 layers, hidden 256, 4096-token row
    python bench/checkpointing.py --quick    # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import weakref

import numpy as np
import torch

from common import log, reset_peak_rss, status_kib  # bench/common.py (the script's folder is on sys.path)


# ---------------------------------------------------------------------------------------------- helpers


def build_model(args, device: torch.device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from novalign.models.attention import resolve_backend

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=args.row_len,
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=resolve_backend(args.attn), dtype=torch.float32)
    return model.to(device)


def packed_row(args):
    """The fullest BFD row of ``row_len`` tokens from log-normal samples (labels on the last 60 %)."""
    from novalign.models.packing import IGNORE_INDEX, best_fit_decreasing, collate_packed

    rng = np.random.default_rng(args.seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(400), 1.0, 400)), 16, args.row_len).astype(int).tolist()
    samples = []
    for n in lengths:
        ids = rng.integers(0, args.vocab, n).tolist()
        p = int(round(0.4 * n))
        samples.append((ids, [IGNORE_INDEX] * p + ids[p:]))
    rows = best_fit_decreasing(lengths, args.row_len)
    row = max(rows, key=lambda r: sum(lengths[i] for i in r))
    return collate_packed(samples, [row], args.row_len, pad_id=0)


class LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracks the bytes of tensor storages created by ops while active, and their peak.

    Each new storage is counted once when an op returns it and subtracted when it is freed (a weakref
    finalizer on the storage). Views and in-place results share an already counted storage.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key, n = st.data_ptr(), st.nbytes()
                if n == 0 or key in self._seen:
                    continue
                self._seen.add(key)
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, key, n)
        return out

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)


def _ru_maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------- worker


def worker(args) -> None:
    """One k in this (fresh) process: prints one JSON line."""
    from novalign.models.checkpointing import enable_multi_layer_checkpointing
    from novalign.train.sft import SFTObjective

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = build_model(args, device)
    model.train()
    groups = enable_multi_layer_checkpointing(model, args.worker_k)
    batch = packed_row(args).to(device)
    objective = SFTObjective()
    n_loss = batch.num_loss_tokens

    amp = use_amp(args, device)

    def fwd():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss_sum, _ = objective.loss_sum(model, batch)
        return loss_sum / n_loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    fwd().backward()  # warm-up: kernels, and the .grad tensors exist from here on
    model.zero_grad(set_to_none=False)
    gc.collect()
    sync()

    mib = 1024 * 1024
    rss_note = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = fwd()
        sync()
        saved = torch.cuda.memory_allocated(device) - base
        loss.backward()
        sync()
        peak = torch.cuda.max_memory_allocated(device) - base
        peak_rss = None
    else:
        hwm_ok = reset_peak_rss()
        rss0 = status_kib("VmRSS") if hwm_ok else None
        maxrss0 = _ru_maxrss_kib()
        with LiveTensorBytes() as tracker:
            loss = fwd()
            saved = tracker.live
            loss.backward()
            peak = tracker.peak
        if hwm_ok and rss0 is not None and status_kib("VmHWM") is not None:
            peak_rss = (status_kib("VmHWM") - rss0) / 1024
        else:
            peak_rss = (_ru_maxrss_kib() - maxrss0) / 1024
            rss_note = "ru_maxrss growth (VmHWM reset unavailable): 0 if an earlier peak was higher"
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)))
    loss_value = float(loss.detach())
    del loss

    times = []
    for _ in range(args.steps):
        model.zero_grad(set_to_none=False)
        sync()
        t0 = time.perf_counter()
        fwd().backward()
        sync()
        times.append(time.perf_counter() - t0)
    res = {
        "k": args.worker_k,
        "groups": groups,
        "peak_mib": round(peak / mib, 2),
        "saved_activation_mib": round(saved / mib, 2),
        "peak_rss_mib": None if peak_rss is None else round(peak_rss, 2),
        "step_s": round(min(times), 4) if times else None,
        "step_s_median": round(statistics.median(times), 4) if times else None,
        "loss": loss_value,
        "grad_norm": grad_norm,
        "tokens": batch.num_real_tokens,
    }
    if rss_note:
        res["rss_note"] = rss_note
    print(json.dumps(res), flush=True)


def use_amp(args, device: torch.device) -> bool:
    """bf16 autocast: on CUDA by default, since the flash / torch varlen kernels need 16-bit inputs."""
    return args.amp == "on" or (args.amp == "auto" and device.type == "cuda")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- parent


def activations_per_layer(args) -> dict[str, float]:
    """n from the library (at the row length and at 64 tokens) and a count without parameters/duplicates."""
    from novalign.models.checkpointing import decoder_layers, measure_activations_per_layer
    from novalign.train.session import auto_group_size

    model = build_model(args, torch.device("cpu"))
    layer = decoder_layers(model)[0]
    params = {p.data_ptr() for p in model.parameters()}
    out = {}
    for tokens, key in ((args.row_len, "n_measured"), (64, "n_measured_64_tokens")):
        hidden = torch.randn(1, tokens, args.hidden, requires_grad=True)
        pos = torch.arange(tokens).unsqueeze(0)
        kwargs = {"hidden_states": hidden, "position_embeddings": model.get_decoder().rotary_emb(hidden, pos),
                  "position_ids": pos, "attention_mask": None}
        out[key] = measure_activations_per_layer(layer, args.hidden, kwargs, tokens)
        if tokens == args.row_len:
            storages: dict[int, int] = {}

            def pack(t):
                if t.data_ptr() not in params:
                    st = t.untyped_storage()
                    storages[st.data_ptr()] = st.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                o = layer(**kwargs)
            del o
            out["n_activations_only"] = sum(storages.values()) / (tokens * args.hidden * 4)
    out["k_auto_sft"] = auto_group_size(model)
    return out


def default_ks(layers: int) -> list[int]:
    ks = [0]
    k = 1
    while k < layers:
        ks.append(k)
        k *= 2
    ks.append(layers)
    return ks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--vocab", type=int, default=2048, help="small, so the layers (not the logits) dominate memory")
    p.add_argument("--row-len", type=int, default=4096, help="tokens in the packed row")
    p.add_argument("--attn", default="auto", help="attention backend for novalign.models.attention.resolve_backend")
    p.add_argument("--ks", default=None, help="comma-separated group sizes (0 = off); default 0,1,2,4,...,layers")
    p.add_argument("--steps", type=int, default=2, help="timed steps per k (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast; auto = on for CUDA (varlen kernels need 16-bit inputs), off on CPU")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads (default: all cores; on a machine shared with other jobs, fewer threads "
                        "than cores avoids oversubscription, which can slow CPU matmuls several-fold)")
    p.add_argument("--quick", action="store_true", help="smoke run (< 30 s): 4 layers, hidden 64, 512-token row, 1 timed step")
    p.add_argument("--worker-k", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.intermediate, args.row_len, args.steps = 4, 64, 172, 512, 1
    if args.worker_k is not None:
        worker(args)
        return

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ks = [int(k) for k in args.ks.split(",")] if args.ks else default_ks(args.layers)
    from novalign.models.checkpointing import optimal_group_size

    n = activations_per_layer(args)
    k_auto = optimal_group_size(args.layers, n["n_measured"])
    log(f"n per layer: library {n['n_measured']:.2f} at {args.row_len} tokens, {n['n_measured_64_tokens']:.2f} at 64 "
        f"tokens; activations only {n['n_activations_only']:.2f}; k_auto {k_auto} (auto_group_size: {n['k_auto_sft']})")

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    passthrough = ["--layers", args.layers, "--hidden", args.hidden, "--heads", args.heads, "--kv-heads", args.kv_heads,
                   "--intermediate", args.intermediate, "--vocab", args.vocab, "--row-len", args.row_len,
                   "--attn", args.attn, "--steps", args.steps, "--seed", args.seed, "--device", args.device,
                   "--threads", args.threads, "--amp", args.amp]
    results = []
    for k in ks:
        cmd = [sys.executable, os.path.abspath(__file__), *map(str, passthrough), "--worker-k", str(k)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            log(proc.stderr[-3000:])
            results.append({"k": k, "error": (proc.stderr.strip().splitlines() or ["worker failed"])[-1]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"k={k:>2}: peak {r['peak_mib']:8.1f} MiB, saved {r['saved_activation_mib']:8.1f} MiB, "
            f"peak RSS {r['peak_rss_mib']} MiB, step {r['step_s']} s, loss {r['loss']:.6f}, grad norm {r['grad_norm']:.6f}")
        results.append(r)

    ok = {r["k"]: r for r in results if "error" not in r}
    ratio = ok[1]["peak_mib"] / ok[0]["peak_mib"] if 0 in ok and 1 in ok and ok[0]["peak_mib"] else None
    norms = [r["grad_norm"] for r in ok.values()]
    tokens = next(iter(ok.values()))["tokens"] if ok else args.row_len
    act_bytes = 2 if use_amp(args, device) else 4  # under bf16 autocast most saved activations are bf16
    n_emp = ok[0]["saved_activation_mib"] * 1024 * 1024 / (args.layers * tokens * args.hidden * act_bytes) if 0 in ok else None
    out = {
        "bench": "checkpointing",
        "results": results,
        "n_measured": round(n["n_measured"], 3),
        "n_measured_64_tokens": round(n["n_measured_64_tokens"], 3),
        "n_activations_only": round(n["n_activations_only"], 3),
        "n_empirical": None if n_emp is None else round(n_emp, 3),
        "k_auto": k_auto,
        "k_auto_sft": n["k_auto_sft"],
        "num_layers": args.layers,
        "hidden": args.hidden,
        "row_tokens": args.row_len,
        "real_tokens": tokens,
        "memory_ratio_k1_vs_off": None if ratio is None else round(ratio, 4),
        "memory_ratio_best_vs_off": round(min(r["peak_mib"] for r in ok.values()) / ok[0]["peak_mib"], 4) if 0 in ok else None,
        "grad_norm_max_rel_diff": round((max(norms) - min(norms)) / max(norms), 9) if norms else None,
        "memory_metric": "cuda max_memory_allocated" if device.type == "cuda" else "live tensor bytes (dispatch-mode tracker)",
        "amp_bf16": use_amp(args, device),
        "quick": args.quick,
        "threads": args.threads,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
