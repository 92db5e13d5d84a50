"""The same CPU-bound flywheel pipeline -- MinHash LSH near-duplicate removal of generated prompts with planted
near-duplicates -- on the `local` executor and on `ray` (a local Ray with the same worker count), in one run.

Prompts: 25-40 words drawn from a 5,000-word synthetic vocabulary (seeded). A share `--dup-frac` of them are
planted near-duplicates of an earlier prompt, each one edit away: one word replaced, one word inserted, or
the case and final punctuation changed. A planted copy always comes after its original, so the pipeline must
drop exactly the copies. Precision = planted copies among the drops / drops; recall = planted copies dropped
/ planted copies.

Prints one JSON line: wall time of each executor, their ratio (ray / local), the peak resident memory of the
process tree during each (psutil, sampled every 50 ms: driver, pool workers, Ray's processes), precision and
recall of each, and whether both kept the same records.

    python bench/flywheel_exec.py --prompts 200000     # the issue's scale
    python bench/flywheel_exec.py --prompts 20000      # quick
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import log  # noqa: E402 - bench/common.py (the script's folder is on sys.path)

from novalign.flywheel.pipeline import Pipeline  # noqa: E402


def make_prompts(n: int, dup_frac: float, seed: int) -> tuple[list[str], set[int]]:
    """``n`` prompts and the positions of the planted near-duplicates."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(5000)]
    n_dup = int(n * dup_frac)
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(25, 40))) + "?" for _ in range(n - n_dup)]
    prompts: list[str | None] = list(base)
    planted: list[tuple[int, str]] = []
    for _ in range(n_dup):
        src = rng.randrange(len(base))
        words = base[src].rstrip("?").split()
        edit = rng.randrange(3)
        if edit == 0:
            words[rng.randrange(len(words))] = rng.choice(vocab)
            text = " ".join(words) + "?"
        elif edit == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
            text = " ".join(words) + "?"
        else:
            text = " ".join(words).capitalize() + "!"
        planted.append((src, text))
    # place each copy at a random point after its original
    order: list[str] = []
    dup_positions: set[int] = set()
    after: dict[int, list[str]] = {}
    for src, text in planted:
        after.setdefault(rng.randint(src, len(base) - 1), []).append(text)
    for i, text in enumerate(prompts):
        order.append(text)
        for copy in after.get(i, []):
            dup_positions.add(len(order))
            order.append(copy)
    return order, dup_positions


class PeakRSS:
    """Peak summed RSS of this process and its descendants, sampled on a thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(executor: str, src: Path, work: Path, workers: int, args) -> dict:
    p = Pipeline(work / executor, executor=executor, workers=workers, batch_size=args.batch_size, progress=False)
    p.source("prompts", src)
    p.step("near", "minhash_dedup", {"field": "prompt", "threshold": args.threshold, "ngram": args.ngram,
                                     "num_perm": args.num_perm})
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = p.run()
        wall = time.perf_counter() - t0
    drops = [json.loads(x) for x in (result.outputs["near"].parent / "drops.jsonl").read_text().splitlines()]
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(mem.peak / 2**20), "dropped": len(drops),
            "dropped_ids": {d["_id"] for d in drops}, "bytes": result.outputs["near"].read_bytes()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200_000)
    ap.add_argument("--dup-frac", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-exec-"))
    prompts, dups = make_prompts(args.prompts, args.dup_frac, args.seed)
    src = work / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in prompts))
    planted = {f"prompts-{i + 1}" for i in dups}  # ids are <source>-<line>, lines 1-based
    out = {"bench": "flywheel_exec", "prompts": len(prompts), "planted_duplicates": len(planted),
           "workers": args.workers, "threshold": args.threshold, "ngram": args.ngram, "num_perm": args.num_perm}
    results = {}
    for executor in ("local", "ray"):
        log(f"running {executor} ...")
        r = results[executor] = run(executor, src, work, args.workers, args)
        tp = len(r["dropped_ids"] & planted)
        out[executor] = {"wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"], "dropped": r["dropped"],
                         "precision": round(tp / r["dropped"], 4) if r["dropped"] else None,
                         "recall": round(tp / len(planted), 4) if planted else None}
    out["ray_over_local_wall"] = round(results["ray"]["wall_s"] / results["local"]["wall_s"], 2)
    out["same_output"] = results["ray"]["bytes"] == results["local"]["bytes"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
