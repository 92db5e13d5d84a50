"""Shared by the bench scripts: stderr logging and the synthetic SFT set (one length distribution for all)."""

from __future__ import annotations

import math
import sys

import numpy as np

from novalign.train.packing import IGNORE_INDEX


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


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
