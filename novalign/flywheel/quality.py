"""Anchored pairwise prompt quality (report section 3.1.3).

The report buckets prompts by the classifier (20 buckets), draws 30 anchors per bucket, pairs every other
prompt of the bucket with those anchors, has several LLMs judge each pair on Clarity, Practicality,
Complexity and Novelty with three levels, and aggregates over the anchors into a quality label; a model
distilled from those labels (Quality-7B) then scores new prompts. Here:

* :func:`draw_anchors`: per bucket, anchors spread over strata (prompt-length quartiles, or a field) by
  proportional allocation (:func:`novalign.flywheel.steps.sampling.stratum_counts`), seeded;
* :func:`quality_units` / :func:`pair_verdicts`: each (prompt, anchor) pair is judged twice, the prompt shown
  first and then the anchor first, per judge -- the eval suite's position-swapped pairwise units
  (:func:`novalign.eval.graded.pairwise_units` asks one verdict; these ask one per dimension) combined by the
  same rule, :func:`novalign.eval.benchmarks.combine_position_swap`: a verdict stands only if both orders
  agree, else "same" -- which cancels a judge that prefers the first-shown prompt;
* :func:`mean_levels` (default): per prompt and dimension, the mean over anchors and judges of better = +1,
  same = 0, worse = -1, a score in [-1, 1]; or :func:`bradley_terry` (choix's ILSR, a tie counted as one win
  each way) over prompts and anchors;
* judge calls: 2 x anchors x judges per prompt (plus each bucket's anchors once against each other): they
  grow as prompts x anchors, never prompts^2;
* :func:`overall_label` and :func:`select_by_threshold` (a threshold per bucket);
* :func:`judge_against_anchors`: new prompts scored against an earlier run's anchors (how a pool keeps growing
  without re-judging, and how more prompts are judged to train the scorer);
* :class:`TextFeatures`, :func:`fit_scorer`, :func:`pairwise_accuracy`: the distilled scorer, sentence embedding
  and n-gram TF-IDF features into a ridge head (the tiny-LM scorer, the report's Quality-7B analogue, is
  :mod:`novalign.flywheel.quality_lm`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from novalign.eval.benchmarks import combine_position_swap
from novalign.eval.judge import JudgeParseError, ask_judge, load_template, render

__all__ = ["DIMENSIONS", "LEVEL", "field_value", "length_strata", "draw_anchors", "parse_dimensions",
           "parse_dimension_scores", "quality_units", "pair_verdicts", "mean_levels", "bradley_terry",
           "overall_label", "label_of", "select_by_threshold", "judge_pairs", "score_quality", "judge_against_anchors",
           "TextFeatures", "fit_scorer", "pairwise_accuracy"]

DIMENSIONS = ("clarity", "practicality", "complexity", "novelty")
LEVEL = {"better": 1.0, "same": 0.0, "worse": -1.0}
_FIRST_SHOWN = {"A": "good", "B": "bad", "tie": "same"}  # a verdict on the prompt shown first (as eval.graded)
_GSB_LEVEL = {"good": "better", "same": "same", "bad": "worse"}


def field_value(record: Mapping, path: str) -> Any:
    """The value at a dotted path (``labels.ability``); KeyError naming the first missing part."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def length_strata(lengths: Sequence[int], n_strata: int = 4) -> list[int]:
    """Quantile stratum of each length (0 = shortest quarter), by rank, ties broken by position."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out = [0] * len(lengths)
    for rank, i in enumerate(order):
        out[i] = rank * n_strata // max(1, len(lengths))
    return out


def draw_anchors(members: Sequence[int], strata: Sequence[Any], n: int, seed: Any) -> list[int]:
    """``n`` anchors of ``members`` (indices; ``strata[k]`` is member k's stratum), allocated to strata in
    proportion to their size by largest remainder, drawn uniformly inside each. All members when ``n`` >=
    their number. Example: strata a, a, a, b with n = 2: exact shares 2 x 3/4 = 1.5 and 2 x 1/4 = 0.5, floors
    1 and 0, equal remainders .5, the tie to the first by name -> two from a, none from b."""
    from novalign.flywheel.steps.sampling import stratum_counts

    if n >= len(members):
        return list(members)
    groups: dict[str, list[int]] = {}
    for m, s in zip(members, strata, strict=True):
        groups.setdefault(str(s), []).append(m)
    counts = stratum_counts({s: len(v) for s, v in groups.items()}, {s: len(v) for s, v in groups.items()}, n)
    rng = random.Random(str(seed))
    return sorted(x for s in sorted(groups) for x in rng.sample(groups[s], counts[s]))


def _bracketed_lines(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        name = head.strip().strip("*").lower()
        if sep and name in DIMENSIONS:
            inner = rest.strip()
            if not (inner.startswith("[[") and inner.endswith("]]")):
                raise JudgeParseError(f"{name}: expected [[...]], got {inner!r}")
            if name in found:
                raise JudgeParseError(f"{name} given twice")
            found[name] = inner[2:-2].strip()
    missing = [d for d in DIMENSIONS if d not in found]
    if missing:
        raise JudgeParseError(f"no line for {', '.join(missing)} (expected 'Clarity: [[A]]' and so on)")
    return found


def parse_dimensions(text: str) -> dict[str, str]:
    """``{dimension: "A" | "B" | "tie"}`` from four lines ``Clarity: [[A]]`` ... (``[[C]]`` is a tie)."""
    out = {}
    for d, v in _bracketed_lines(text).items():
        if v.upper() not in ("A", "B", "C"):
            raise JudgeParseError(f"{d}: verdict must be [[A]], [[B]] or [[C]], got [[{v}]]")
        out[d] = "tie" if v.upper() == "C" else v.upper()
    return out


def parse_dimension_scores(text: str, low: float = 1, high: float = 10) -> dict[str, float]:
    """``{dimension: score}`` from four lines ``Clarity: [[7]]`` (the absolute-scoring judge)."""
    out = {}
    for d, v in _bracketed_lines(text).items():
        try:
            out[d] = float(v)
        except ValueError:
            raise JudgeParseError(f"{d}: expected a number, got [[{v}]]") from None
        if not low <= out[d] <= high:
            raise JudgeParseError(f"{d}: {out[d]:g} outside {low:g}..{high:g}")
    return out


def quality_units(template: str, prompt: str, anchor: str) -> list[tuple[str, Callable]]:
    """The two judge prompts of one position-swapped comparison: the prompt shown first, then the anchor."""
    return [(render(template, prompt_a=prompt, prompt_b=anchor), parse_dimensions),
            (render(template, prompt_a=anchor, prompt_b=prompt), parse_dimensions)]


def pair_verdicts(prompt_first: Mapping[str, str], anchor_first: Mapping[str, str]) -> dict[str, str]:
    """``{dimension: "better" | "same" | "worse"}`` of the prompt against the anchor from the two orders'
    parsed verdicts. Example: a judge that always answers A gives A then A -> "good" then flipped "bad"
    -> they disagree -> "same": its position bias cancels."""
    return {d: _GSB_LEVEL[combine_position_swap(_FIRST_SHOWN[prompt_first[d]], _FIRST_SHOWN[anchor_first[d]])]
            for d in DIMENSIONS}


def mean_levels(verdicts: Sequence[tuple[int, int, str, Mapping[str, str]]], items: Sequence[int]
                ) -> dict[int, dict[str, float]]:
    """Per item, per dimension, the mean level over all its comparisons ``(item, other, judge, {dim: level})``
    (better +1, same 0, worse -1, from the item's side); an item also gets the mirrored level of comparisons
    where it is the ``other`` (the anchors). Items without comparisons get 0."""
    sums = {i: dict.fromkeys(DIMENSIONS, 0.0) for i in items}
    counts = dict.fromkeys(items, 0)
    for a, b, _judge, levels in verdicts:
        for who, sign in ((a, 1.0), (b, -1.0)):
            if who in sums:
                counts[who] += 1
                for d in DIMENSIONS:
                    sums[who][d] += sign * LEVEL[levels[d]]
    return {i: {d: (sums[i][d] / counts[i] if counts[i] else 0.0) for d in DIMENSIONS} for i in items}


def bradley_terry(verdicts: Sequence[tuple[int, int, str, Mapping[str, str]]], items: Sequence[int],
                  alpha: float = 0.01) -> dict[int, dict[str, float]]:
    """Per item and dimension, the Bradley-Terry strength (choix ``ilsr_pairwise``, regularized by ``alpha``,
    log scale, mean 0) from the comparisons; "same" counts as one win each way."""
    import choix

    index = {item: k for k, item in enumerate(items)}
    out = {i: {} for i in items}
    for d in DIMENSIONS:
        data = []
        for a, b, _judge, levels in verdicts:
            ia, ib = index[a], index[b]
            level = levels[d]
            if level in ("better", "same"):
                data.append((ia, ib))
            if level in ("worse", "same"):
                data.append((ib, ia))
        strength = choix.ilsr_pairwise(len(items), data, alpha=alpha) if data else np.zeros(len(items))
        for item, k in index.items():
            out[item][d] = float(strength[k])
    return out


def overall_label(scores: Mapping[str, float], high: float = 0.25, low: float = -0.25) -> tuple[float, str]:
    """``(overall, label)``: overall is the mean of the dimensions; 'high' at or above ``high``, 'low' at or
    below ``low``, else 'medium'."""
    overall = sum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS)
    return overall, label_of(overall, high, low)


def label_of(overall: float, high: float = 0.25, low: float = -0.25) -> str:
    return "high" if overall >= high else "low" if overall <= low else "medium"


def select_by_threshold(overall: Sequence[float], buckets: Sequence[str], thresholds: Mapping[str, float],
                        default: float) -> list[bool]:
    """Keep a record when its overall score is at least its bucket's threshold (``default`` for the others)."""
    return [o >= thresholds.get(b, default) for o, b in zip(overall, buckets, strict=True)]


def judge_pairs(clients: Mapping[str, Any], texts: Sequence[str], pairs: Sequence[tuple[int, int]], template: str,
                *, attempts: int = 2, max_tokens: int | None = 64, lang: str = "en"
                ) -> tuple[list[tuple[int, int, str, dict[str, str]]], int, list[dict]]:
    """Every pair judged by every judge in both orders. Returns ``(verdicts, judge calls, failures)``; a pair
    whose two judgments did not both parse is a failure (listed, never counted as a verdict)."""
    verdicts, failures, calls = [], [], 0
    units = [u for a, b in pairs for u in quality_units(template, texts[a], texts[b])]
    for name, client in clients.items():
        judged = ask_judge(client, [u[0] for u in units], [u[1] for u in units], attempts=attempts, lang=lang,
                           max_tokens=max_tokens)
        calls += sum(len(j.raw) or 1 for j in judged)
        for k, (a, b) in enumerate(pairs):
            first, second = judged[2 * k], judged[2 * k + 1]
            if first.failed or second.failed:
                failures.append({"item": a, "other": b, "judge": name, "error": first.error or second.error})
                continue
            verdicts.append((a, b, name, pair_verdicts(first.parsed, second.parsed)))
    return verdicts, calls, failures


def score_quality(texts: Sequence[str], buckets: Sequence[str], clients: Mapping[str, Any], cfg,
                  strata: Sequence[Any] | None = None) -> dict[str, Any]:
    """Anchors per bucket, every prompt judged against its bucket's anchors (and the anchors against each
    other), aggregated. ``cfg``: a :class:`~novalign.config.selection.ScoreQualityConfig`. Returns
    ``{"scores": [{dim: score}], "overall", "labels", "anchors", "verdicts", "calls", "failures"}``."""
    if not clients:
        raise ValueError("score-quality: no judges (give judges: a list of LLM configs)")
    template = load_template(cfg.template, cfg.lang, cfg.template_dir)
    if strata is None:
        strata = length_strata([len(t.split()) for t in texts])
    by_bucket: dict[str, list[int]] = {}
    for i, b in enumerate(buckets):
        by_bucket.setdefault(b, []).append(i)
    anchors: dict[str, list[int]] = {}
    pairs: list[tuple[int, int]] = []
    for b, members in sorted(by_bucket.items()):
        anchors[b] = draw_anchors(members, [strata[m] for m in members], cfg.anchors, f"{cfg.seed}:{b}")
        chosen = set(anchors[b])
        pairs += [(p, a) for p in members if p not in chosen for a in anchors[b]]
        pairs += [(a, a2) for k, a in enumerate(anchors[b]) for a2 in anchors[b][k + 1:]]
    verdicts, calls, failures = judge_pairs(clients, texts, pairs, template, attempts=cfg.attempts,
                                            max_tokens=cfg.max_tokens, lang=cfg.lang)
    items = list(range(len(texts)))
    agg = bradley_terry(verdicts, items) if cfg.method == "bradley_terry" else mean_levels(verdicts, items)
    scores = [agg[i] for i in items]
    labelled = [overall_label(s, cfg.label_high, cfg.label_low) for s in scores]
    return {"scores": scores, "overall": [o for o, _ in labelled], "labels": [lab for _, lab in labelled],
            "anchors": anchors, "verdicts": verdicts, "calls": calls, "failures": failures}


def judge_against_anchors(texts: Sequence[str], buckets: Sequence[str], anchor_texts: Mapping[str, Sequence[str]],
                          clients: Mapping[str, Any], cfg) -> dict[str, Any]:
    """Score new prompts against the anchors of an earlier run (``{bucket: anchor texts}``), each prompt against
    its bucket's anchors by every judge in both orders -- exactly the comparisons a non-anchor prompt gets in
    :func:`score_quality`, aggregated by the mean of levels (Bradley-Terry would need the anchors' own
    comparisons again). A bucket without anchors is an error. Returns ``{"scores", "overall", "labels",
    "verdicts", "calls", "failures"}`` (verdict indices: the new prompts first, then the anchors)."""
    missing = sorted({b for b in buckets if not anchor_texts.get(b)})
    if missing:
        raise ValueError(f"judge_against_anchors: no anchors for bucket(s) {', '.join(missing)}")
    template = load_template(cfg.template, cfg.lang, cfg.template_dir)
    all_texts, where = list(texts), {}
    for b in sorted(anchor_texts):
        where[b] = list(range(len(all_texts), len(all_texts) + len(anchor_texts[b])))
        all_texts += list(anchor_texts[b])
    pairs = [(i, a) for i, b in enumerate(buckets) for a in where[b]]
    verdicts, calls, failures = judge_pairs(clients, all_texts, pairs, template, attempts=cfg.attempts,
                                            max_tokens=cfg.max_tokens, lang=cfg.lang)
    agg = mean_levels(verdicts, list(range(len(texts))))
    scores = [agg[i] for i in range(len(texts))]
    labelled = [overall_label(s, cfg.label_high, cfg.label_low) for s in scores]
    return {"scores": scores, "overall": [o for o, _ in labelled], "labels": [lab for _, lab in labelled],
            "verdicts": verdicts, "calls": calls, "failures": failures}


# ------------------------------------------------------------------------------------------- distilled


class TextFeatures:
    """The distilled scorer's features beside the sentence embedding: TF-IDF of word 1-2 grams and of
    character 1-4 grams inside word boundaries (scikit-learn ``TfidfVectorizer``, sublinear tf, terms seen in
    at least two training prompts). The embedding carries the meaning; the n-grams carry what a meaning-level
    embedding smooths away and the judges look at: misspelt words and cut-off endings (clarity), the
    constraint sentences a prompt stacks (complexity), stock phrasings (novelty). Plain data (vocabularies
    and idf weights), so a scorer saves as JSON."""

    PARAMS = {"word": {"analyzer": "word", "ngram_range": (1, 2)}, "char": {"analyzer": "char_wb", "ngram_range": (1, 4)}}

    def __init__(self, vectorizers: Mapping[str, Any] | None = None):
        self.vectorizers = dict(vectorizers or {})

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TextFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        min_df = 2 if len(texts) >= 4 else 1  # a tiny set keeps every term (nothing else would be left)
        return cls({name: TfidfVectorizer(sublinear_tf=True, min_df=min_df, **kw).fit(list(texts))
                    for name, kw in cls.PARAMS.items()})

    def transform(self, texts: Sequence[str], emb: np.ndarray | None) -> np.ndarray:
        """Rows ``[embedding | word tf-idf | char tf-idf]``, each block of unit length (so none dominates)."""
        blocks = [] if emb is None else [np.asarray(emb, dtype=np.float64)]
        blocks += [self.vectorizers[name].transform(list(texts)).toarray() for name in self.PARAMS]
        return np.hstack(blocks)

    def to_dict(self) -> dict[str, Any]:
        return {name: {"vocabulary": {t: int(i) for t, i in v.vocabulary_.items()}, "idf": [float(x) for x in v.idf_]}
                for name, v in self.vectorizers.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        out = {}
        for name, kw in cls.PARAMS.items():
            v = TfidfVectorizer(sublinear_tf=True, vocabulary=data[name]["vocabulary"], **kw)
            v.idf_ = np.asarray(data[name]["idf"], dtype=np.float64)  # sklearn's setter for a fitted idf
            out[name] = v
        return cls(out)


def fit_scorer(x: np.ndarray, targets: np.ndarray, alphas: Sequence[float] = tuple(np.logspace(-3, 3, 13))):
    """The distilled scorer's head: ridge regression (scikit-learn ``RidgeCV``, the penalty chosen among
    ``alphas`` by efficient leave-one-out error) from the features (:class:`TextFeatures`, or the embedding
    alone) to the judged scores; ``.predict(x)`` scores new prompts without a judge call."""
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=list(alphas)).fit(x, targets)


def pairwise_accuracy(pred: Sequence[float], target: Sequence[float], pairs: Sequence[tuple[int, int]]) -> float:
    """Share of pairs ``(i, j)`` (with ``target[i] != target[j]``) that ``pred`` orders as ``target`` does;
    a predicted tie counts half."""
    hits, n = 0.0, 0
    for i, j in pairs:
        t = np.sign(target[i] - target[j])
        if t == 0:
            continue
        p = np.sign(pred[i] - pred[j])
        hits += 1.0 if p == t else 0.5 if p == 0 else 0.0
        n += 1
    if not n:
        raise ValueError("pairwise_accuracy: no pair with different targets")
    return hits / n
