"""Benchmark: GRPO against PPO on one tiny task, and the report's top-k KL against the full-vocabulary KL.

What it measures
----------------
**GRPO vs PPO** (report section 2.1: GRPO reaches comparable quality with about half the resources, having
no critic). Both methods train the same tiny random-init chat model (``novalign.models.tiny.init_tiny_model``,
seed 0) on the same task with the same budget:

* task: 8 prompts ("Say something about topic i"), reward = the share of the letter 'e' in the decoded
  response (the dense rule-based reward of ``tests/test_grpo.py``, as a ``verifier_reward``);
* budget: ``--iterations`` (30) iterations of ``--prompts-per-iteration`` prompts x ``--n`` responses of at most
  ``--max-new-tokens`` tokens, 2 optimizer epochs per rollout batch, AdamW lr 3e-2 (constant), beta 0.01,
  the default top-k KL (k = 500, clamped to the vocabulary). PPO gets the same rollouts per iteration
  (n responses per prompt) plus its value head, vf_coef 0.1, lam 1.0 (as its learning test: with a
  zero-initialized critic, lam < 1 learns slower on so short a budget), whitened advantages.

Each method runs through ``run_grpo`` / ``run_ppo`` in a fresh Python subprocess, so peak memory is that
method's alone. Reported per method: ``*_reward_gain`` = mean reward of the last two iterations minus the
mean reward of the first two (single iterations are noisy: 16 responses), the initial and final means,
``*_wall_s`` (the whole ``run_*`` call: model loading, rollouts, training, saving) and ``*_peak_mem_mb``
(the child's peak resident set, ``VmHWM``; on CUDA also ``torch.cuda.max_memory_allocated`` as
``*_peak_cuda_mb``). At this size most of the resident set is the Python + torch runtime, so the memory
difference is small in absolute terms; the ratios are printed anyway.

**Top-k vs full-vocabulary KL**: random final hidden states ``[--kl-tokens, --kl-hidden]`` of a "policy"
and a "reference" and two random output heads ``[--kl-vocab (32000), --kl-hidden]``; one forward + backward
(gradient to the policy hidden states and head, as in the PTX term) of

* ``topk``: :func:`novalign.train.kl.chunked_topk_kl` with k = ``--kl-k`` (500), ``--kl-chunk`` tokens per
  chunk (policy chunk recomputed in the backward pass);
* ``full``: the exact KL over the whole vocabulary, written the obvious way: both models' ``[N, V]`` fp32
  logits, ``log_softmax``, ``sum p (log p - log q)``.

Each in a fresh subprocess after one untimed warm-up call on a small slice; ``*_kl_s`` is the median of
``--kl-repeats`` timed calls, ``*_kl_peak_mem_mb`` the peak resident set *above the resident set just before
the timed calls* (``VmHWM`` reset through ``/proc/self/clear_refs``; on CUDA ``max_memory_allocated`` minus
the memory allocated before), i.e. the memory the computation itself needs on top of its inputs.

**Peer (``--trl``, optional)**: TRL's ``GRPOTrainer`` (PyPI ``trl``, *not* a novalign dependency) on the same
model, prompts, n, lengths, beta, lr and epochs, in its own subprocess: ``trl_iteration_s`` (``train()``
seconds per rollout batch) against novalign's ``grpo_iteration_mean_s`` (mean of the logged per-iteration
seconds; both include the first, slower iteration), their ratio, TRL's reward gain and peak RSS (which also
counts importing ``datasets``/``pandas``). Without TRL installed the line says ``"trl": "not installed"``.

Reported (one JSON line on stdout, everything else goes to stderr). Timings on a shared machine are noisy:
compare the two sides of one run, not numbers across runs. Usage::

    python bench/rl.py            # full run, ~1 minute on 2 CPU cores
    python bench/rl.py --quick    # smoke run, < 30 s
    python bench/rl.py --trl      # also TRL's GRPOTrainer (pip install trl)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import log, reset_peak_rss, status_kib  # bench/common.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ memory


def _status_kb(field: str) -> int:
    value = status_kib(field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return value


def _mb(kb_or_bytes: float, unit: int = 1024) -> float:
    return round(kb_or_bytes * unit / 2**20, 1)


# ------------------------------------------------------------------ workers (run in a fresh subprocess each)


def share_of_e(response: str) -> float:
    """The fraction of the response's characters that are the letter 'e' (the learning tests' reward)."""
    return response.count("e") / max(1, len(response))


def worker_rl(args) -> dict:
    from novalign.config import GRPOConfig, PPOConfig
    from novalign.train.rl.rewards import verifier_reward, weighted_mix
    from novalign.train.grpo import run_grpo
    from novalign.train.ppo import run_ppo

    loss = {"beta": 0.01, "ppo_epochs": 2}
    if args.worker == "ppo":
        loss.update({"vf_coef": 0.1, "lam": 1.0})
    cfg = {
        "output_dir": str(Path(args.workdir) / args.worker), "model": {"path": args.model_dir},
        "prompt_files": [args.prompts],
        "rollout": {"prompts_per_iteration": args.prompts_per_iteration, "n": args.n,
                    "max_new_tokens": args.max_new_tokens},
        "loss": loss,
        "optim": {"lr": 3e-2, "warmup_ratio": 0.0, "schedule": "constant"},
        "train": {"micro_batch_size": args.prompts_per_iteration * args.n, "progress": False, "tensorboard": False,
                  "seed": args.seed, "max_steps": args.iterations, "device": args.device},
    }
    config_cls, run = (GRPOConfig, run_grpo) if args.worker == "grpo" else (PPOConfig, run_ppo)
    reward = weighted_mix([(verifier_reward(share_of_e, name="share_of_e"), 1.0)])
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run(config_cls.model_validate(cfg), reward=reward, console_print=lambda *_: None)
    wall = time.perf_counter() - t0
    rewards = [h["reward_mean"] for h in result.history]
    m = min(2, len(rewards))
    first, last = sum(rewards[:m]) / m, sum(rewards[-m:]) / m
    out = {"reward_gain": last - first, "reward_initial": first, "reward_final": last, "wall_s": wall,
           "peak_mem_mb": _mb(_status_kb("VmHWM")), "iterations": len(rewards),
           "iteration_s": statistics.median(h["seconds"] for h in result.history),
           "iteration_mean_s": statistics.fmean(h["seconds"] for h in result.history),
           "kl_final": result.history[-1]["kl_mean"]}
    if cuda:
        out["peak_cuda_mb"] = _mb(torch.cuda.max_memory_allocated(), 1)
    return out


def worker_trl(args) -> dict:
    """TRL's ``GRPOTrainer`` on the same model, prompts, n, lengths, beta, lr and epochs as the ``grpo`` worker.

    One novalign iteration (one rollout batch of ``prompts_per_iteration x n``, then ``ppo_epochs = 2``
    optimizer steps over it) is two TRL steps with ``per_device_train_batch_size = prompts x n``,
    ``num_generations = n``, ``steps_per_generation = 1`` and ``num_iterations = 2`` (TRL reuses each
    generation batch for ``num_iterations`` steps). ``iteration_s`` = ``train()`` seconds / iterations.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    cuda = torch.cuda.is_available() and args.device != "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])

    def reward(completions, **_) -> list[float]:
        return [share_of_e(c[-1]["content"] if isinstance(c, list) else c) for c in completions]

    batch = args.prompts_per_iteration * args.n
    cfg = TRLConfig(
        output_dir=str(Path(args.workdir) / "trl"), learning_rate=3e-2, lr_scheduler_type="constant", warmup_steps=0,
        per_device_train_batch_size=batch, num_generations=args.n, steps_per_generation=1, num_iterations=2,
        max_completion_length=args.max_new_tokens, beta=0.01, temperature=1.0, max_steps=2 * args.iterations,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=not cuda, bf16=False, seed=args.seed,
        disable_tqdm=True, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    m = min(2, len(rewards))
    return {"wall_s": wall, "iteration_s": wall / args.iterations, "peak_mem_mb": _mb(_status_kb("VmHWM")),
            "reward_gain": (sum(rewards[-m:]) - sum(rewards[:m])) / m if m else None}


def _full_kl(policy_hidden, policy_weight, ref_hidden, ref_weight):
    """The exact full-vocabulary KL(pi_policy || pi_ref) per token, holding both models' [N, V] fp32 logits."""
    import torch.nn.functional as F

    pol = F.linear(policy_hidden, policy_weight).float().log_softmax(-1)
    with torch.no_grad():
        ref = F.linear(ref_hidden, ref_weight).float().log_softmax(-1)
    return (pol.exp() * (pol - ref)).sum(-1)


def worker_kl(args) -> dict:
    from novalign.train.kl import chunked_topk_kl

    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    g = torch.Generator().manual_seed(args.seed)
    n, h, v = args.kl_tokens, args.kl_hidden, args.kl_vocab
    ph = torch.randn(n, h, generator=g).to(device).requires_grad_(True)
    pw = (torch.randn(v, h, generator=g) / h**0.5).to(device).requires_grad_(True)
    rh = (ph.detach() + 0.1 * torch.randn(n, h, generator=g).to(device))
    rw = (pw.detach() + 0.1 * torch.randn(v, h, generator=g).to(device) / h**0.5)

    if args.worker == "topk":
        def fn(a, b, c, d):
            return chunked_topk_kl(a, b, c, d, k=args.kl_k, chunk_size=args.kl_chunk)
    else:
        fn = _full_kl

    def call(rows: int) -> float:
        kl = fn(ph[:rows], pw, rh[:rows], rw)
        kl.mean().backward()
        value = float(kl.detach().mean())
        ph.grad = pw.grad = None
        return value

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    call(min(n, 64))  # warm-up (allocator, kernels)
    sync()
    reset_ok = reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    times, value = [], 0.0
    for _ in range(args.kl_repeats):
        t0 = time.perf_counter()
        value = call(n)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"s": statistics.median(times), "peak_mem_mb": _mb(_status_kb("VmHWM") - rss_before) if reset_ok else None,
           "process_peak_mem_mb": _mb(_status_kb("VmHWM")), "kl_mean": value}
    if device.type == "cuda":
        out["peak_mem_mb"] = _mb(torch.cuda.max_memory_allocated() - cuda_before, 1)
        out["peak_mem_kind"] = "cuda max_memory_allocated above inputs"
    return out


# ------------------------------------------------------------------ driver


def _child(args, worker: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"worker {worker} failed with exit code {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"  {worker}: {json.dumps(out)} ({time.perf_counter() - t0:.1f} s with start-up)")
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s): fewer iterations, smaller KL problem")
    p.add_argument("--iterations", type=int, default=None, help="RL iterations per method (default 30; quick 3)")
    p.add_argument("--prompts-per-iteration", type=int, default=4)
    p.add_argument("--n", type=int, default=4, help="responses per prompt (both methods)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--kl-tokens", type=int, default=None, help="token positions of the KL problem (default 2048; quick 256)")
    p.add_argument("--kl-hidden", type=int, default=256)
    p.add_argument("--kl-vocab", type=int, default=32000)
    p.add_argument("--kl-k", type=int, default=500)
    p.add_argument("--kl-chunk", type=int, default=256, help="tokens per chunk of the top-k KL")
    p.add_argument("--kl-repeats", type=int, default=None, help="timed calls per KL method (default 3; quick 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl", action="store_true",
                   help="also time TRL's GRPOTrainer on the same task (needs `pip install trl`; not a novalign dependency)")
    # internal: the subprocess workers
    p.add_argument("--worker", choices=["grpo", "ppo", "trl", "topk", "full"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.iterations = args.iterations or (3 if args.quick else 30)
    args.kl_tokens = args.kl_tokens or (256 if args.quick else 2048)
    args.kl_repeats = args.kl_repeats or (1 if args.quick else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        torch.manual_seed(args.seed)
        work = {"grpo": worker_rl, "ppo": worker_rl, "trl": worker_trl}.get(args.worker, worker_kl)
        out = work(args)
        print(json.dumps(out), flush=True)
        return

    from novalign.data.io import write_jsonl
    from novalign.models.tiny import init_tiny_model

    t_start = time.perf_counter()
    common_args = ["--device", args.device, "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="novalign-bench-rl-") as tmp:
        model_dir = init_tiny_model(Path(tmp) / "tiny", seed=0)
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, ({"prompt": f"Say something about topic {i}"} for i in range(8)))
        rl_args = [*common_args, "--model-dir", str(model_dir), "--prompts", str(prompts), "--workdir", tmp,
                   "--iterations", str(args.iterations), "--prompts-per-iteration", str(args.prompts_per_iteration),
                   "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens)]
        log(f"GRPO vs PPO: {args.iterations} iterations of {args.prompts_per_iteration} prompts x {args.n} responses "
            f"of <= {args.max_new_tokens} tokens, each method in a fresh subprocess")
        res = {m: _child(args, m, rl_args) for m in ("grpo", "ppo")}
        trl_out: dict | str | None = None
        if args.trl:
            import importlib.util

            if importlib.util.find_spec("trl") is None:
                trl_out = "not installed"
            else:
                try:
                    trl_out = _child(args, "trl", rl_args)
                except RuntimeError as e:  # a TRL API change must not lose the rest of the benchmark
                    trl_out = f"failed: {e}"
    kl_args = [*common_args, "--kl-tokens", str(args.kl_tokens), "--kl-hidden", str(args.kl_hidden),
               "--kl-vocab", str(args.kl_vocab), "--kl-k", str(args.kl_k), "--kl-chunk", str(args.kl_chunk),
               "--kl-repeats", str(args.kl_repeats)]
    log(f"top-k (k={args.kl_k}, chunks of {args.kl_chunk}) vs full KL: {args.kl_tokens} tokens, vocabulary "
        f"{args.kl_vocab}, hidden {args.kl_hidden}, forward + backward, each in a fresh subprocess")
    kl = {m: _child(args, m, kl_args) for m in ("topk", "full")}
    g, p, tk, fk = res["grpo"], res["ppo"], kl["topk"], kl["full"]
    cuda = torch.cuda.is_available() and args.device != "cpu"

    out = {
        "bench": "rl",
        "grpo_reward_gain": round(g["reward_gain"], 4),
        "ppo_reward_gain": round(p["reward_gain"], 4),
        "grpo_wall_s": round(g["wall_s"], 2),
        "ppo_wall_s": round(p["wall_s"], 2),
        "grpo_peak_mem_mb": g["peak_mem_mb"],
        "ppo_peak_mem_mb": p["peak_mem_mb"],
        "topk_kl_peak_mem_mb": tk["peak_mem_mb"],
        "full_kl_peak_mem_mb": fk["peak_mem_mb"],
        "topk_kl_s": round(tk["s"], 4),
        "full_kl_s": round(fk["s"], 4),
        "ppo_over_grpo_wall": _ratio(p["wall_s"], g["wall_s"]),
        "ppo_over_grpo_peak_mem": _ratio(p["peak_mem_mb"], g["peak_mem_mb"]),
        "full_over_topk_kl_s": _ratio(fk["s"], tk["s"]),
        "full_over_topk_kl_peak_mem": _ratio(fk["peak_mem_mb"], tk["peak_mem_mb"]),
        "grpo_reward_initial": round(g["reward_initial"], 4),
        "grpo_reward_final": round(g["reward_final"], 4),
        "ppo_reward_initial": round(p["reward_initial"], 4),
        "ppo_reward_final": round(p["reward_final"], 4),
        "grpo_iteration_s": round(g["iteration_s"], 3),
        "ppo_iteration_s": round(p["iteration_s"], 3),
        "grpo_kl_final": round(g["kl_final"], 4),
        "ppo_kl_final": round(p["kl_final"], 4),
        "topk_kl_process_peak_mem_mb": tk["process_peak_mem_mb"],
        "full_kl_process_peak_mem_mb": fk["process_peak_mem_mb"],
        "topk_kl_mean": round(tk["kl_mean"], 5),
        "full_kl_mean": round(fk["kl_mean"], 5),
        "iterations": args.iterations,
        "prompts_per_iteration": args.prompts_per_iteration,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "kl_tokens": args.kl_tokens,
        "kl_vocab": args.kl_vocab,
        "kl_hidden": args.kl_hidden,
        "kl_k": args.kl_k,
        "kl_chunk": args.kl_chunk,
        "quick": args.quick,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    if args.trl:
        if isinstance(trl_out, dict):
            import trl

            out.update({"trl": trl.__version__, "trl_iteration_s": round(trl_out["iteration_s"], 3),
                        "trl_wall_s": round(trl_out["wall_s"], 2), "trl_peak_mem_mb": trl_out["peak_mem_mb"],
                        "trl_reward_gain": None if trl_out["reward_gain"] is None else round(trl_out["reward_gain"], 4),
                        "grpo_iteration_mean_s": round(g["iteration_mean_s"], 3),
                        "trl_over_grpo_iteration_s": _ratio(trl_out["iteration_s"], g["iteration_mean_s"])})
        else:
            out["trl"] = trl_out
    if cuda:
        out["grpo_peak_cuda_mb"], out["ppo_peak_cuda_mb"] = g.get("peak_cuda_mb"), p.get("peak_cuda_mb")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
