"""The distilled prompt classifier as a fine-tuned small causal LM (report section 3.1.1: "we fine-tuned a
specialized automatic prompt labeling model based on Baichuan2-13B and the label data ... In contrast, a
fine-tuned BERT model only reached an accuracy of 81%") -- the second option beside the embedding classifier
of :mod:`novalign.flywheel.classify`, so that comparison can be rerun here.

There is no hub here, so the model is a tiny Llama built and trained with novalign's own tools:
:func:`novalign.models.tiny.init_tiny_model` (a byte-level BPE tokenizer trained on the training prompts and
label replies, and random weights) and :func:`novalign.train.sft.run_sft` (typed :class:`~novalign.config.SFTConfig`)
on "prompt -> labels" chats: the user turn is the prompt under a short fixed instruction, the assistant turn
the compact JSON of the labels (``{"ability":"Math","attributes":"algebra",...}``, dimensions in taxonomy
order). Prediction is batched greedy generation (:func:`novalign.models.generate.generate_batch`); the reply is
parsed exactly as ``llm_label`` parses a vote (:func:`novalign.llm.structured.extract_json`, then
:func:`novalign.flywheel.labels.parse_vote`): no JSON, a missing dimension or a value that is no
leaf of the taxonomy leaves that dimension unlabeled and is counted, never mapped to a near label.

A label's confidence is the model's own probability of the label's tokens in its reply (one teacher-forced
forward pass over prompt + reply): the product of the probabilities of the tokens that overlap the value's
characters.

A saved LM classifier is a normal model folder (``from_pretrained``-loadable, servable by ``novalign serve``)
plus ``lm_classifier.json``: kind, dimensions, instruction, taxonomy digest, training size and settings.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import Field

from novalign.config.base import Strict

__all__ = ["LMClassifierConfig", "LMClassifier", "LMPrediction", "MANIFEST", "label_json", "lm_messages",
           "parse_reply", "train_lm_classifier", "load_lm_classifier", "is_lm_classifier", "load_any_classifier",
           "train_lm_from_file", "classify_lm_file"]

MANIFEST = "lm_classifier.json"
FORMAT = 1


class LMClassifierConfig(Strict):
    """Size, training and prediction settings of the LM classifier (defaults: a ~0.6M-parameter Llama that
    learns a pool of a few thousand prompts in a few CPU minutes)."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=8)
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary (256 bytes + merges + special tokens).")
    max_length: int = Field(1024, ge=32, description="Longest tokenized training chat; longer ones are errors.")
    steps: int = Field(600, ge=1, description="Optimizer steps.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (cosine decay, tiny models train at ~1e-3..2e-2).")
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    batch_size: int = Field(32, ge=1, description="Chats per optimizer step (padded, not packed).")
    seed: int = Field(0)
    instruction: str = Field("Label this prompt:", description="Fixed line above the prompt in the user turn "
                             "('' for the bare prompt).")
    predict_batch_size: int = Field(64, ge=1, description="Prompts per batched greedy generation.")
    threads: int = Field(1, ge=1, description="torch threads while training and predicting: a model this small "
                         "gains little from more, and on shared cores their spin-waits cost more than they give "
                         "(measured: 50 steps took 611 s with 2 threads at load 12 on 2 cores).")


class _threads:
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after it."""

    def __init__(self, n: int):
        self.n, self.before = n, None

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def lm_messages(prompt: str, instruction: str) -> list[dict]:
    """The user turn the LM classifier sees for ``prompt``."""
    return [{"role": "user", "content": f"{instruction}\n{prompt}" if instruction else prompt}]


def label_json(labels: dict[str, str], dims: Sequence[str]) -> str:
    """The compact JSON reply the model is trained to write: ``{"ability":"Math","language":"en"}``."""
    return json.dumps({d: labels[d] for d in dims}, separators=(",", ":"), ensure_ascii=False)


def parse_reply(text: str, taxonomy, dims: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """A generated reply -> ``({dim: leaf or None}, problems)``, the parse ``llm_label`` applies to a vote."""
    from novalign.flywheel.labels import parse_vote
    from novalign.llm.structured import extract_json

    try:
        value = extract_json(text)
    except ValueError as exc:
        return {d: None for d in dims}, [f"parse: {exc}"]
    return parse_vote(value, taxonomy, dims)


@dataclass
class LMPrediction:
    """Per text: labels (``None`` where the reply gave none usable), confidences, problems, the raw reply."""

    labels: list[dict[str, str | None]]
    confidence: list[dict[str, float]]
    problems: list[list[str]]
    replies: list[str]
    seconds: float = 0.0

    def failures(self) -> dict[str, Any]:
        """Counts: replies with any problem, unparsable replies, and unlabeled (text, dimension) cells."""
        return {"replies": len(self.replies), "replies_with_problems": sum(bool(p) for p in self.problems),
                "unparsable": sum(any(x.startswith("parse:") for x in p) for p in self.problems),
                "unlabeled_cells": sum(v is None for lab in self.labels for v in lab.values())}


@dataclass
class LMClassifier:
    model: Any
    tokenizer: Any
    dims: list[str]
    taxonomy: Any
    instruction: str
    max_new_tokens: int
    manifest: dict[str, Any] = field(default_factory=dict)
    predict_batch_size: int = 64
    threads: int = 1

    def prompt_ids(self, text: str) -> list[int]:
        from novalign.models.generate import encode_chat

        return encode_chat(self.tokenizer, lm_messages(text, self.instruction))

    def predict_detailed(self, texts: Sequence[str], progress: bool = False) -> LMPrediction:
        """Greedy replies for ``texts`` (batched by length), parsed and scored."""
        with _threads(self.threads):
            return self._predict(texts, progress)

    def _predict(self, texts: Sequence[str], progress: bool) -> LMPrediction:
        from novalign.models.generate import GenerationRequest, generate_batch

        started = time.time()
        ids = [self.prompt_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        replies: list[str] = [""] * len(texts)
        gen: list[list[int]] = [[] for _ in texts]
        with _progress_bar(len(texts), progress) as advance:
            for start in range(0, len(order), self.predict_batch_size):
                idx = order[start:start + self.predict_batch_size]
                rows = [GenerationRequest(ids[i], max_new_tokens=self.max_new_tokens) for i in idx]
                for i, out in zip(idx, generate_batch(self.model, self.tokenizer, rows)):
                    replies[i], gen[i] = out.text, out.token_ids
                advance(len(idx))
        labels, problems, conf = [], [], []
        for start in range(0, len(order), self.predict_batch_size):
            idx = order[start:start + self.predict_batch_size]
            token_p = _token_probs(self.model, [ids[i] for i in idx], [gen[i] for i in idx])
            for i, probs in zip(idx, token_p):
                lab, prob = parse_reply(replies[i], self.taxonomy, self.dims)
                labels.append((i, lab))
                problems.append((i, prob))
                conf.append((i, _value_confidence(self.tokenizer, gen[i], probs, lab)))
        by = lambda pairs: [v for _, v in sorted(pairs, key=lambda p: p[0])]  # noqa: E731
        return LMPrediction(by(labels), by(conf), by(problems), replies, round(time.time() - started, 3))

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[dict[str, tuple[str, float]]]:
        """Per text ``{dim: (label, confidence)}`` as :class:`~novalign.flywheel.classify.PromptClassifier`
        gives; a dimension the reply left unlabeled is absent (see :meth:`predict_detailed` for the counts)."""
        p = self.predict_detailed(texts, progress=progress)
        return [{d: (v, c[d]) for d, v in lab.items() if v is not None} for lab, c in zip(p.labels, p.confidence)]


class _progress_bar:
    """A rich progress bar on stderr over the prompts labeled (transient; nothing when ``show`` is false)."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self.bar = total, show, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.show:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("LM classifier"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("classify", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _token_probs(model, prompts: Sequence[list[int]], replies: Sequence[list[int]]) -> list[list[float]]:
    """The model's probability of each reply token after its prompt (one right-padded forward pass)."""
    import torch

    if not any(replies):
        return [[] for _ in replies]
    seqs = [p + r for p, r in zip(prompts, replies)]
    width = max(map(len, seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, (p, r) in enumerate(zip(prompts, replies)):
        pos = torch.arange(len(p) - 1, len(p) - 1 + len(r))  # logits at t predict token t + 1
        out.append(logp[i, pos, torch.tensor(r, dtype=torch.long)].exp().tolist() if r else [])
    return out


def _value_confidence(tokenizer, reply_ids: Sequence[int], probs: Sequence[float],
                      labels: dict[str, str | None]) -> dict[str, float]:
    """Per labeled dimension, the product of the probabilities of the reply tokens overlapping the value's
    characters in ``"dim":"value"``. By hand: tokens '{"a":"' (p 0.9), 'Ma' (0.5), 'th' (0.8), '"}' (1.0)
    with labels {a: Math}: the value spans characters 6-10, tokens 2 and 3 overlap it -> 0.5 * 0.8 = 0.4."""
    ends, text = [], ""
    for j in range(len(reply_ids)):  # character end of every token prefix (byte-level BPE: decode prefixes)
        text = tokenizer.decode(list(reply_ids[:j + 1]), skip_special_tokens=True)
        ends.append(len(text))
    out = {}
    for d, v in labels.items():
        if v is None:
            continue
        m = re.search(r'"%s"\s*:\s*"(%s)"' % (re.escape(d), re.escape(v)), text)
        if m is None:
            out[d] = 0.0
            continue
        lo, hi = m.span(1)
        p, begin = 1.0, 0
        for end, q in zip(ends, probs):
            if end > lo and begin < hi:
                p *= q
            begin = end
        out[d] = round(p, 6)
    return out


def _conversations(texts: Sequence[str], labels: dict[str, Sequence[str | None]], dims: Sequence[str],
                   messages_fn: Callable[[str], list[dict]]) -> tuple[list[list[dict]], list[int]]:
    """Training chats of the texts labeled on every dimension, and the indices of those that are not (they
    are counted in the manifest: a reply without a dimension would teach the model to leave it out)."""
    convs, incomplete = [], []
    for i, t in enumerate(texts):
        row = {d: labels[d][i] for d in dims}
        if any(v is None for v in row.values()):
            incomplete.append(i)
            continue
        convs.append(messages_fn(t) + [{"role": "assistant", "content": label_json(row, dims)}])
    return convs, incomplete


def _check_labels(texts: Sequence[str], labels: dict[str, Sequence[str | None]], taxonomy) -> None:
    for d, ys in labels.items():
        if d not in taxonomy.dimensions:
            raise ValueError(f"LM classifier: unknown dimension {d!r} (taxonomy has {list(taxonomy.dimensions)})")
        if len(ys) != len(texts):
            raise ValueError(f"LM classifier: {d}: {len(ys)} labels for {len(texts)} texts")
        bad = sorted({y for y in ys if y is not None and y not in taxonomy.leaves(d)})
        if bad:
            raise ValueError(f"LM classifier: {d}: labels {bad[:5]} are no leaves of the taxonomy")


def _sft_config(cfg: LMClassifierConfig, base: Path, data: Path, out: Path, n: int):
    from novalign.config import SFTConfig

    return SFTConfig.model_validate({
        "output_dir": str(out), "model": {"path": str(base)},
        "data": {"train_files": [str(data)], "max_length": cfg.max_length},
        "packing": {"enabled": False},
        "optim": {"lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio, "schedule": "cosine", "weight_decay": 0.0},
        "train": {"max_steps": cfg.steps, "micro_batch_size": min(cfg.batch_size, n), "grad_accum": 1,
                  "seed": cfg.seed, "device": "cpu", "progress": False, "tensorboard": False, "save_every": 0,
                  "resume": False, "log_every": max(1, cfg.steps // 10)},
    })


def train_lm_classifier(texts: Sequence[str], labels: dict[str, Sequence[str | None]], out_dir: str | Path, *,
                        taxonomy=None, config: LMClassifierConfig | None = None,
                        messages_fn: Callable[[str], list[dict]] | None = None,
                        console_print: Callable = lambda *a, **k: None) -> LMClassifier:
    """Train the LM classifier on ``labels`` (dim -> one label per text) and save it to ``out_dir``.

    ``messages_fn`` (text -> the chat before the reply) replaces the instruction + prompt user turn, e.g.
    with ``llm_label``'s labeling prompt to serve the model as a labeler; such a folder is a model for
    ``novalign serve``, not a classifier :func:`load_lm_classifier` loads (its manifest says ``prompt_format:
    custom``)."""
    from novalign.flywheel.taxonomy import load_taxonomy
    from novalign.models.load import load_model, load_tokenizer, save_pretrained_dir
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    cfg = config or LMClassifierConfig()
    tax = taxonomy if taxonomy is not None else load_taxonomy()
    _check_labels(texts, labels, tax)
    dims = [d for d in tax.dimensions if d in labels]
    if not dims:
        raise ValueError("LM classifier: no dimensions to learn")
    custom = messages_fn is not None
    convs, incomplete = _conversations(texts, labels, dims, messages_fn or (lambda t: lm_messages(t, cfg.instruction)))
    if not convs:
        raise ValueError(f"LM classifier: none of the {len(texts)} texts is labeled on every dimension {dims}")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lm-classifier-") as work:
        work = Path(work)
        corpus = [m["content"] for c in convs for m in c] * 2  # BPE keeps merges seen at least twice
        base = init_tiny_model(work / "base", seed=cfg.seed, texts=corpus, vocab_size=cfg.vocab_size,
                               hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                               num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
                               max_position_embeddings=cfg.max_length)
        data = work / "chats.jsonl"
        data.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs))
        with _threads(cfg.threads):
            result = run_sft(_sft_config(cfg, base, data, work / "sft", len(convs)), console_print=console_print)
        model_dir = work / "sft" / "model"
        model, tokenizer = load_model(model_dir, dtype="float32"), load_tokenizer(model_dir)
        out = save_pretrained_dir(model, tokenizer, out_dir)
    longest = max(len(tokenizer(c[-1]["content"], add_special_tokens=False)["input_ids"]) for c in convs)
    manifest = {"kind": "lm", "format": FORMAT, "dims": dims, "instruction": cfg.instruction,
                "prompt_format": "custom" if custom else "instruction",
                "taxonomy_digest": tax.digest, "max_new_tokens": longest + 8, "train_records": len(convs),
                "skipped_incomplete": len(incomplete), "train_s": round(time.time() - started, 2),
                "final_loss": _final_loss(result), "config": cfg.model_dump()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return LMClassifier(model, tokenizer, dims, tax, cfg.instruction, longest + 8, manifest, cfg.predict_batch_size,
                        cfg.threads)


def _final_loss(result) -> float | None:
    return None if result.final_loss is None else round(float(result.final_loss), 4)


def is_lm_classifier(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_lm_classifier(folder: str | Path, taxonomy=None) -> LMClassifier:
    """Load a saved LM classifier; ``taxonomy`` (default: the bundled one) must be the one it was trained
    with (same digest), since its replies are checked against that taxonomy's leaves."""
    from novalign.flywheel.taxonomy import load_taxonomy
    from novalign.models.load import load_model, load_tokenizer

    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such LM classifier folder; train one with "
                                "`novalign data train-classifier --kind lm`")
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an LM classifier folder (no {MANIFEST})")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    for key in ("kind", "dims", "instruction", "taxonomy_digest", "max_new_tokens"):
        if key not in info:
            raise ValueError(f"{path}: field {key!r} is missing")
    if info["kind"] != "lm" or info.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'kind'/'format' is {info['kind']!r}/{info.get('format')!r}, "
                         f"expected 'lm'/{FORMAT}")
    if info.get("prompt_format", "instruction") != "instruction":
        raise ValueError(f"{path}: field 'prompt_format' is {info['prompt_format']!r}: this model was trained on "
                         "prompts built by its caller (e.g. to be served as a labeler), not as a classifier")
    tax = taxonomy if taxonomy is not None else load_taxonomy()
    if info["taxonomy_digest"] != tax.digest:
        raise ValueError(f"{path}: field 'taxonomy_digest': the classifier was trained with taxonomy "
                         f"{info['taxonomy_digest']}, the taxonomy given has digest {tax.digest}; pass the "
                         "taxonomy it was trained with, or retrain it")
    unknown = [d for d in info["dims"] if d not in tax.dimensions]
    if unknown:
        raise ValueError(f"{path}: field 'dims': {unknown} are not dimensions of the taxonomy")
    model, tokenizer = load_model(folder, dtype="float32"), load_tokenizer(folder)
    settings = info.get("config", {})
    return LMClassifier(model, tokenizer, list(info["dims"]), tax, info["instruction"], int(info["max_new_tokens"]),
                        info, int(settings.get("predict_batch_size", 64)), int(settings.get("threads", 1)))


def load_any_classifier(folder: str | Path, taxonomy=None):
    """The saved classifier in ``folder``, whichever kind (LM: ``lm_classifier.json``; embedding:
    ``classifier.json``)."""
    if is_lm_classifier(folder):
        return load_lm_classifier(folder, taxonomy)
    from novalign.flywheel.classify import load_classifier

    return load_classifier(folder)


# ------------------------------------------------------------------- `novalign data train-classifier --kind lm`


def train_lm_from_file(input_path: str | Path, out_dir: str | Path, *, field: str = "labels",
                       true_field: str | None = None, test_share: float = 0.2, taxonomy: str | None = None,
                       dims: Sequence[str] | None = None, config: LMClassifierConfig | None = None,
                       prompt_field: str = "prompt", progress: bool = True) -> dict:
    """Train the LM classifier on the labels at ``field`` of ``input_path``'s records and save it to
    ``out_dir`` (``dims``: default, every dimension some record is labeled on). With ``test_share > 0`` the saved model is the one trained on the other records and scored
    on the held-out ones (against ``field`` and ``true_field``), beside the TF-IDF baseline of the same
    split; unlike the embedding classifier it is not refit on everything (that would double the training)."""
    from novalign.data.io import iter_records
    from novalign.flywheel.classify import scores, tfidf_baseline
    from novalign.flywheel.labels import get_path
    from novalign.flywheel.taxonomy import load_taxonomy
    from novalign.world.prompt_pool import split

    tax = load_taxonomy(taxonomy)
    records = [r for _, r in iter_records(input_path)]
    if not dims:  # the dimensions the records carry labels on (a reply must hold every dimension learned)
        dims = [d for d in tax.dimensions if any(get_path(r, f"{field}.{d}") is not None for r in records)]
    dims = list(dims)
    cfg = config or LMClassifierConfig()
    train, test = split(records, [1 - test_share, test_share], seed=cfg.seed) if test_share > 0 else (records, [])
    text = lambda rs: [str(r[prompt_field]) for r in rs]  # noqa: E731
    labels_of = lambda rs, f: {d: [get_path(r, f"{f}.{d}") for r in rs] for d in dims}  # noqa: E731
    clf = train_lm_classifier(text(train), labels_of(train, field), out_dir, taxonomy=tax, config=cfg)
    metrics: dict[str, Any] = {"kind": "lm", "train": len(train), "test": len(test), "dims": dims,
                               "train_records": clf.manifest["train_records"],
                               "skipped_incomplete": clf.manifest["skipped_incomplete"],
                               "train_s": clf.manifest["train_s"]}
    if test:
        pred = clf.predict_detailed(text(test), progress=progress)
        base = tfidf_baseline(text(train), labels_of(train, field), text(test), seed=cfg.seed)
        metrics["failures"] = pred.failures()
        for name, ref in [("vs_labels", field)] + ([("vs_true", true_field)] if true_field else []):
            gold = labels_of(test, ref)
            metrics[name] = {d: {"lm_classifier": scores([p[d] for p in pred.labels], gold[d]),
                                 "tfidf": scores(base[d], gold[d])} for d in dims}
    clf.manifest["metrics"] = metrics
    (Path(out_dir) / MANIFEST).write_text(json.dumps(clf.manifest, indent=2, ensure_ascii=False) + "\n")
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def classify_lm_file(input_path: str | Path, output: str | Path, model: str | Path, *, overwrite: bool = False,
                     prompt_field: str = "prompt", taxonomy: str | None = None, progress: bool = True) -> dict:
    """Label every record of ``input_path`` with the LM classifier in ``model`` (as the ``classify`` step
    does: ``labels``, ``label_confidence``, ``label_source`` 'lm_classifier'; without ``overwrite`` only the
    dimensions a record lacks). Dimensions the replies left unlabeled stay unlabeled and are counted."""
    from novalign.data.io import iter_records, write_jsonl
    from novalign.flywheel.taxonomy import load_taxonomy

    clf = load_lm_classifier(model, load_taxonomy(taxonomy) if taxonomy else None)
    records = [r for _, r in iter_records(input_path)]
    pred = clf.predict_detailed([str(r[prompt_field]) for r in records], progress=progress)
    out = []
    for r, lab, conf in zip(records, pred.labels, pred.confidence):
        labels, confidence = dict(r.get("labels") or {}), dict(r.get("label_confidence") or {})
        source = dict(r.get("label_source") or {})
        for d, v in lab.items():
            if v is not None and (overwrite or labels.get(d) is None):
                labels[d], confidence[d], source[d] = v, conf[d], "lm_classifier"
        out.append({**r, "labels": labels, "label_confidence": confidence, "label_source": source})
    write_jsonl(output, out)
    return {"kind": "lm", "records": len(out), "seconds": pred.seconds,
            "prompts_per_s": round(len(out) / pred.seconds, 1) if pred.seconds else None,
            "failures": pred.failures(), "output": str(output)}
