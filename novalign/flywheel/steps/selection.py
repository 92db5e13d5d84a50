"""Prompt-selection steps: ``select_diverse`` (task-aware diversity, report 3.1.2) and ``score_quality``
(anchored pairwise quality, report 3.1.3). Both are ``global``: they need every record at once (clusters,
anchors). Kept records get their cluster path / quality scores; the others are dropped with the reason."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from novalign.config.selection import ScoreQualityConfig, SelectDiverseConfig
from novalign.flywheel.step import TEXT, Outcome, Step, drop, keep, register, text_of
from novalign.flywheel.steps.llm import _LLMStep, llm_identity, merged_llm

__all__ = ["SelectDiverse", "ScoreQuality"]


@register
class SelectDiverse(Step):
    """Task-aware diversity selection; the tuned embedder goes to ``model_dir`` (or a temporary folder that is
    removed after the step: steps write no files of the pipeline's)."""

    type = "select_diverse"
    Config = SelectDiverseConfig
    mode = "global"

    def input_fields(self):
        return {self.config.field: TEXT}

    def output_fields(self):
        return ["cluster_path"]

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        from novalign.flywheel.diversity_run import select_diverse

        texts = [text_of(r[self.config.field]) for r in records]
        if self.config.model_dir:
            result = select_diverse(texts, self.config, self.config.model_dir, log=lambda _: None)
        else:
            with tempfile.TemporaryDirectory(prefix="novalign-embedder-") as tmp:
                result = select_diverse(texts, self.config, tmp, log=lambda _: None)
        chosen = set(result.selected)
        return [keep(r, cluster_path=p) if i in chosen else drop(r, "not selected for diversity", cluster_path=p)
                for i, (r, p) in enumerate(zip(records, result.paths))]


@register
class ScoreQuality(_LLMStep):
    """Anchored pairwise quality; ``judges`` are LLM configs over the pipeline's ``llm``."""

    type = "score_quality"
    Config = ScoreQualityConfig
    mode = "global"

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        if not config.judges and not config.scorer:
            raise ValueError("score_quality: give judges (a list of LLM configs, e.g. [{model: a}, {model: b}]) or a "
                             "distilled scorer (scorer: a scorer.json or tiny-LM scorer folder)")
        self.judge_llms = {f"judge{k}": merged_llm(self.default_llm, j, f"score_quality judge {k}")
                           for k, j in enumerate(config.judges)}

    def identity(self):
        from novalign.eval.judge import load_template

        c = self.config
        out = super().identity() | {"llm": {k: llm_identity(v) for k, v in self.judge_llms.items()},
                                    "template_text": load_template(c.template, c.lang, c.template_dir)}
        if c.scorer:  # a retrained scorer at the same path must not reuse the old results
            from novalign.flywheel.quality_run import scorer_digest

            out["scorer_digest"] = scorer_digest(c.scorer)
        return out

    def input_fields(self):
        return {self.config.field: TEXT}

    def output_fields(self):
        return [self.config.output_field]

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        from novalign.flywheel.quality import field_value, score_quality

        c = self.config
        buckets = []
        for r in records:
            try:
                buckets.append(str(field_value(r, c.bucket_field)))
            except KeyError as exc:
                raise ValueError(f"record {r['_id']}: {c.bucket_field}: missing ({exc.args[0]!r} not found)") from None
        strata = None if c.stratify == "length" else [str(field_value(r, c.stratify)) for r in records]
        if c.scorer:  # a distilled scorer in place of the judges: no judge calls
            from novalign.flywheel.quality_run import score_with_scorer

            out, totals = score_with_scorer(c.scorer, [text_of(r[c.field]) for r in records], c), []
        else:
            clients = {k: self._client(k, cfg) for k, cfg in self.judge_llms.items()}
            try:
                out = score_quality([text_of(r[c.field]) for r in records], buckets, clients, c, strata=strata)
                totals = [cl.usage.to_dict()["total"] for cl in clients.values()]
            finally:
                self.close()  # global steps get no open/close from the executor
        from novalign.flywheel.quality import select_by_threshold

        keep_mask = select_by_threshold(out["overall"], buckets, c.thresholds, c.threshold)
        anchors = {a for v in out["anchors"].values() for a in v}
        outcomes = []
        for i, r in enumerate(records):
            value = {"scores": out["scores"][i], "overall": out["overall"][i], "label": out["labels"][i],
                     "bucket": buckets[i], "anchor": i in anchors}
            outcomes.append(keep(r, **{c.output_field: value}) if keep_mask[i] else
                            drop(r, f"below the quality threshold of {buckets[i]}", **{c.output_field: value}))
        if outcomes and totals:  # the step's judge calls, counted once (on the first outcome)
            outcomes[0]["usage"] = {"requests": sum(t["requests"] + t["failed_requests"] for t in totals),
                                    "cached": sum(t["cached_requests"] for t in totals),
                                    "cost": sum(t["cost"] or 0.0 for t in totals)}
        return outcomes
