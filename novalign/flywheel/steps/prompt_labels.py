"""Steps of the prompt system (report section 3.1.1, and the label filters of 3.3):

* ``llm_label`` -- k labelers (several models, n samples each) label every prompt on every dimension through
  JSON structured output (the client re-asks with the error); each vote is kept, a failed or unparsable one
  as ``labels: null`` with its error, a value that is no leaf as null on that dimension (counted);
* ``label_vote`` -- majority or Dawid-Skene per dimension over all records (:mod:`novalign.flywheel.labels`);
* ``label_corrections`` -- human labels from annotation results win over the votes;
* ``classify`` -- the distilled classifier (:mod:`novalign.flywheel.classify`) labels records without an LLM;
* ``label_filter`` -- keep / drop by label and confidence; ``label_balance`` -- resample to target shares of
  one label dimension (``stratum_counts`` of the ``balance`` step).

Label fields are dotted paths (``labels.ability``), so these steps also work on labels from elsewhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.config.pipeline import ModelQuotaConfig
from novalign.flywheel.labels import aggregate_records, apply_corrections, get_path, parse_vote  # parse_vote re-exported
from novalign.flywheel.step import TEXT, Outcome, Step, drop, keep, register, text_of
from novalign.flywheel.steps.llm import _LLMStep, _add_usage, _usage, ask_models_concurrently, llm_identity, merged_llm
from novalign.flywheel.steps.sampling import stratum_counts
from novalign.flywheel.taxonomy import load_taxonomy

__all__ = ["label_messages", "parse_vote", "LLMLabel", "LabelVote", "LabelCorrections", "Classify", "LabelFilter",
           "LabelBalance"]


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- llm_label


class LLMLabelConfig(Strict):
    """k labelers vote on every dimension of the taxonomy for each prompt."""

    prompt_field: str = Field("prompt", description="The prompt (a string, or chat messages: their contents).")
    taxonomy: str | None = Field(None, description="Taxonomy YAML (default: the bundled one).")
    dimensions: list[str] | None = Field(None, description="Dimensions to label (default: all of the taxonomy).")
    models: list[ModelQuotaConfig] = Field(..., min_length=1, description="The labelers; n samples each.")
    n: int = Field(1, ge=1, description="Votes per model (each a separate request, sample_index 0..n-1).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (votes of one model differ only above 0).")
    max_tokens: int | None = Field(256, ge=1)
    examples_per_leaf: int = Field(1, ge=0, description="Examples per leaf shown in the labeling prompt.")
    output_field: str = Field("label_votes", description="Field the list of votes is written to.")


def label_messages(prompt: str, taxonomy, dims: Sequence[str], examples_per_leaf: int = 1) -> list[dict]:
    """The labeling conversation: the definitions and examples of the dimensions asked (only those), the
    prompt, the JSON wanted. Pure: tests render with it the exact prompts a served model must answer."""
    keys = ", ".join(f'"{d}"' for d in dims)
    system = ("You label user prompts with a taxonomy. For each dimension choose exactly one leaf label from the "
              "list below (use the label name as written).\n\n" + taxonomy.prompt_section(examples_per_leaf, dims))
    user = (f"Prompt to label:\n<<<\n{prompt}\n>>>\n\nAnswer with one JSON object with the keys {keys}, each "
            "set to one leaf label name, and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@register
class LLMLabel(_LLMStep):
    type = "llm_label"
    Config = LLMLabelConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.taxonomy = load_taxonomy(config.taxonomy)
        self.dims = config.dimensions or list(self.taxonomy.dimensions)
        unknown = [d for d in self.dims if d not in self.taxonomy.dimensions]
        if unknown:
            raise ValueError(f"llm_label: unknown dimensions {unknown} (taxonomy has {list(self.taxonomy.dimensions)})")
        self.model_llm = {m.name: merged_llm(self.default_llm, m.llm, f"llm_label model {m.name!r}")
                          for m in config.models}

    def identity(self):
        return super().identity() | {"llm": {k: llm_identity(v) for k, v in self.model_llm.items()},
                                     "taxonomy": self.taxonomy.digest}

    def input_fields(self):
        return {self.config.prompt_field: TEXT}

    def output_fields(self):
        return [self.config.output_field]

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        from novalign.llm.types import ChatRequest

        c = self.config
        plans: dict[str, list] = {}
        expected: dict[str, int] = {r["_id"]: 0 for _, r in items}
        for pos, r in items:
            messages = label_messages(text_of(r[c.prompt_field]), self.taxonomy, self.dims, c.examples_per_leaf)
            for m in c.models:
                if m.max_prompts is not None and pos >= m.max_prompts:  # this labeler's quota: the first prompts
                    continue
                for k in range(m.n or c.n):
                    plans.setdefault(m.name, []).append(ChatRequest(
                        messages=messages, temperature=c.temperature, max_tokens=c.max_tokens, json_mode=True,
                        sample_index=k, tag=(r["_id"], m.name, k)))
                    expected[r["_id"]] += 1
        records = {r["_id"]: r for _, r in items}
        for rid in [rid for rid, n in expected.items() if n == 0]:  # past every labeler's quota: no votes
            yield self._outcome(records[rid], [], {})
        clients = {name: self._client(name, self.model_llm[name]) for name in plans}
        got: dict[str, list] = {}
        for name, result in ask_models_concurrently(clients, plans):
            rid = result.request.tag[0]
            got.setdefault(rid, []).append(result)
            if len(got[rid]) == expected[rid]:  # a record's votes are all in: out it goes
                yield self._outcome(records[rid], got.pop(rid), clients)

    def _outcome(self, record: dict, results: list, clients: dict) -> Outcome:
        order = {m.name: i for i, m in enumerate(self.config.models)}
        results = sorted(results, key=lambda res: (order[res.request.tag[1]], res.request.tag[2]))  # labeler order
        usage: dict = {}
        for res in results:
            usage = _add_usage(usage, _usage(clients[res.request.tag[1]], res))
        votes = [self._vote(res.request.tag[1], res.request.tag[2], res) for res in results]
        return {"_id": record["_id"], "out": [{**record, self.config.output_field: votes}], "drop": None,
                "detail": None, "usage": usage}

    def _vote(self, model: str, k: int, result) -> dict:
        labeler = f"{model}/{k}"
        if not result.ok:
            return {"labeler": labeler, "labels": None, "error": f"{result.kind}: {result.reason}"[:300]}
        labels, problems = parse_vote(result.choices[0].parsed, self.taxonomy, self.dims)
        return {"labeler": labeler, "labels": labels, "error": "; ".join(problems) or None}


# ----------------------------------------------------------------------------------------------- label_vote


class LabelVoteConfig(Strict):
    """Aggregate the votes per dimension (majority or Dawid-Skene), with a confidence per label."""

    taxonomy: str | None = Field(None, description="Taxonomy YAML (default: the bundled one).")
    votes_field: str = Field("label_votes", description="The votes (llm_label's output).")
    method: Literal["dawid_skene", "majority"] = Field("dawid_skene")
    dimensions: list[str] | None = Field(None, description="Dimensions to aggregate (default: all).")
    smoothing: float = Field(0.01, ge=0, description="Dawid-Skene pseudo-count per confusion cell.")
    output_field: str = Field("labels", description="Field of the aggregated labels; label_confidence beside it.")


@register
class LabelVote(Step):
    type = "label_vote"
    Config = LabelVoteConfig
    mode = "global"

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.taxonomy = load_taxonomy(config.taxonomy)

    def identity(self):
        return super().identity() | {"taxonomy": self.taxonomy.digest}

    def input_fields(self):
        return {self.config.votes_field: (list,)}

    def output_fields(self):
        return [self.config.output_field, "label_confidence", "label_votes_valid", "label_votes_failed"]

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        agg = aggregate_records(records, self.taxonomy, votes_field=c.votes_field, method=c.method,
                                dimensions=c.dimensions, smoothing=c.smoothing)
        out = []
        for r, a in zip(records, agg, strict=True):
            a[c.output_field] = a.pop("labels")
            out.append(keep(r, **a, label_method=c.method))
        return out


# ---------------------------------------------------------------------------------------- label_corrections


class LabelCorrectionsConfig(Strict):
    """Human label corrections (annotation results of kind `labels`) win over the voted labels."""

    results: list[str] = Field(..., min_length=1, description="Annotation result files (novalign.data.annotation).")
    taxonomy: str | None = Field(None, description="Taxonomy YAML the corrections are checked against.")
    labels_field: str = Field("labels")


@register
class LabelCorrections(Step):
    type = "label_corrections"
    Config = LabelCorrectionsConfig
    mode = "global"

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.taxonomy = load_taxonomy(config.taxonomy)

    def identity(self):  # the results' content: a new correction file reruns the step
        return super().identity() | {"results_sha": [_file_digest(p) for p in self.config.results],
                                     "taxonomy": self.taxonomy.digest}

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        from novalign.data.annotation import read_results

        for p in self.config.results:  # file by file: a later file's correction wins
            got, _ = read_results([p])
            records, _ = apply_corrections(records, got, self.taxonomy, path=p, labels_field=self.config.labels_field)
        return [keep(r) for r in records]


# ------------------------------------------------------------------------------------------------- classify


class ClassifyConfig(Strict):
    """Label records with a trained prompt classifier (novalign data train-classifier)."""

    model: str = Field(..., description="The classifier folder.")
    prompt_field: str = Field("prompt")
    output_field: str = Field("labels")
    overwrite: bool = Field(False, description="Replace labels already on the record (false: fill only the "
                            "dimensions it lacks, so voted and human labels stay).")


@register
class Classify(Step):
    type = "classify"
    Config = ClassifyConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.clf = None

    def identity(self):
        folder = Path(self.config.model)  # an embedding classifier's heads, or an LM classifier's weights
        weights = folder / "heads.joblib" if (folder / "heads.joblib").exists() else folder / "model.safetensors"
        return super().identity() | {"model_sha": _file_digest(str(weights))}

    def input_fields(self):
        return {self.config.prompt_field: TEXT}

    def output_fields(self):
        return [self.config.output_field, "label_confidence", "label_source"]

    def open(self) -> None:
        from novalign.flywheel.classify_lm import load_any_classifier

        if self.clf is None:  # either kind: `novalign data train-classifier` or `--kind lm`
            self.clf = load_any_classifier(self.config.model)

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        c = self.config
        self.open()
        records = [r for _, r in items]
        if not records:
            return
        preds = self.clf.predict([text_of(r[c.prompt_field]) for r in records])
        for r, p in zip(records, preds):
            labels, conf = dict(r.get(c.output_field) or {}), dict(r.get("label_confidence") or {})
            source = dict(r.get("label_source") or {})
            for dim, (lab, pr) in p.items():
                if c.overwrite or labels.get(dim) is None:
                    labels[dim], conf[dim], source[dim] = lab, round(pr, 6), "classifier"
            yield keep(r, **{c.output_field: labels, "label_confidence": conf, "label_source": source})


# -------------------------------------------------------------------------------------------- label filters


class LabelFilterConfig(Strict):
    """Keep or drop records by label (report 3.3: drop simple, time-sensitive, meaningless, out-of-ability
    prompts; keep Chinese and English)."""

    field: str = Field("labels", description="The labels object (dotted path).")
    keep: dict[str, list[str]] = Field(default_factory=dict, description="Per dimension: keep only these labels.")
    drop: dict[str, list[str]] = Field(default_factory=dict, description="Per dimension: drop these labels.")
    min_confidence: float | None = Field(None, ge=0, le=1, description="Drop records whose label on a filtered "
                                         "dimension is less confident than this (from label_confidence).")
    missing: Literal["drop", "keep"] = Field("drop", description="A record without a label on a filtered dimension.")


@register
class LabelFilter(Step):
    type = "label_filter"
    Config = LabelFilterConfig

    def process_one(self, record: dict) -> Outcome:
        c = self.config
        labels = get_path(record, c.field) or {}
        conf = record.get("label_confidence") or {}
        for dim in list(c.keep) + [d for d in c.drop if d not in c.keep]:
            value = labels.get(dim)
            if value is None:
                if c.missing == "drop":
                    return drop(record, f"no {dim} label")
                continue
            if dim in c.keep and value not in c.keep[dim]:
                return drop(record, f"{dim} {value} not kept", **{dim: value})
            if value in c.drop.get(dim, []):
                return drop(record, f"{dim} {value} dropped", **{dim: value})
            if c.min_confidence is not None and conf.get(dim, 1.0) < c.min_confidence:
                return drop(record, f"{dim} confidence below {c.min_confidence:g}", confidence=conf.get(dim))
        return keep(record)


class LabelBalanceConfig(Strict):
    """Resample to target shares of one label dimension (as many records as the scarcest share allows)."""

    field: str = Field("labels.ability", description="Dotted path of the label, e.g. labels.language.")
    targets: dict[str, float] | None = Field(None, description="Share per label (normalized); None: equal shares "
                                             "over the labels present. Labels not named are dropped.")
    total: int | None = Field(None, ge=1)
    seed: int = Field(0)


@register
class LabelBalance(Step):
    type = "label_balance"
    Config = LabelBalanceConfig
    mode = "global"

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        strata: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            v = get_path(r, c.field)
            if v is not None:
                strata.setdefault(str(v), []).append(i)
        shares = c.targets if c.targets is not None else {s: 1.0 for s in strata}
        counts = stratum_counts({s: len(v) for s, v in strata.items()}, shares, c.total) if strata else {}
        chosen: set[int] = set()
        for s, members in strata.items():
            if counts.get(s):
                chosen.update(random.Random(f"{c.seed}:{s}").sample(members, counts[s]))
        out = []
        for i, r in enumerate(records):
            v = get_path(r, c.field)
            if i in chosen:
                out.append(keep(r))
            elif v is None:
                out.append(drop(r, f"no {c.field}"))
            else:
                out.append(drop(r, f"{v} not in targets" if str(v) not in counts else f"over the {v} quota"))
        return out
