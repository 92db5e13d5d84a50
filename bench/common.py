"""Shared by the bench scripts: stderr logging, peak-memory probes (/proc) and the synthetic SFT set (one length
distribution for all)."""

from __future__ import annotations

import math
import re
import sys

import numpy as np

from novalign.models.packing import IGNORE_INDEX


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def status_kib(field: str) -> int | None:
    """A kB field of /proc/self/status (``VmRSS``, ``VmHWM``); None where /proc or the field is missing."""
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def reset_peak_rss() -> bool:
    """Reset the peak resident set (VmHWM) to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_samples(
    n: int, *, median: float, sigma: float, min_len: int, max_len: int, vocab: int, seed: int, prompt_frac: float = 0.4
) -> list[tuple[list[int], list[int]]]:
    """Log-normal lengths clipped to [min_len, max_len], random ids; labels = ids on the last
    (1 - prompt_frac) of each sample (the "assistant" part), -100 on the prompt part."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), min_len, max_len).astype(int)
    samples = []
    for length in lengths:
        ids = rng.integers(0, vocab, int(length)).tolist()
        prompt = int(round(prompt_frac * length))
        samples.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return samples
