"""Exact and near-duplicate removal (report section 3.1: prompts are selected "for diversity" before anything
is spent on them).

* :func:`normalize` + :func:`exact_duplicates`: a record whose normalized text hashes (SHA-256) like an earlier
  one is dropped; the first is kept.
* :func:`shingles` + :func:`near_duplicates`: MinHash signatures (Broder, "On the resemblance and containment
  of documents", 1997) of character or word n-gram sets, bucketed by locality-sensitive hashing
  (datasketch's ``MinHashLSH``, bands and rows chosen for the threshold), every LSH candidate checked with
  the signatures' Jaccard estimate. Records are visited in input order and only kept records are indexed, so
  each drop names the kept record it duplicates: its cluster.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from novalign.config.pipeline import ExactDedupConfig, MinHashDedupConfig
from novalign.flywheel.step import Outcome, TextStep, drop, keep, register, text_of

__all__ = ["normalize", "exact_duplicates", "shingles", "signatures", "near_duplicates", "ExactDedup",
           "MinHashDedup"]

_SPACE = re.compile(r"\s+")
_SCHEME = "affine32"  # datasketch 2.x hash scheme, pinned: signatures are compared across processes and runs


def normalize(text: str, *, lowercase: bool = True, collapse_whitespace: bool = True,
              strip_punctuation: bool = False) -> str:
    """The text two records are compared by: NFKC (full-width and compatibility forms folded), then the
    optional lowercasing, whitespace collapsing and removal of Unicode punctuation (categories P*)."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if collapse_whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    """For each text, the index of the first earlier identical text, or ``None`` if it is the first."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        out.append(first.get(digest))
        first.setdefault(digest, i)
    return out


def shingles(text: str, n: int, unit: str = "char") -> set[bytes]:
    """The set of n-grams of ``text``: characters (any script, no tokenizer needed) or whitespace words.
    A text shorter than ``n`` units is one shingle (itself), so short texts still compare."""
    units: Sequence[str] = text if unit == "char" else text.split()
    if len(units) <= n:
        return {("" if unit == "char" else " ").join(units).encode("utf-8")}
    sep = "" if unit == "char" else " "
    return {sep.join(units[i:i + n]).encode("utf-8") for i in range(len(units) - n + 1)}


def signatures(texts: Sequence[str], *, ngram: int, unit: str, num_perm: int, seed: int) -> list[np.ndarray]:
    """MinHash signatures (datasketch) of each text's normalized shingle set; a pure function of its inputs,
    so the executor may compute chunks of it anywhere."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)  # its permutations are drawn once, reused per text
    out = []
    for t in texts:
        m.clear()
        m.update_batch(list(shingles(normalize(t), ngram, unit)))
        out.append(m.hashvalues.copy())
    return out


def near_duplicates(sigs: Sequence[np.ndarray], *, threshold: float, num_perm: int, seed: int
                    ) -> list[tuple[int, float] | None]:
    """For each signature, ``(index of the kept record it duplicates, estimated Jaccard)`` or ``None`` (kept).

    LSH (datasketch) proposes candidates among the kept records; a candidate counts only if the signatures'
    estimated Jaccard is ``>= threshold`` (LSH alone admits some false positives). Of several, the most similar
    is the cluster (ties: the earliest).
    """
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[int, np.ndarray] = {}
    out: list[tuple[int, float] | None] = []
    for i, sig in enumerate(sigs):
        best: tuple[int, float] | None = None
        lean = LeanMinHash(seed=seed, hashvalues=sig, scheme=_SCHEME)  # no permutations: only compared, never updated
        for j in sorted(lsh.query(lean)):
            similarity = float(np.count_nonzero(kept[j] == sig)) / num_perm
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
        out.append(best)
        if best is None:
            kept[i] = sig
            lsh.insert(i, lean)
    return out


@register
class ExactDedup(TextStep):
    type = "exact_dedup"
    Config = ExactDedupConfig
    mode = "global"

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        texts = [normalize(text_of(r[c.field]), lowercase=c.lowercase, collapse_whitespace=c.collapse_whitespace,
                           strip_punctuation=c.strip_punctuation) for r in records]
        return [keep(r) if dup is None else drop(r, "exact duplicate", duplicate_of=records[dup]["_id"])
                for r, dup in zip(records, exact_duplicates(texts), strict=True)]


def _signature_chunk(args: tuple[list[str], dict]) -> list[np.ndarray]:
    texts, options = args
    return signatures(texts, **options)


@register
class MinHashDedup(TextStep):
    type = "minhash_dedup"
    Config = MinHashDedupConfig
    mode = "global"

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        options = {"ngram": c.ngram, "unit": c.unit, "num_perm": c.num_perm, "seed": c.seed}
        texts = [text_of(r[c.field]) for r in records]
        size = 2000
        parts = pmap(_signature_chunk, [(texts[i:i + size], options) for i in range(0, len(texts), size)])
        sigs = [s for part in parts for s in part]
        found = near_duplicates(sigs, threshold=c.threshold, num_perm=c.num_perm, seed=c.seed)
        return [keep(r) if hit is None else
                drop(r, "near duplicate", cluster=records[hit[0]]["_id"], similarity=round(hit[1], 4))
                for r, hit in zip(records, found, strict=True)]
