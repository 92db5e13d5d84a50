"""Benchmark: four CPU hot spots seen in profiles, each timed before and after its fix in the same run.

* ``sampler``: one sampling step of ``RowSampler`` with top-k and top-p off (GRPO's default), 16 rows over a
  151,936-token vocabulary. Before: the filtered path, which sorts the whole vocabulary every step
  (``_draw_filtered`` with k = 0, p = 1, the code every row used to take). After: ``draw_untruncated`` (the
  most likely tokens by ``topk`` until their mass reaches the draw). Two distributions: ``peaked`` (logits
  ~ N(0, 4^2): a few tokens carry most of the mass, as a trained model's do) and ``flat`` (N(0, 1): the worst
  case, where the draw needs most of the vocabulary and the new path ends in a full sort too). Also reported:
  how often both paths draw the same token from the same uniform, and how often each draws the token of an
  exact inverse CDF over the float64 softmax (``sampler_<case>_exact_before/after``).
* ``attention_loop``: forward + backward of the exact per-sample attention loop (the CPU path of packed rows)
  on one 16,384-token row of log-normal samples (median 400), 12 heads of 64, 2 KV heads. Before: the old
  loop that copies each sample's output into a slice of a preallocated row (whose backward zero-fills a
  whole-row gradient per sample); after: ``split`` + ``cat``.
* ``chat_renders``: tokenizing the 1,600 demo SFT records (``demo_sft.jsonl`` + ``demo_sft_eval.jsonl``) with
  the tiny model's tokenizer; before: every assistant turn rendered through its end; after: the last one
  reuses the full render. Counts ``apply_chat_template`` calls and seconds; the samples must be identical.
* ``packer``: ``best_fit_decreasing`` on ``--packer-samples`` (3,000,000) log-normal lengths into rows of
  4096; before: the sorted list with one entry per open row (the previous code, kept below); after: one stack
  per free-space value. The rows must be identical.

One JSON line on stdout (``<spot>_before_s``, ``<spot>_after_s``, ``<spot>_speedup``, plus checks)::

    python bench/cpu_hotspots.py            # a few minutes on 2 shared cores (the 3M-sample packer dominates)
    python bench/cpu_hotspots.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from novalign.models.attention import varlen_attention
from novalign.models.generate import _draw_filtered, draw_untruncated
from novalign.models.packing import best_fit_decreasing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, reps: int) -> float:
    """Median seconds of ``reps`` calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_sampler(rows: int, vocab: int, reps: int) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, std in (("peaked", 4.0), ("flat", 1.0)):
        logits = torch.randn(rows, vocab, generator=g) * std
        u = torch.rand(rows, generator=g)
        zeros_k, ones_p = torch.zeros(rows, dtype=torch.long), torch.ones(rows)
        before = timed(lambda: _draw_filtered(logits, zeros_k, ones_p, u), reps)
        after = timed(lambda: draw_untruncated(logits.softmax(-1), u), reps)
        exact_p, order = logits.double().softmax(-1).sort(-1, descending=True)
        cdf = exact_p.cumsum(-1)
        same = exact_before = exact_after = draws = 0
        for _ in range(20):  # fresh uniforms: both paths against each other and against an exact float64 draw
            uu = torch.rand(rows, generator=g)
            old, new = _draw_filtered(logits, zeros_k, ones_p, uu), draw_untruncated(logits.softmax(-1), uu)
            exact = order.gather(1, torch.searchsorted(cdf, (uu.double() * cdf[:, -1]).unsqueeze(1))).squeeze(1)
            same, draws = same + int((old == new).sum()), draws + rows
            exact_before, exact_after = exact_before + int((old == exact).sum()), exact_after + int((new == exact).sum())
        out.update({f"sampler_{name}_before_s": before, f"sampler_{name}_after_s": after,
                    f"sampler_{name}_speedup": round(before / after, 2), f"sampler_{name}_same_token": same / draws,
                    f"sampler_{name}_exact_before": exact_before / draws, f"sampler_{name}_exact_after": exact_after / draws})
        log(f"sampler {name}: before {before * 1e3:.1f} ms, after {after * 1e3:.1f} ms, same token {same}/{draws}, "
            f"exact draw: before {exact_before}/{draws}, after {exact_after}/{draws}")
    return out


def _loop_before(q, k, v, cu_seqlens, scale):
    """The per-sample loop as it was: outputs copied into slices of one preallocated row."""
    n_rep = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        qs = q[start:end].transpose(0, 1).unsqueeze(0)
        ks = k[start:end].transpose(0, 1).unsqueeze(0)
        vs = v[start:end].transpose(0, 1).unsqueeze(0)
        if n_rep > 1:
            ks, vs = ks.repeat_interleave(n_rep, dim=1), vs.repeat_interleave(n_rep, dim=1)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        out[start:end] = o.squeeze(0).transpose(0, 1)
    return out


def bench_attention_loop(row_len: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    lengths, total = [], 0
    while total < row_len:
        n = int(min(max(round(rng.lognormal(math.log(400), 1.0)), 16), row_len - total))
        lengths.append(n)
        total += n
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(row_len, h, 64, generator=g) for h in (12, 2, 2)]

    def run(fn):
        q, k, v = (t.clone().requires_grad_() for t in base)
        fn(q, k, v).square().mean().backward()
        return q.grad

    before = timed(lambda: run(lambda q, k, v: _loop_before(q, k, v, cu, 0.125)), reps)
    after = timed(lambda: run(lambda q, k, v: varlen_attention(q, k, v, cu, max(lengths), 0.125)), reps)
    same = torch.allclose(run(lambda q, k, v: _loop_before(q, k, v, cu, 0.125)),
                          run(lambda q, k, v: varlen_attention(q, k, v, cu, max(lengths), 0.125)), atol=1e-6)
    log(f"attention loop ({len(lengths)} samples in {row_len}): before {before:.3f} s, after {after:.3f} s")
    return {"attention_loop_before_s": before, "attention_loop_after_s": after,
            "attention_loop_speedup": round(before / after, 2), "attention_loop_samples": len(lengths),
            "attention_loop_same_grad": same}


def _assistant_span_before(tokenizer, messages, turn, full, tools):
    """The span finder as it was: the render through the turn is always made, for the last turn too."""
    from novalign.data import chat

    prefix = chat._render(tokenizer, messages[:turn], add_generation_prompt=True, tools=tools)
    through = chat._render(tokenizer, messages[: turn + 1], tools=tools)
    for text in (prefix, through):
        if not full.startswith(text):
            raise chat.ChatTemplateError("not prefix-stable")
    return len(prefix), max(len(prefix), len(through.rstrip()))


def bench_chat_renders(records: int) -> dict:
    from novalign.data import chat
    from novalign.models.load import load_tokenizer
    from novalign.models.tiny import init_tiny_model

    model_dir = Path(tempfile.mkdtemp()) / "tiny"
    init_tiny_model(model_dir, seed=0)
    tok = load_tokenizer(str(model_dir))
    files = [ROOT / "novalign/assets/demo_sft.jsonl", ROOT / "novalign/assets/demo_sft_eval.jsonl"]
    lines = [line for f in files for line in f.read_text().splitlines() if line.strip()][:records]
    path = model_dir.parent / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    real, calls = tok.apply_chat_template, [0]

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    tok.apply_chat_template = counting
    out, results = {}, {}
    fixed = chat._assistant_span
    for name, span in (("before", _assistant_span_before), ("after", fixed)):
        chat._assistant_span, calls[0] = span, 0  # the old span finder as the baseline, in this process only
        try:
            t0 = time.perf_counter()
            samples, _ = chat.load_chat_dataset([path], tok, max_length=4096)
            out[f"chat_renders_{name}_s"] = time.perf_counter() - t0
        finally:
            chat._assistant_span = fixed
        out[f"chat_renders_{name}"] = calls[0]
        results[name] = [(s.input_ids, s.labels) for s in samples]
    out["chat_records"] = len(lines)
    out["chat_speedup"] = round(out["chat_renders_before_s"] / out["chat_renders_after_s"], 2)
    out["chat_same_samples"] = results["before"] == results["after"]
    log(f"chat: {len(lines)} records, renders {out['chat_renders_before']} -> {out['chat_renders_after']}, "
        f"{out['chat_renders_before_s']:.2f} s -> {out['chat_renders_after_s']:.2f} s")
    return out


def _bfd_before(lengths, capacity):
    """best_fit_decreasing as it was: a sorted list with one entry per open bin (O(n) per insert)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free, bin_of_free, bins = [], [], []
    for i in order:
        size = lengths[i]
        pos = bisect.bisect_left(free, size)
        if pos == len(free):
            bins.append([i])
            b, remaining = len(bins) - 1, capacity - size
        else:
            b = bin_of_free.pop(pos)
            remaining = free.pop(pos) - size
            bins[b].append(i)
        if remaining > 0:
            pos = bisect.bisect_left(free, remaining)
            free.insert(pos, remaining)
            bin_of_free.insert(pos, b)
    return bins


def bench_packer(n: int, capacity: int) -> dict:
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(math.log(400), 1.0, n)), 16, capacity).astype(int).tolist()
    t0 = time.perf_counter()
    before = _bfd_before(lengths, capacity)
    t_before = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = best_fit_decreasing(lengths, capacity)
    t_after = time.perf_counter() - t0
    log(f"packer {n:,} samples: before {t_before:.1f} s, after {t_after:.1f} s, {len(after):,} rows")
    return {"packer_samples": n, "packer_before_s": t_before, "packer_after_s": t_after,
            "packer_speedup": round(t_before / t_after, 2), "packer_rows": len(after), "packer_same_rows": before == after}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="sampler,attention_loop,chat_renders,packer", help="comma-separated spots")
    p.add_argument("--packer-samples", type=int, default=3_000_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="small sizes: seconds")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spots = [s.strip() for s in args.only.split(",") if s.strip()]
    vocab, row_len, records = (151936, 16384, 1600) if not args.quick else (4096, 2048, 40)
    packer_n = args.packer_samples if not args.quick else 20_000
    out: dict = {"bench": "cpu_hotspots"}
    if "sampler" in spots:
        out.update(bench_sampler(16, vocab, args.reps))
    if "attention_loop" in spots:
        out.update(bench_attention_loop(row_len, max(1, args.reps // 2)))
    if "chat_renders" in spots:
        out.update(bench_chat_renders(records))
    if "packer" in spots:
        out.update(bench_packer(packer_n, 4096))
    out.update({k: round(v, 4) for k, v in out.items() if isinstance(v, float)})
    out.update(quick=args.quick, threads=torch.get_num_threads(), torch=torch.__version__)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
