"""The ``novalign data label / label-import / train-classifier / classify / coverage`` commands: each a plain
function over record files that runs the prompt-system steps (:mod:`novalign.flywheel.steps.prompt_labels`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from novalign.config.llm import LLMConfig
from novalign.data.io import iter_records, write_jsonl
from novalign.flywheel.labels import get_path
from novalign.flywheel.taxonomy import load_taxonomy

__all__ = ["parse_labeler", "label_file", "import_corrections", "train_from_file", "classify_file", "coverage_file"]


def parse_labeler(spec: str) -> dict[str, Any]:
    """``name=model@url``, ``model@url`` or ``model`` -> an ``llm_label`` model entry."""
    name, _, rest = spec.rpartition("=") if "=" in spec else ("", "", spec)
    model, _, url = rest.partition("@")
    if not model:
        raise ValueError(f"labeler {spec!r}: give model, model@url or name=model@url")
    llm: dict[str, Any] = {"model": model}
    if url:
        llm["base_url"] = url
    return {"name": name or model, "llm": llm}


def _records(path: str | Path) -> list[dict]:
    return [r for _, r in iter_records(path)]


def label_file(input_path: str | Path, output: str | Path, labelers: Sequence[str], *, run_dir: str | Path,
               n: int = 1, method: str = "dawid_skene", taxonomy: str | None = None, review_share: float = 0.1,
               review_out: str | Path | None = None, review_unit: str = "label", llm: LLMConfig | None = None, id_field: str | None = None,
               prompt_field: str = "prompt", temperature: float = 0.7, max_tokens: int = 256,
               console_print=print) -> dict:
    """Vote labels for every record of ``input_path`` (llm_label, then label_vote) into ``output``; the
    ``review_share`` least confident go to ``review_out`` as ``labels`` annotation tasks."""
    from novalign.data.annotation import write_tasks
    from novalign.flywheel.labels import review_tasks
    from novalign.flywheel.pipeline import Pipeline

    p = Pipeline(run_dir, llm=llm, progress=False).source("prompts", input_path, id_field=id_field)
    p.step("votes", "llm_label", {"models": [parse_labeler(s) for s in labelers], "n": n, "taxonomy": taxonomy,
                                  "prompt_field": prompt_field, "temperature": temperature, "max_tokens": max_tokens})
    p.step("labels", "label_vote", {"method": method, "taxonomy": taxonomy})
    res = p.run(console_print=console_print)
    records = res.records("labels")
    write_jsonl(output, [{k: v for k, v in r.items() if k != "_id"} | {"id": r["_id"]} for r in records])
    summary = {"records": len(records), "votes_failed": sum(r["label_votes_failed"] for r in records),
               "votes": sum(len(r["label_votes"]) for r in records), "output": str(output)}
    if review_out is not None:
        summary["review_tasks"] = write_tasks(review_out, review_tasks(records, review_share, unit=review_unit,
                                                                        prompt_field=prompt_field))
        summary["review_out"] = str(review_out)
    return summary


def import_corrections(labeled: str | Path, results: Sequence[str | Path], output: str | Path,
                       taxonomy: str | None = None) -> dict:
    """Human label corrections (annotation results) over the voted labels of ``labeled``, into ``output``."""
    from novalign.data.annotation import read_results
    from novalign.flywheel.labels import apply_corrections

    tax = load_taxonomy(taxonomy)
    records = [{**r, "_id": str(r.get("id", r.get("_id")))} for r in _records(labeled)]
    changed = 0
    for path in results:
        got, _ = read_results([path])
        records, k = apply_corrections(records, got, tax, path=str(path))
        changed += k
    write_jsonl(output, [{k: v for k, v in r.items() if k != "_id"} for r in records])
    return {"records": len(records), "corrected": changed, "output": str(output)}


def _labels_of(records: Sequence[dict], field: str, dims: Sequence[str]) -> dict[str, list]:
    return {d: [get_path(r, f"{field}.{d}") for r in records] for d in dims}


def train_from_file(input_path: str | Path, out_dir: str | Path, *, field: str = "labels",
                    true_field: str | None = None, test_share: float = 0.2, taxonomy: str | None = None,
                    dims: Sequence[str] | None = None, char_ngrams: bool = True, seed: int = 0,
                    prompt_field: str = "prompt") -> dict:
    """Train the classifier on the labels at ``field`` (held-out ``test_share`` for the scores, then the
    heads are refit on everything); scores against those labels and, if ``true_field`` is given, against
    the true labels; the TF-IDF baseline on the same split. Writes the classifier and metrics.json."""
    from novalign.flywheel.classify import Embedder, scores, tfidf_baseline, train_classifier
    from novalign.world.prompt_pool import split

    tax = load_taxonomy(taxonomy)
    dims = list(dims or tax.dimensions)
    records = _records(input_path)
    train, test = split(records, [1 - test_share, test_share], seed=seed) if test_share > 0 else (records, [])
    embedder = Embedder()
    text = lambda rs: [str(r[prompt_field]) for r in rs]  # noqa: E731
    metrics: dict[str, Any] = {"train": len(train), "test": len(test), "dims": dims}
    if test:
        clf = train_classifier(text(train), _labels_of(train, field, dims), char_ngrams=char_ngrams, seed=seed,
                               embedder=embedder, taxonomy_digest=tax.digest)
        pred = clf.predict(text(test))
        base = tfidf_baseline(text(train), _labels_of(train, field, dims), text(test), seed=seed)
        for name, ref in [("vs_labels", field)] + ([("vs_true", true_field)] if true_field else []):
            gold = _labels_of(test, ref, dims)
            metrics[name] = {d: {"classifier": scores([p[d][0] for p in pred], gold[d]),
                                 "tfidf": scores(base[d], gold[d])} for d in dims}
    started = time.time()
    final = train_classifier(text(records), _labels_of(records, field, dims), char_ngrams=char_ngrams, seed=seed,
                             embedder=embedder, taxonomy_digest=tax.digest)
    metrics["final_train_s"] = round(time.time() - started, 2)
    final.meta["metrics"] = metrics
    final.save(out_dir)
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def classify_file(input_path: str | Path, output: str | Path, model: str | Path, *, overwrite: bool = False,
                  prompt_field: str = "prompt", batch_size: int = 256) -> dict:
    """Label every record of ``input_path`` with the classifier in ``model`` (the ``classify`` step)."""
    from novalign.flywheel.steps import make_step

    step = make_step("classify", {"model": str(model), "overwrite": overwrite, "prompt_field": prompt_field})
    step.open()
    records = [{**r, "_id": i} for i, r in enumerate(_records(input_path))]
    started, out = time.time(), []
    for start in range(0, len(records), batch_size):
        batch = list(enumerate(records[start:start + batch_size]))
        out.extend(o["out"][0] for o in step.process(batch))
    elapsed = time.time() - started
    write_jsonl(output, [{k: v for k, v in r.items() if k != "_id"} for r in out])
    return {"records": len(out), "seconds": round(elapsed, 2),
            "prompts_per_s": round(len(out) / elapsed, 1) if elapsed else None, "output": str(output)}


def coverage_file(input_path: str | Path, out_dir: str | Path, *, field: str = "labels", taxonomy: str | None = None,
                  min_count: int = 10, crosstabs: Sequence[tuple[str, str]] = (("ability", "language"),
                                                                               ("ability", "difficulty")),
                  targets: dict[str, dict[str, float]] | None = None) -> dict:
    from novalign.flywheel.coverage import write_coverage

    return write_coverage(_records(input_path), load_taxonomy(taxonomy), out_dir, field=field, min_count=min_count,
                          crosstabs=crosstabs, targets=targets)
