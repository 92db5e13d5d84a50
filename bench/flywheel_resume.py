"""Kill-and-resume of a flywheel pipeline (generate, then judge) against a faulty OpenAI-compatible server.

The server (tests/counting_llm.py, in this process) answers deterministically, counts every request it
receives and every body it *generates* a reply for, and injects faults: 30 % 429 with Retry-After, 5 % 500,
3 % dropped connections, 5 % slow answers. It stands in for a provider that honours idempotency keys the way
`novalign serve` does (novalign/llm/idempotency.py): a repeat of a key it generated gets the stored reply.
The pipeline runs as `novalign data run` subprocesses.

1. Baseline: one uninterrupted run on its own server and cache; its records/s is `records_per_s`.
2. The same pipeline on a fresh server and cache, SIGKILLed at `--kills` random points of its work (when the
   server has received a random number of requests, uniform over the baseline's count) and started again
   after each, until it finishes.

3. The same again against a server that ignores idempotency keys (unless --no-ignoring-keys): what a provider
   without them costs -- replies in flight at a kill (generated, not yet stored by the killed client) are
   generated again after the restart, up to ``concurrency`` per kill.

Prints one JSON line: requests_sent (all requests the second server received, faults and retries included),
requests_answered (200 responses, replays included), requests_generated, duplicate_requests (bodies generated
more than once: requests paid twice), replayed_requests (repeats answered from the server's key store: the
replies in flight at a kill), rows_lost (records of the uninterrupted output missing from the resumed one),
identical_to_uninterrupted (both steps' records.jsonl byte-equal), records_per_s, kills, faults, the
baseline's numbers, and ``ignoring_keys`` (run 3's kills, duplicate_requests, rows_lost, identical).

    python bench/flywheel_resume.py --requests 2000      # the issue's scale
    python bench/flywheel_resume.py --requests 300       # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

from counting_llm import CountingLLM  # noqa: E402

from common import log  # noqa: E402 - bench/common.py (the script's folder is on sys.path)


def _config(run_dir: Path, src: Path, url: str, concurrency: int) -> Path:
    cfg = {"run_dir": str(run_dir), "progress": False,
           "llm": {"base_url": url, "model": "m", "api_key": "k", "max_concurrency": concurrency, "max_attempts": 12,
                   "backoff_base_s": 0.02, "backoff_max_s": 0.2, "timeout_s": 10},
           "sources": {"prompts": {"path": str(src)}},
           "steps": [{"name": "gen", "type": "llm_generate",
                      "config": {"models": [{"name": "m"}], "n": 1, "temperature": 0.7}},
                     {"name": "judge", "type": "llm_judge", "config": {"template": "rl_rating"}}]}
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.Popen([sys.executable, "-m", "novalign.cli", "data", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _outputs(run_dir: Path) -> dict[str, bytes]:
    return {s: (next((run_dir / "steps").glob(f"{s}-*")) / "records.jsonl").read_bytes() for s in ("gen", "judge")}


def _killed_run(work: Path, name: str, src: Path, args, points: list[int], honour_keys: bool) -> tuple[CountingLLM, int]:
    """Run the pipeline on a fresh server and cache, SIGKILLing it when the server has received each of
    ``points`` requests and starting it again, until it finishes. Returns the server and the kills made."""
    server = CountingLLM(p429=0.30, p500=0.05, pdrop=0.03, pslow=0.05, slow_s=0.2, retry_after="0.05", seed=7,
                         honour_keys=honour_keys)
    path = _config(work / name, src, server.url, args.concurrency)
    kills = 0
    while True:
        proc = _start(path)
        if kills < len(points):
            while proc.poll() is None and server.received < points[kills]:
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                log(f"{name}: kill {kills} at request {server.received}")
                continue
        err = proc.communicate()[1]
        if proc.returncode != 0:
            raise SystemExit(f"resumed run failed:\n{err[-2000:]}")
        break
    server.close()
    return server, kills


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="generation + judge requests (half each)")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ignoring-keys", action="store_true", help="skip run 3 (a server that ignores the keys)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-resume-"))
    src = work / "prompts.jsonl"
    n_prompts = args.requests // 2
    src.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} times {i % 13}?"}) + "\n"
                           for i in range(n_prompts)))

    base = CountingLLM(p429=0.30, p500=0.05, pdrop=0.03, pslow=0.05, slow_s=0.2, retry_after="0.05", seed=7)
    t0 = time.perf_counter()
    proc = _start(_config(work / "plain", src, base.url, args.concurrency))
    err = proc.communicate()[1]
    base_wall = time.perf_counter() - t0
    base.close()
    if proc.returncode != 0:
        raise SystemExit(f"baseline run failed:\n{err[-2000:]}")
    log(f"baseline: {base_wall:.1f}s, {base.requests_generated} generated, {base.received} received")

    rng = random.Random(args.seed)
    points = sorted(rng.randint(1, base.received - 1) for _ in range(args.kills))
    server, kills = _killed_run(work, "killed", src, args, points, honour_keys=True)
    plain = _outputs(work / "plain")
    want = {json.loads(x)["_id"] for x in plain["judge"].splitlines()}

    def compare(name: str) -> tuple[int, bool]:
        resumed = _outputs(work / name)
        have = {json.loads(x)["_id"] for x in resumed["judge"].splitlines()}
        return len(want - have), plain == resumed

    lost, same = compare("killed")
    out = {
        "bench": "flywheel_resume", "requests_target": args.requests, "prompts": n_prompts,
        "concurrency": args.concurrency, "kills": kills,
        "requests_sent": server.received, "requests_answered": server.requests_answered,
        "requests_generated": server.requests_generated, "duplicate_requests": server.duplicates,
        "replayed_requests": server.replayed, "rows_lost": lost, "identical_to_uninterrupted": same,
        "records_per_s": round(len(want) / base_wall, 1),
        "faults": dict(server.faults),
        "baseline": {"wall_s": round(base_wall, 2), "requests_sent": base.received,
                     "requests_generated": base.requests_generated, "duplicate_requests": base.duplicates},
    }
    if not args.no_ignoring_keys:
        bare, bare_kills = _killed_run(work, "ignoring", src, args, points, honour_keys=False)
        lost, same = compare("ignoring")
        out["ignoring_keys"] = {"kills": bare_kills, "requests_generated": bare.requests_generated,
                                "duplicate_requests": bare.duplicates, "rows_lost": lost,
                                "identical_to_uninterrupted": same}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
