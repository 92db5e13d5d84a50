"""Benchmark: `novalign serve` under a bad request and under clients that hang up (issue 22).

What it measures
----------------
A tiny random-init model (``init_tiny_model``) is served by the real ``novalign serve`` command in a
subprocess on 127.0.0.1 (``engine.max_batch_size=16``, ``batch_wait_ms=50``), from the checkout the script
lives in, or from ``--code`` (another checkout, e.g. the main branch, for a before/after comparison).

* **batch isolation**: 8 chat requests sent at once, so they share a batch; request 5 carries
  ``top_k: 1e20``. Reported: how many of the 7 innocent requests got 200 (``innocent_ok``), the bad
  request's status, and whether its body is OpenAI's JSON error shape (``bad_is_openai_json``).
* **disconnect cancellation**: the baseline is the latency of a small greedy request (2 new tokens), the
  best of 3, measured in the same run. Then ``--drops`` clients each send a long request (8 rows x
  ``--long-tokens`` new tokens, sampled), half of them streamed (read the first event, hang up), half not
  (hang up after 0.3 s). The latency of the next small request is ``after_drop_latency_s``; with cancellation
  it is back near the baseline, without it the request waits behind every dropped row.

One JSON line on stdout; progress on stderr.

Usage::

    python bench/serve_hardening.py                      # this checkout
    python bench/serve_hardening.py --code /work/main    # the same against another checkout
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import log  # bench/common.py (the script's folder is on sys.path)

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
ROOT = Path(__file__).resolve().parents[1]


def start(model_dir: Path, code: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "novalign.cli", "serve", "--model", str(model_dir), "--port", "0",
           "--served-model-name", "tiny", "--set", "engine.max_batch_size=16", "--set", "engine.batch_wait_ms=50",
           "--set", "engine.device=cpu"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("novalign serve:"):
            return proc, int(line.split("http://", 1)[1].split("/")[0].rsplit(":", 1)[1])
    proc.kill()
    raise SystemExit("novalign serve did not start")


def post(port: int, body: dict, timeout: float = 300) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("content-type", ""), data


def chat(content: str, **params) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **params}


def isolation(port: int) -> dict:
    bodies = [chat(f"question {i}", temperature=0.7, seed=i) for i in range(8)]
    bodies[5] = chat("question 5", temperature=0.7, top_k=1e20)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post(port, b), bodies))
    bad_status, bad_type, bad_body = answers[5]
    try:
        openai_shape = "error" in json.loads(bad_body) and bad_type.startswith("application/json")
    except json.JSONDecodeError:
        openai_shape = False
    return {"innocent_ok": sum(status == 200 for i, (status, _, _) in enumerate(answers) if i != 5),
            "innocent_total": 7, "bad_status": bad_status, "bad_is_openai_json": openai_shape}


def latency(port: int) -> float:
    start = time.monotonic()
    status, _, _ = post(port, chat("ping", temperature=0, max_tokens=2))
    assert status == 200, status
    return time.monotonic() - start


def drop(port: int, body: dict, stream: bool) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": stream}),
                 headers={"Content-Type": "application/json"})
    if stream:
        conn.getresponse().fp.readline()
    else:
        time.sleep(0.3)
    conn.sock.shutdown(2)
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose novalign serves")
    parser.add_argument("--drops", type=int, default=2, help="clients that hang up (half of them streamed)")
    parser.add_argument("--long-tokens", type=int, default=1000, help="new tokens each dropped row asks for")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    from novalign.models.tiny import init_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        init_tiny_model(model_dir, seed=0)
        proc, port = start(model_dir, args.code)
        try:
            log("isolation ...")
            iso = isolation(port)
            latency(port)  # warm-up
            baseline = min(latency(port) for _ in range(3))
            long = chat("tell me a long story", temperature=1.0, n=8, max_tokens=args.long_tokens, seed=3)
            log(f"dropping {args.drops} long requests ...")
            for i in range(args.drops):
                drop(port, long, stream=i % 2 == 0)
            time.sleep(0.3)
            after = latency(port)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # busy generating dropped rows: do not wait for it
                proc.kill()
                proc.wait(timeout=10)
    print(json.dumps({"bench": "serve_hardening", "code": str(args.code), **iso,
                      "baseline_latency_s": round(baseline, 3), "after_drop_latency_s": round(after, 3),
                      "after_over_baseline": round(after / baseline, 2), "drops": args.drops,
                      "long_tokens": args.long_tokens}))


if __name__ == "__main__":
    main()
