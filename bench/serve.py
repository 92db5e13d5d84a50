"""Benchmark: `novalign serve` with request batching against the same requests one at a time.

What it measures
----------------
A tiny random-init model (``init_tiny_model``, hidden 64, 2 layers; CPU unless a GPU is present) is served
by the real ``novalign serve`` command in a subprocess on 127.0.0.1. The same N chat requests (distinct
prompts, greedy, ``max_tokens`` fixed) are then sent through the novalign client (no cache):

* **batched**: all N concurrently (``max_concurrency = N``); the server's batching queue gathers them for
  ``batch_wait_ms`` and runs them through one batched ``generate`` per batch;
* **sequential**: one at a time (``max_concurrency = 1``), so every request is a batch of one;
* **concurrent, unbatched** (skipped with ``--quick``): all N concurrently against a second server started
  with ``engine.max_batch_size=1`` -- the same HTTP concurrency without batching, to show the gain comes
  from batching and not from overlapping HTTP work.

Both main modes send identical greedy requests, so they generate identical tokens (``completion_tokens``
is reported per mode as a check). One untimed warm-up request runs first.

Reported (one JSON line on stdout; progress on stderr): ``batched_requests_per_s``,
``sequential_requests_per_s``, ``speedup`` (batched / sequential), ``concurrent_unbatched_requests_per_s``,
the server's batch counts, and the settings.

Usage::

    python bench/serve.py            # 64 requests, 32 new tokens each
    python bench/serve.py --quick    # smoke run: 16 requests, 16 tokens (< 30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from common import log  # bench/common.py (the script's folder is on sys.path)
from novalign.llm import ChatRequest, LLMClient
from novalign.llm.openai_compat import OpenAIBackend

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@contextmanager
def running_server(model_dir: Path, *settings: str):
    """``novalign serve`` on a free loopback port; yields its base URL; stops it on exit."""
    cmd = [sys.executable, "-m", "novalign.cli", "serve", "--model", str(model_dir), "--port", "0",
           "--served-model-name", "tiny"] + [arg for s in settings for arg in ("--set", s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("novalign serve exited before it started")
            if line.startswith("novalign serve:"):
                url = line.split(" at ")[1].split()[0]
        if url is None:
            raise RuntimeError("novalign serve did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def health(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        return json.loads(r.read())


def timed_run(url: str, requests: list[ChatRequest], concurrency: int) -> tuple[float, int]:
    """Seconds to answer all ``requests`` with ``concurrency`` in flight, and the completion tokens."""
    client = LLMClient(OpenAIBackend(url, "tiny", timeout_s=600), max_concurrency=concurrency, progress=False,
                       print_usage=False)
    try:
        client.chat(requests[0])  # warm-up: connection, first-call overheads
        start = time.perf_counter()
        results = client.run_batch(requests, progress=False)
        seconds = time.perf_counter() - start
    finally:
        client.close()
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0]}")
    retried = sum(r.attempts > 1 for r in results)
    if retried:
        log(f"warning: {retried} requests needed retries")
    return seconds, sum(r.completion_tokens for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests", type=int, default=64, help="N: requests per mode")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="server: how long a batch gathers requests")
    p.add_argument("--quick", action="store_true", help="smoke run: 16 requests of 16 tokens, no unbatched mode")
    args = p.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 16, 16
    from novalign.models.tiny import init_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = init_tiny_model(Path(tmp) / "tiny", seed=0)
        requests = [ChatRequest([{"role": "user", "content": f"Question number {i}: what comes next?"}],
                    temperature=0.0, max_tokens=args.max_tokens) for i in range(args.requests)]
        settings = (f"engine.max_batch_size={args.requests}", f"engine.batch_wait_ms={args.batch_wait_ms}")
        with running_server(model_dir, *settings) as url:
            log(f"server at {url}; {args.requests} requests x {args.max_tokens} tokens")
            b0 = health(url)["batches"]
            batched_s, batched_tokens = timed_run(url, requests, concurrency=args.requests)
            b1 = health(url)["batches"]
            log(f"batched: {batched_s:.2f} s in {b1 - b0} server batches")
            sequential_s, sequential_tokens = timed_run(url, requests, concurrency=1)
            log(f"sequential: {sequential_s:.2f} s")
        unbatched = None
        if not args.quick:
            with running_server(model_dir, "engine.max_batch_size=1", f"engine.batch_wait_ms={args.batch_wait_ms}") as url:
                unbatched_s, _ = timed_run(url, requests, concurrency=args.requests)
                unbatched = round(args.requests / unbatched_s, 2)
                log(f"concurrent, unbatched: {unbatched_s:.2f} s")
    n = args.requests
    out = {
        "bench": "serve", "device": "cuda" if _cuda() else "cpu", "requests": n, "max_tokens": args.max_tokens,
        "batched_requests_per_s": round(n / batched_s, 2), "sequential_requests_per_s": round(n / sequential_s, 2),
        "speedup": round(sequential_s / batched_s, 2), "concurrent_unbatched_requests_per_s": unbatched,
        "server_batches_batched_mode": b1 - b0 - 1, "completion_tokens": {"batched": batched_tokens,
                                                                         "sequential": sequential_tokens},
        "batch_wait_ms": args.batch_wait_ms, "quick": args.quick,
    }
    print(json.dumps(out), flush=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
