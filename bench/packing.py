"""Benchmark: sample packing (BFD rows + varlen attention) against dynamic padding.

What it measures
----------------
A synthetic SFT set with log-normal sample lengths (median ~400 tokens, sigma 1.0, clipped to
[16, 4096], fixed seed, random token ids; the last 60 % of every sample is the "assistant" part that
carries labels, the rest is -100) is trained with the same tiny random-init ``LlamaForCausalLM``, the same
AdamW and the same loss (``SFTObjective().loss_sum``, token mean per step) in two modes:

* **baseline -- dynamic padding** (what the Hugging Face Trainer does by default): batches of 8 samples in
  random order (``plan_padded_batches``), right-padded to the longest sample of the batch
  (``collate_padded``), transformers' ``"sdpa"`` attention with the padding mask;
* **baseline -- length-grouped padding** (the Trainer's ``group_by_length=True``): the same, but batched by
  transformers' own ``get_length_grouped_indices`` (random mega-batches sorted by length), so a batch holds
  samples of similar length and pads little -- the strongest padding baseline a user has;
* **novalign packing**: best-fit-decreasing rows of 4096 tokens (``plan_packed_rows``), one row per
  micro-batch, varlen attention (``resolve_backend("auto")``), positions restarting per sample.

The model is fp32. On CUDA both modes run under bf16 autocast (``--amp auto``), because the flash / torch
varlen kernels only take 16-bit inputs; on CPU there is no autocast and the varlen backend falls back to an
exact per-sample SDPA loop.

Reported (one JSON line on stdout, everything else goes to stderr):

* ``padded_utilization`` / ``grouped_utilization`` / ``packed_utilization``: real tokens / tokens the model
  processes, over the whole generated set (computed from the plans, no training). Report section 2.2 claims
  ~98 % for packing.
* ``padded_tokens_per_s`` / ``grouped_tokens_per_s`` / ``packed_tokens_per_s``: real (non-padding) tokens per
  second of training (forward + backward + optimizer step), over the SAME subset of samples for every mode,
  after an untimed warm-up; ``speedup`` = packed / padded (random order), ``speedup_vs_grouped`` = packed /
  length-grouped. All modes are measured in the same run on the same machine. The grouping runs within a
  timing round (``--round-samples``, 100) with the Trainer's mega-batch of 50 batches (400 samples), i.e. a
  round is sorted whole: as tight as a Trainer groups a large set, or tighter.
* the utilization of each mode on that timed subset (a small subset packs a little less tightly than
  the whole set), the mean loss of each mode over the timed steps, and a correctness check: the final
  hidden states of one packed row against the same samples padded (``hidden_max_abs_err``, ~1e-6),
  next to a control where the row is one segment so samples attend across boundaries
  (``hidden_max_abs_err_leak_control``, large) -- proof that the check can fail;
* ``packed_kernel_calls``: the attention kernels the timed packed steps ran, counted at run time.

Timing is done in rounds: the timed pool (the first ``--max-timed-samples`` samples) is cut into rounds of
``--round-samples``; each round's samples are trained as random-order padded batches, then as
length-grouped padded batches, then as packed rows (BFD within the round). After the round in which the
timed seconds of all modes together pass ``--time-budget`` timing stops, so the run takes a bounded time
whatever the machine, every mode is always timed on exactly the same samples (``timed_samples``), and a
change of load on a shared machine hits every mode about equally. Warm-up steps (untimed) use samples from outside the pool.

Usage::

    python bench/packing.py            # full run, ~2-4 minutes on 2 CPU cores
    python bench/packing.py --quick    # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from novalign.models.attention import kernel_calls, reset_kernel_calls, resolve_backend, varlen_kernel_name
from novalign.models.packing import (
    collate_packed,
    collate_padded,
    plan_packed_rows,
    plan_padded_batches,
    utilization,
)
from novalign.train.sft_objective import SFTObjective

from common import length_grouped_batches, log, make_samples  # bench/common.py (the script's folder is on sys.path)


def build_model(args, attn_implementation: str, device: torch.device, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(args.row_len, args.max_len),
        use_cache=False,
    )
    torch.manual_seed(seed)  # identical init for every mode
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.to(device)


def plan_stats(samples, batches_of_samples_padded, rows, row_len, grouped=None) -> dict[str, float]:
    """Utilization of the plans without collating (cheap)."""
    lengths = [len(s[0]) for s in samples]

    def padded(batches):
        real = sum(lengths[i] for b in batches for i in b)
        return utilization(real, sum(len(b) * max(lengths[i] for i in b) for b in batches))

    real_pack = sum(lengths[i] for r in rows for i in r)
    out = {"padded": padded(batches_of_samples_padded), "packed": utilization(real_pack, len(rows) * row_len)}
    if grouped is not None:
        out["grouped"] = padded(grouped)
    return out


class Trainer:
    """One mode's model + AdamW; ``run`` trains one step per batch and accumulates timing and token counts."""

    def __init__(self, model, device, *, lr: float, label: str, amp: bool = False):
        self.model, self.device, self.label, self.amp = model, device, label, amp
        self.objective = SFTObjective()
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)
        self.seconds = 0.0
        self.real = self.loss_tokens = self.steps = 0
        self.weighted_loss = 0.0
        model.train()

    def _step(self, batch) -> float:
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss_sum, _ = self.objective.loss_sum(self.model, batch)
        n = max(batch.num_loss_tokens, 1)
        (loss_sum / n).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss_sum.detach()) / n  # a host sync every step, on CUDA too, the same for both modes

    def warmup(self, batches) -> None:
        for b in batches:
            self._step(b)

    def run(self, batches) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches:
            loss = self._step(b)
            self.real += b.num_real_tokens
            self.loss_tokens += b.num_loss_tokens
            self.weighted_loss += loss * b.num_loss_tokens
            self.steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0

    @property
    def tokens_per_s(self) -> float:
        return self.real / self.seconds if self.seconds else 0.0

    @property
    def loss(self) -> float:
        return self.weighted_loss / max(self.loss_tokens, 1)


def hidden_state_check(model_packed, model_padded, samples, row, row_len, pad_id, device, amp=False) -> tuple[float, float]:
    """Max |difference| of the final hidden states of one packed row and of the same samples padded.

    Returns ``(packed_err, leaky_err)``: the second is a control in which the row is one segment (samples
    attend across boundaries); it shows the check would catch a leak. (At random init the *loss* is
    ~ln(vocab) whatever the attention does, so comparing losses would prove nothing.)
    """
    from novalign.models.forward import decoder_hidden_states

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        packed = collate_packed(samples, [row], row_len, pad_id).to(device)
        h_packed = decoder_hidden_states(model_packed, packed)[0]
        packed.cu_seqlens = torch.tensor([0, row_len], dtype=torch.int32, device=device)
        packed.max_seqlen = row_len
        h_leaky = decoder_hidden_states(model_packed, packed)[0]
        padded = collate_padded([samples[i] for i in row], pad_id).to(device)
        h_padded = decoder_hidden_states(model_padded, padded)
    err = leak = 0.0
    offset = 0
    for j, i in enumerate(row):
        n = len(samples[i][0])
        ref = h_padded[j, :n]
        err = max(err, float((h_packed[offset : offset + n] - ref).abs().max()))
        leak = max(leak, float((h_leaky[offset : offset + n] - ref).abs().max()))
        offset += n
    return err, leak


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-samples", type=int, default=2000, help="size of the generated set (utilization is computed on all of it)")
    p.add_argument("--max-timed-samples", type=int, default=1000, help="most samples trained on (and timed) in each mode")
    p.add_argument("--round-samples", type=int, default=100, help="samples per timing round (every mode trains each round)")
    p.add_argument("--time-budget", type=float, default=120.0,
                   help="stop timing after the round in which padded + packed training time exceeds this (seconds)")
    p.add_argument("--median-len", type=float, default=400.0, help="median sample length (lognormal mu = ln of this)")
    p.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of the sample length")
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--prompt-frac", type=float, default=0.4, help="fraction of each sample without labels (the prompt)")
    p.add_argument("--row-len", type=int, default=4096, help="packed row length (one row per micro-batch)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per padded batch")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per mode")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast for both modes; auto = on for CUDA (flash/varlen kernels need 16-bit inputs), off on CPU")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads (default: all cores; on a machine shared with other jobs, fewer threads "
                        "than cores avoids oversubscription, which can slow CPU matmuls several-fold)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 30 s): max length and rows of 1024, rounds of 12 samples, 24 at most, 5 s budget")
    args = p.parse_args(argv)
    if args.quick:
        args.max_len, args.row_len, args.warmup = 1024, 1024, 1
        args.round_samples, args.max_timed_samples, args.time_budget = 12, 24, 5.0
    if args.max_len > args.row_len:
        p.error("--max-len must be <= --row-len (a sample longer than a row cannot be packed)")

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    pad_id = 0

    samples = make_samples(
        args.num_samples, median=args.median_len, sigma=args.sigma, min_len=args.min_len, max_len=args.max_len,
        vocab=args.vocab, prompt_frac=args.prompt_frac, seed=args.seed,
    )
    lengths = [len(s[0]) for s in samples]
    full = plan_stats(
        samples,
        plan_padded_batches(len(samples), args.batch_size, seed=args.seed, epoch=0),
        plan_packed_rows(lengths, args.row_len, seed=args.seed, epoch=0),
        args.row_len,
        length_grouped_batches(lengths, args.batch_size, args.seed),
    )
    log(f"{len(samples)} samples, median {np.median(lengths):.0f}, mean {np.mean(lengths):.0f}; "
        f"utilization padded {full['padded']:.3f}, length-grouped {full['grouped']:.3f}, packed {full['packed']:.3f}")

    # Timed pool: the first samples of the set (lengths are i.i.d., so a random subset), cut into rounds of
    # `round_samples`. Each round's samples are trained once as padded batches and once as packed rows (BFD
    # within the round), padded then packed, and timing stops after the round in which the time budget runs
    # out -- so both modes are always timed on exactly the same samples, and a load change on a shared
    # machine hits both. Warm-up uses samples from the end of the set, outside the pool.
    rounds = []
    pool_end = min(args.max_timed_samples, len(samples) - args.round_samples)
    for start in range(0, pool_end, args.round_samples):
        idx = list(range(start, min(start + args.round_samples, pool_end)))
        rounds.append(idx)
    if not rounds:
        p.error("--num-samples too small for --round-samples")

    def round_batches(idx: list[int]):
        sub = [samples[i] for i in idx]
        pad_plan = plan_padded_batches(len(sub), args.batch_size, seed=args.seed, epoch=0)
        pack_plan = plan_packed_rows([len(s[0]) for s in sub], args.row_len, seed=args.seed, epoch=0)
        pads = [collate_padded([sub[i] for i in b], pad_id) for b in pad_plan]
        groups = [collate_padded([sub[i] for i in b], pad_id)
                  for b in length_grouped_batches([len(s[0]) for s in sub], args.batch_size, args.seed)]
        packs = [collate_packed(sub, [r], args.row_len, pad_id) for r in pack_plan]
        assert sum(b.num_real_tokens for b in pads) == sum(b.num_real_tokens for b in packs)
        assert sum(b.num_real_tokens for b in groups) == sum(b.num_real_tokens for b in packs)
        return pads, packs, sub, pack_plan, groups

    varlen = resolve_backend("auto")
    padded_model = build_model(args, "sdpa", device, args.seed)
    grouped_model = build_model(args, "sdpa", device, args.seed)
    packed_model = build_model(args, varlen, device, args.seed)
    assert all(torch.equal(a, b) for a, b in zip(padded_model.state_dict().values(), packed_model.state_dict().values()))
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    _, _, sub0, plan0, _ = round_batches(rounds[0])
    err, leak = hidden_state_check(packed_model, padded_model, sub0, max(plan0, key=len), args.row_len, pad_id, device, amp)
    log(f"packed vs padded final hidden states on one row: max |diff| {err:.2e} (cross-sample leak control: {leak:.2e})")
    log(f"varlen kernel on {device}: {varlen_kernel_name(device)}")

    padded = Trainer(padded_model, device, lr=args.lr, label="padded", amp=amp)
    grouped = Trainer(grouped_model, device, lr=args.lr, label="grouped", amp=amp)
    packed = Trainer(packed_model, device, lr=args.lr, label="packed", amp=amp)
    warm_pads, warm_packs, _, _, warm_groups = round_batches(list(range(len(samples) - args.round_samples, len(samples))))
    padded.warmup(warm_pads[: args.warmup])
    grouped.warmup(warm_groups[: args.warmup])
    packed.warmup(warm_packs[: args.warmup])
    log(f"timing up to {len(rounds)} rounds of {args.round_samples} samples (budget {args.time_budget:.0f} s), "
        f"padded batches of {args.batch_size} vs packed rows of {args.row_len}")
    timed = 0
    row_tokens = {"padded": 0, "grouped": 0, "packed": 0}
    reset_kernel_calls()  # the varlen kernels the timed packed steps really run, counted
    for i, idx in enumerate(rounds):
        pads, packs, _, _, groups = round_batches(idx)
        padded.run(pads)
        grouped.run(groups)
        packed.run(packs)
        timed += len(idx)
        row_tokens["padded"] += sum(b.num_row_tokens for b in pads)
        row_tokens["grouped"] += sum(b.num_row_tokens for b in groups)
        row_tokens["packed"] += sum(b.num_row_tokens for b in packs)
        spent = padded.seconds + grouped.seconds + packed.seconds
        log(f"  round {i + 1}: {timed} samples, padded {padded.tokens_per_s:.0f} real tok/s, grouped "
            f"{grouped.tokens_per_s:.0f}, packed {packed.tokens_per_s:.0f} real tok/s ({spent:.0f} s timed)")
        if spent >= args.time_budget:
            break
    assert padded.real == packed.real == grouped.real
    sub_util = {k: utilization(packed.real, v) for k, v in row_tokens.items()}

    out = {
        "bench": "packing",
        "padded_utilization": round(full["padded"], 4),
        "grouped_utilization": round(full["grouped"], 4),
        "packed_utilization": round(full["packed"], 4),
        "padded_tokens_per_s": round(padded.tokens_per_s, 1),
        "grouped_tokens_per_s": round(grouped.tokens_per_s, 1),
        "packed_tokens_per_s": round(packed.tokens_per_s, 1),
        "speedup": round(packed.tokens_per_s / padded.tokens_per_s, 3),
        "speedup_vs_grouped": round(packed.tokens_per_s / grouped.tokens_per_s, 3),
        "num_samples": len(samples),
        "timed_samples": timed,
        "timed_real_tokens": packed.real,
        "time_budget_s": args.time_budget,
        "padded_steps": padded.steps,
        "grouped_steps": grouped.steps,
        "packed_steps": packed.steps,
        "padded_seconds": round(padded.seconds, 2),
        "grouped_seconds": round(grouped.seconds, 2),
        "packed_seconds": round(packed.seconds, 2),
        "padded_utilization_timed": round(sub_util["padded"], 4),
        "grouped_utilization_timed": round(sub_util["grouped"], 4),
        "packed_utilization_timed": round(sub_util["packed"], 4),
        "padded_loss": round(padded.loss, 4),
        "grouped_loss": round(grouped.loss, 4),
        "packed_loss": round(packed.loss, 4),
        "hidden_max_abs_err": float(f"{err:.3e}"),
        "hidden_max_abs_err_leak_control": float(f"{leak:.3e}"),
        "median_len": float(np.median(lengths)),
        "mean_len": round(float(np.mean(lengths)), 1),
        "row_len": args.row_len,
        "batch_size": args.batch_size,
        "attn_padded": "sdpa",
        "attn_packed": f"{varlen}/{varlen_kernel_name(device)}",
        "packed_kernel_calls": {k: v for k, v in kernel_calls(by_dtype=True).items() if not k.startswith("hf_sdpa")},
        "amp_bf16": amp,
        "quick": args.quick,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
