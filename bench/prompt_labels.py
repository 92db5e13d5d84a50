"""Benchmark: voted prompt labels (majority vs Dawid-Skene), the review queue, and the distilled classifier
against a TF-IDF baseline (report section 3.1.1), on a generated pool with known true labels.

What it measures
----------------
``novalign.world.prompt_pool`` generates ``--n`` prompts (English, Simplified and Traditional Chinese, code)
with their true labels on the six dimensions. There is no strong LLM and no hub here, so the labelers are
**simulated external LLMs** -- stand-ins for third-party models, not novalign components -- each with a
known, documented behaviour per dimension (:data:`LABELERS`): an accuracy, and errors that are mostly
*systematic* (a true class is read as one fixed other class, as a model that always reads 'intermediate' as
'difficult'), the rest uniform; a share of their replies are unparsable (counted, never guessed). As with
real labelers, errors concentrate on ambiguous prompts: a quarter of the prompts (drawn per prompt and
dimension) are ambiguous, where every labeler's error rate is 2.5 times its average, and half of it on the
others -- so each labeler's average accuracy stays the one listed, and the labelers' errors are correlated
(which Dawid-Skene, assuming them independent given the true class, does not model).

1. Every labeler votes once per prompt and dimension. ``single_vote_accuracy`` is the mean over labelers of
   their accuracy (all dimensions pooled; a failed vote counts as wrong), ``best_single_vote_accuracy`` the
   best labeler's; ``majority_accuracy`` and ``dawid_skene_accuracy`` aggregate the same votes
   (:mod:`novalign.flywheel.labels`), against the true labels.
2. ``review_queue_error_capture``: of the (prompt, dimension) labels Dawid-Skene gets wrong, the share in
   the review queue of the 10 % least confident labels (``review_queue(unit="label")``: the items are the
   labels, as the issue's "share of wrong aggregated labels"; the queue's tasks are the prompts holding
   them, ``review_queue_label_tasks``). ``review_queue_by_record_error_capture``: the same errors caught by
   the 10 % least confident *prompts* (``unit="record"``, all six labels of each checked) -- an upper bound
   on it here is (errors on those prompts) / (all errors), low when errors are spread over many prompts.
3. The training set is built as the report builds it ("voting and manual verification of low-confidence
   samples"): the Dawid-Skene labels with the review queue's labels corrected -- by a simulated reviewer
   who knows the truth (a stand-in for the human annotators; ``reviewed_label_accuracy``). The classifier
   (:mod:`novalign.flywheel.classify`, frozen all-MiniLM-L6-v2 + char 1-3-gram TF-IDF, one
   logistic-regression head per dimension) is trained on ``1 - --test-share`` of the pool and scored on the
   rest against the true labels: ``classifier_macro_f1`` per dimension. In the same run, on the same split
   and labels: ``tfidf_macro_f1`` (word TF-IDF + LR) and ``embedding_only_macro_f1`` (MiniLM alone);
   ``votes_only_*_macro_f1``: both trained on the votes without the review. ``true_label_trained_*_macro_f1``: both trained on the true
   labels of the same split instead -- the ceiling that the voted labels' errors leave.
4. ``classify_prompts_per_s``: the held-out prompts labeled from text (embedding, n-grams, six heads) with
   ``--threads`` torch threads (2: the issue's "2 cores"), measured on up to 300 of them.

5. The LM classifier (:mod:`novalign.flywheel.classify_lm`: a tiny Llama built and fine-tuned here with
   novalign's own ``init_tiny_model`` + ``run_sft`` on "prompt -> label JSON", the report's "specialized
   automatic prompt labeling model", rerun at toy scale), trained on the same reviewed labels of the same
   split and scored on the same held-out prompts against the true labels: ``lm_macro_f1`` /
   ``lm_accuracy`` per dimension, ``lm_train_s`` (wall time), ``lm_classify_prompts_per_s`` (batched greedy
   generation of every held-out prompt + the confidence pass, ``--threads`` threads), ``lm_failures``
   (replies unparsable or with a value that is no leaf: counted, those dimensions scored as wrong).
6. Labeler (a) of the issue, a real served labeler: another tiny LM trained the same way on the *true*
   labels of ``--served-train`` prompts of a second pool (seed + 7919), prompts that also occur in the
   bench's pool removed (``served_train_overlap_removed``), but on ``llm_label``'s own labeling conversation
   (:func:`~novalign.flywheel.steps.prompt_labels.label_messages`, no examples per leaf); served by a real
   ``novalign serve`` subprocess and asked through the ``llm_label`` step over HTTP (temperature 0, one
   structured attempt: a bad reply is a failed vote, counted) about the first ``--served-prompts`` prompts
   of the pool (a random subset; its ~1,000-token labeling prompt makes each request slow on the CPU).
   ``served_single_vote_accuracy`` is its accuracy on them (as ``single_vote_accuracy``);
   ``majority_accuracy_with_served`` / ``dawid_skene_accuracy_with_served`` aggregate the five simulated
   labelers' votes plus its own over the whole pool (without it: ``majority_accuracy`` /
   ``dawid_skene_accuracy``), and ``*_with_served_on_asked`` / ``*_without_served_on_asked`` score both on
   the prompts it was asked about. Everything else above uses the
   five simulated labelers only, so those numbers stay comparable with earlier runs. ``--no-lm`` skips 5-6.

One JSON line on stdout. Targets (issue 16): dawid_skene >= majority >= single vote; classifier macro-F1
>= 0.90 on every dimension and above TF-IDF; the queue holds >= 40 % of the errors with 10 % of the items.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from novalign.flywheel.labels import aggregate_records, review_queue  # noqa: E402
from novalign.flywheel.taxonomy import load_taxonomy  # noqa: E402
from novalign.world.prompt_pool import generate_pool, split  # noqa: E402

DIMS = ["ability", "attributes", "domain", "language", "difficulty", "constraints"]

# Simulated external labelers: (name, accuracy per dimension, share of errors that are systematic, share of
# unparsable replies). Their systematic confusions are a fixed random map true -> other class per labeler.
AMBIGUOUS_SHARE, AMBIGUOUS_FACTOR = 0.25, 2.5  # error rate x2.5 on ambiguous prompts, x0.5 on the rest
CLEAR_FACTOR = (1 - AMBIGUOUS_SHARE * AMBIGUOUS_FACTOR) / (1 - AMBIGUOUS_SHARE)
LABELERS = [
    ("strong", {"ability": 0.92, "attributes": 0.88, "domain": 0.9, "language": 0.97, "difficulty": 0.8,
                "constraints": 0.85}, 0.8, 0.02),
    ("medium-a", {"ability": 0.8, "attributes": 0.72, "domain": 0.75, "language": 0.93, "difficulty": 0.65,
                  "constraints": 0.7}, 0.8, 0.04),
    ("medium-b", {"ability": 0.78, "attributes": 0.7, "domain": 0.72, "language": 0.9, "difficulty": 0.62,
                  "constraints": 0.68}, 0.8, 0.05),
    ("weak-a", {"ability": 0.6, "attributes": 0.5, "domain": 0.55, "language": 0.8, "difficulty": 0.5,
                "constraints": 0.5}, 0.9, 0.08),
    ("weak-b", {"ability": 0.55, "attributes": 0.45, "domain": 0.5, "language": 0.75, "difficulty": 0.45,
                "constraints": 0.45}, 0.9, 0.1),
]


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def simulate_votes(pool: list[dict], taxonomy, seed: int) -> list[dict]:
    """Each record with ``label_votes`` from every simulated labeler."""
    rng = random.Random(seed)
    confusions = {}
    for name, *_ in LABELERS:
        for d in DIMS:
            leaves = taxonomy.leaves(d)
            confusions[name, d] = {c: rng.choice([x for x in leaves if x != c]) for c in leaves}
    out = []
    for r in pool:
        factor = {d: AMBIGUOUS_FACTOR if rng.random() < AMBIGUOUS_SHARE else CLEAR_FACTOR for d in DIMS}
        votes = []
        for name, acc, systematic, fail in LABELERS:
            if rng.random() < fail:
                votes.append({"labeler": name, "labels": None, "error": "parse: no JSON (simulated)"})
                continue
            labels = {}
            for d in DIMS:
                true = r["true_labels"][d]
                if rng.random() >= min(0.95, (1 - acc[d]) * factor[d]):  # right
                    labels[d] = true
                elif rng.random() < systematic:
                    labels[d] = confusions[name, d][true]
                else:
                    labels[d] = rng.choice([x for x in taxonomy.leaves(d) if x != true])
            votes.append({"labeler": name, "labels": labels, "error": None})
        out.append({**r, "_id": r["id"], "label_votes": votes})
    return out


def vote_metrics(records: list[dict], taxonomy, queue_share: float) -> tuple[dict, list[dict]]:
    total = len(records) * len(DIMS)
    single = {}
    for name, *_ in LABELERS:
        right = 0
        for r in records:
            v = next(v for v in r["label_votes"] if v["labeler"] == name)
            right += sum((v["labels"] or {}).get(d) == r["true_labels"][d] for d in DIMS)
        single[name] = right / total
    agg = {m: aggregate_records(records, taxonomy, method=m, dimensions=DIMS) for m in ("majority", "dawid_skene")}
    acc = {m: sum(a["labels"][d] == r["true_labels"][d] for r, a in zip(records, agg[m]) for d in DIMS) / total
           for m in agg}
    voted = [{**r, **a} for r, a in zip(records, agg["dawid_skene"])]
    wrong = [(i, d) for i, r in enumerate(voted) for d in DIMS if r["labels"][d] != r["true_labels"][d]]
    wrong_records = {i for i, _ in wrong}
    by_label = review_queue(voted, queue_share, unit="label")
    by_record = review_queue(voted, queue_share, unit="record")
    metrics = {
        "single_vote_accuracy": round(float(np.mean(list(single.values()))), 4),
        "best_single_vote_accuracy": round(max(single.values()), 4),
        "per_labeler_accuracy": {k: round(v, 4) for k, v in single.items()},
        "majority_accuracy": round(acc["majority"], 4), "dawid_skene_accuracy": round(acc["dawid_skene"], 4),
        "failed_votes": sum(v["labels"] is None for r in records for v in r["label_votes"]),
        "votes": sum(len(r["label_votes"]) for r in records),
        "review_queue_share": queue_share, "dawid_skene_wrong_labels": len(wrong),
        "dawid_skene_wrong_records": len(wrong_records),
        "review_queue_error_capture": round(sum(d in by_label.get(i, ()) for i, d in wrong) / max(1, len(wrong)), 4),
        "review_queue_label_items": sum(map(len, by_label.values())), "review_queue_label_tasks": len(by_label),
        "review_queue_by_record_error_capture": round(sum(i in by_record for i, _ in wrong) / max(1, len(wrong)), 4),
    }
    for i, dims in by_label.items():  # the simulated human review: queued labels corrected to the truth
        voted[i]["reviewed_labels"] = {**voted[i]["labels"], **{d: voted[i]["true_labels"][d] for d in dims}}
    for r in voted:
        r.setdefault("reviewed_labels", r["labels"])
    metrics["reviewed_label_accuracy"] = round(sum(r["reviewed_labels"][d] == r["true_labels"][d]
                                                   for r in voted for d in DIMS) / total, 4)
    return metrics, voted


class CachedEmbedder:
    """Embeds each distinct text once (the bench scores several heads on the same embeddings); with ``path``,
    the embeddings are kept in an .npz between runs (``--embed-cache``)."""

    def __init__(self, inner, path: str | None = None):
        self.inner, self.cache, self.path = inner, {}, path
        if path and Path(path).is_file():
            saved = np.load(path, allow_pickle=False)
            self.cache = dict(zip(saved["texts"].tolist(), saved["vectors"]))

    def save(self) -> None:
        if self.path:
            texts = list(self.cache)
            np.savez(self.path, texts=np.array(texts), vectors=np.stack([self.cache[t] for t in texts]))

    def __call__(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            for t, e in zip(todo, self.inner(todo)):
                self.cache[t] = e
        return np.stack([self.cache[t] for t in texts])


def classifier_metrics(voted: list[dict], test_share: float, seed: int, C: float = 10.0,
                       embed_cache: str | None = None) -> dict:
    from novalign.flywheel.classify import Embedder, scores, tfidf_baseline, train_classifier

    train, test = split(voted, [1 - test_share, test_share], seed=seed)
    ytr = {d: [r["reviewed_labels"][d] for r in train] for d in DIMS}
    tr_text, te_text = [r["prompt"] for r in train], [r["prompt"] for r in test]
    raw = Embedder()
    embedder = CachedEmbedder(raw, embed_cache)
    t0 = time.time()
    clf = train_classifier(tr_text, ytr, embedder=embedder, seed=seed, C=C)
    train_s = time.time() - t0
    log(f"trained on {len(train)} in {train_s:.1f}s")
    timed = te_text[:300]
    clf.embedder = raw  # timed from text: no cached embeddings
    t0 = time.time()
    clf.predict(timed)
    per_s = len(timed) / (time.time() - t0)
    clf.embedder = embedder
    pred = clf.predict(te_text)
    gold = {d: [r["true_labels"][d] for r in test] for d in DIMS}
    out = {"train_records": len(train), "test_records": len(test), "train_s": round(train_s, 1),
           "classify_prompts_per_s": round(per_s, 1),
           "classifier_macro_f1": {d: scores([p[d][0] for p in pred], gold[d])["macro_f1"] for d in DIMS},
           "classifier_accuracy": {d: scores([p[d][0] for p in pred], gold[d])["accuracy"] for d in DIMS}}
    embedder.save()
    base = tfidf_baseline(tr_text, ytr, te_text, seed=seed, C=C)
    out["tfidf_macro_f1"] = {d: scores(base[d], gold[d])["macro_f1"] for d in DIMS}
    # the embedding-only head on the same (cached) embeddings
    emb_only = train_classifier(tr_text, ytr, embedder=embedder, char_ngrams=False, seed=seed, C=C)
    ep = emb_only.predict(te_text)
    out["embedding_only_macro_f1"] = {d: scores([p[d][0] for p in ep], gold[d])["macro_f1"] for d in DIMS}
    # trained on the votes alone (no review)
    yvote = {d: [r["labels"][d] for r in train] for d in DIMS}
    vp = train_classifier(tr_text, yvote, embedder=embedder, seed=seed, C=C).predict(te_text)
    out["votes_only_classifier_macro_f1"] = {d: scores([p[d][0] for p in vp], gold[d])["macro_f1"] for d in DIMS}
    base_vote = tfidf_baseline(tr_text, yvote, te_text, seed=seed, C=C)
    out["votes_only_tfidf_macro_f1"] = {d: scores(base_vote[d], gold[d])["macro_f1"] for d in DIMS}
    # the ceiling the voted labels leave: both models trained on the TRUE labels of the same training split
    ytrue = {d: [r["true_labels"][d] for r in train] for d in DIMS}
    oracle = train_classifier(tr_text, ytrue, embedder=embedder, seed=seed, C=C).predict(te_text)
    out["true_label_trained_classifier_macro_f1"] = {d: scores([p[d][0] for p in oracle], gold[d])["macro_f1"]
                                                     for d in DIMS}
    base_true = tfidf_baseline(tr_text, ytrue, te_text, seed=seed, C=C)
    out["true_label_trained_tfidf_macro_f1"] = {d: scores(base_true[d], gold[d])["macro_f1"] for d in DIMS}
    out["C"] = C
    return out


def lm_classifier_metrics(voted: list[dict], test_share: float, seed: int, steps: int) -> dict:
    """Item 5: the LM classifier on the split and reviewed labels :func:`classifier_metrics` uses."""
    import tempfile

    from novalign.flywheel.classify import scores
    from novalign.flywheel.classify_lm import LMClassifierConfig, train_lm_classifier

    train, test = split(voted, [1 - test_share, test_share], seed=seed)
    ytr = {d: [r["reviewed_labels"][d] for r in train] for d in DIMS}
    cfg = LMClassifierConfig(steps=steps, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as work:
        t0 = time.time()
        clf = train_lm_classifier([r["prompt"] for r in train], ytr, Path(work) / "lm", config=cfg)
        train_s = time.time() - t0
        log(f"LM classifier trained on {len(train)} in {train_s:.1f}s (loss {clf.manifest['final_loss']})")
        t0 = time.time()
        pred = clf.predict_detailed([r["prompt"] for r in test], progress=True)
        per_s = len(test) / (time.time() - t0)
    gold = {d: [r["true_labels"][d] for r in test] for d in DIMS}
    got = {d: scores([p[d] for p in pred.labels], gold[d]) for d in DIMS}  # None (failed) counts as wrong
    return {"lm_macro_f1": {d: got[d]["macro_f1"] for d in DIMS}, "lm_accuracy": {d: got[d]["accuracy"] for d in DIMS},
            "lm_train_s": round(train_s, 1), "lm_classify_prompts_per_s": round(per_s, 1),
            "lm_failures": pred.failures(), "lm_final_loss": clf.manifest["final_loss"],
            "lm_config": {k: v for k, v in cfg.model_dump().items() if k not in ("instruction",)}}


def served_labeler_metrics(records: list[dict], taxonomy, args) -> dict:
    """Item 6: train labeler (a) on part of a second pool, serve it, let it vote through llm_label."""
    import tempfile

    from serve import running_server  # bench/serve.py: `novalign serve` in a subprocess (this folder is on sys.path)
    from novalign.config.llm import LLMConfig
    from novalign.data.io import write_jsonl
    from novalign.flywheel.classify_lm import LMClassifierConfig, train_lm_classifier
    from novalign.flywheel.pipeline import Pipeline
    from novalign.flywheel.steps.prompt_labels import label_messages

    seen = {r["prompt"] for r in records}
    other = generate_pool(args.served_train, seed=args.seed + 7919)
    train = [r for r in other if r["prompt"] not in seen]  # disjoint from every prompt the bench scores
    cfg = LMClassifierConfig(hidden_size=64, num_layers=2, intermediate_size=128, max_length=1536,
                             steps=args.served_steps, batch_size=8, lr=5e-3, seed=args.seed)
    out: dict = {"served_train_records": len(train), "served_train_overlap_removed": len(other) - len(train)}
    with tempfile.TemporaryDirectory(prefix="bench-served-") as work:
        work = Path(work)
        t0 = time.time()
        lab = train_lm_classifier([r["prompt"] for r in train], {d: [r["true_labels"][d] for r in train] for d in DIMS},
                                  work / "labeler", taxonomy=taxonomy, config=cfg,
                                  messages_fn=lambda p: label_messages(p, taxonomy, DIMS, examples_per_leaf=0))
        out["served_train_s"] = round(time.time() - t0, 1)
        log(f"served labeler trained on {len(train)} in {out['served_train_s']}s (loss {lab.manifest['final_loss']})")
        asked = records[:args.served_prompts]  # the pool's order is random: a random subset
        write_jsonl(work / "pool.jsonl", [{"id": r["_id"], "prompt": r["prompt"]} for r in asked])
        llm = LLMConfig(api_key="local", structured_attempts=1, max_attempts=2, max_concurrency=32, progress=False,
                        timeout_s=600)
        with running_server(work / "labeler") as url:
            t0 = time.time()
            p = Pipeline(work / "run", llm=llm, progress=False).source("pool", work / "pool.jsonl", id_field="id")
            p.step("votes", "llm_label", {"models": [{"name": "served-tiny", "llm": {"base_url": url, "model": "tiny"}}],
                                          "dimensions": DIMS, "examples_per_leaf": 0, "temperature": 0.0,
                                          "max_tokens": lab.max_new_tokens})
            got = {r["_id"]: r["label_votes"] for r in p.run(console_print=log).records("votes")}
            out["served_label_s"] = round(time.time() - t0, 1)
    k = len(asked)
    votes = [got[r["_id"]][0] for r in asked]
    right = lambda rs, labs: sum(lab.get(d) == r["true_labels"][d] for r, lab in zip(rs, labs) for d in DIMS)  # noqa: E731
    out["served_prompts"] = k
    out["served_single_vote_accuracy"] = round(right(asked, [v["labels"] or {} for v in votes]) / (k * len(DIMS)), 4)
    out["served_accuracy_per_dim"] = {d: round(sum((v["labels"] or {}).get(d) == r["true_labels"][d]
                                                   for r, v in zip(asked, votes)) / k, 4) for d in DIMS}
    out["served_failed_votes"] = sum(v["labels"] is None for v in votes)
    out["served_votes_with_problems"] = sum(bool(v["error"]) for v in votes)
    joined = [{**r, "label_votes": r["label_votes"] + [v]} for r, v in zip(asked, votes)] + records[k:]
    for m in ("majority", "dawid_skene"):  # aggregated over the whole pool; scored on all and on the asked part
        with_served = [a["labels"] for a in aggregate_records(joined, taxonomy, method=m, dimensions=DIMS)]
        without = [a["labels"] for a in aggregate_records(records, taxonomy, method=m, dimensions=DIMS)]
        out[f"{m}_accuracy_with_served"] = round(right(records, with_served) / (len(records) * len(DIMS)), 4)
        out[f"{m}_accuracy_with_served_on_asked"] = round(right(asked, with_served[:k]) / (k * len(DIMS)), 4)
        out[f"{m}_accuracy_without_served_on_asked"] = round(right(asked, without[:k]) / (k * len(DIMS)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="Prompts in the pool.")
    ap.add_argument("--test-share", type=float, default=0.3)
    ap.add_argument("--queue-share", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the embedding (2: the 2-core target).")
    ap.add_argument("--C", type=float, default=10.0, help="Inverse regularization of every logistic-regression head.")
    ap.add_argument("--embed-cache", default=None, help="An .npz keeping the MiniLM embeddings between runs.")
    ap.add_argument("--no-lm", action="store_true", help="Skip the LM classifier and the served labeler (quick run).")
    ap.add_argument("--lm-steps", type=int, default=1200, help="Optimizer steps of the LM classifier.")
    ap.add_argument("--served-train", type=int, default=1000, help="Prompts of the second pool labeler (a) learns.")
    ap.add_argument("--served-steps", type=int, default=400, help="Optimizer steps of labeler (a).")
    ap.add_argument("--served-prompts", type=int, default=300, help="Prompts of the pool labeler (a) is asked "
                    "about (its ~1,000-token labeling prompt makes each request slow on the CPU).")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    taxonomy = load_taxonomy()
    t0 = time.time()
    pool = generate_pool(args.n, seed=args.seed)
    records = simulate_votes(pool, taxonomy, args.seed + 1)
    metrics, voted = vote_metrics(records, taxonomy, args.queue_share)
    log(json.dumps(metrics))
    metrics |= classifier_metrics(voted, args.test_share, args.seed, args.C, args.embed_cache)
    if not args.no_lm:
        metrics |= lm_classifier_metrics(voted, args.test_share, args.seed, args.lm_steps)
        log(json.dumps({k: v for k, v in metrics.items() if k.startswith("lm_")}))
        metrics |= served_labeler_metrics(records, taxonomy, args)
    metrics["targets_met"] = {
        "dawid_skene>=majority>=single": metrics["dawid_skene_accuracy"] >= metrics["majority_accuracy"]
        >= metrics["single_vote_accuracy"],
        "classifier_f1>=0.90_all": all(v >= 0.9 for v in metrics["classifier_macro_f1"].values()),
        "classifier>tfidf_all": all(metrics["classifier_macro_f1"][d] > metrics["tfidf_macro_f1"][d] for d in DIMS),
        "queue_capture>=0.40": metrics["review_queue_error_capture"] >= 0.4,
    }
    if not args.no_lm:  # the report's comparison, here: the fine-tuned LM against the embedding classifier
        metrics["lm_vs_classifier_macro_f1"] = {d: round(metrics["lm_macro_f1"][d] - metrics["classifier_macro_f1"][d], 4)
                                                for d in DIMS}
    metrics |= {"n": args.n, "seed": args.seed, "threads": args.threads, "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
