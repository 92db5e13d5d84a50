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


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, mega_batch_mult: int | None = 50) -> list[list[int]]:
    """Batches of the Hugging Face Trainer's ``group_by_length=True``: its own ``get_length_grouped_indices``
    (random mega-batches of ``mega_batch_mult`` batches, sorted by length inside, the longest batch first), cut
    into ``batch_size`` consecutive indices as its DataLoader does. 50 is what the Trainer uses on any set of
    more than 1,600 samples (None: its rule for the given set, fewer for a small one) -- a bench timing a
    subset of a large set passes 50, so the subset is grouped as tightly as the Trainer would group it."""
    if not lengths:
        return []
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, mega_batch_mult=mega_batch_mult,
                                       generator=torch.Generator().manual_seed(seed))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
