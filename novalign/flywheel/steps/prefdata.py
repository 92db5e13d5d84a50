"""The preference-data chain's steps (report sections 3.2, 3.3), on group records (see
:mod:`novalign.flywheel.responses` for the record shape):

* ``respond`` (llm): n samples per prompt from each of several models with quotas -> one group per prompt,
  each response with its model and sampling parameters (defaults: the report's 5 samples, T 1, top_p 0.99,
  top_k 50);
* ``autorate`` (llm): the three AutoRators (:mod:`novalign.flywheel.autorators`), chosen by the prompt's labels;
* ``rm_score``: every response scored by a trained reward model (``novalign rm``; as ``novalign rm score``);
* ``prefilter``: a graded best / middle / worst subset by a reward-model or judge score (section 3.2);
* ``response_rouge``: near-identical responses out; a prompt the models answer alike (one response left) out;
* ``drop_rules``: all-high and within-margin groups out (section 3.3), all-low groups flagged for revision;
* ``rm_groups``: ``{prompt, responses: [{content, score, model}]}`` for ``novalign rm``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from novalign.config.base import Strict
from novalign.config.pipeline import LLMGenerateConfig
from novalign.flywheel.autorators import AutoRateConfig, assemble_group, lang_of, plan_group
from novalign.flywheel.responses import REPORT_SAMPLING, all_low, drop_reason, graded_indices, rm_group, rouge_keep
from novalign.flywheel.step import TEXT, Outcome, Step, drop, keep, register
from novalign.flywheel.steps.llm import LLMGenerate, _LLMStep, _streamed, llm_identity, merged_llm

__all__ = ["ask_by_lang", "conversation_text", "Respond", "AutoRate", "RMScore", "Prefilter", "ResponseRouge", "DropRules", "RMGroups"]


def ask_by_lang(client, prompts: Sequence[str], parsers: Sequence, langs: Sequence[str], **kwargs: Any) -> list:
    """:func:`novalign.eval.judge.ask_judge` in one batch per language (so a re-ask is in the prompt's own
    language); the judgments come back in input order."""
    from novalign.eval.judge import ask_judge

    out: list = [None] * len(prompts)
    for lang in sorted(set(langs)):
        idx = [i for i, x in enumerate(langs) if x == lang]
        for i, j in zip(idx, ask_judge(client, [prompts[i] for i in idx], [parsers[i] for i in idx], lang=lang, **kwargs)):
            out[i] = j
    return out


def conversation_text(prompt: Any) -> str:
    """A prompt as judge-readable text: a string as it is; messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


class RespondConfig(LLMGenerateConfig):
    """llm_generate with the report's sampling defaults, collected into one group record per prompt."""

    n: int = Field(REPORT_SAMPLING["n"], ge=1, description="Samples per prompt per model (report: 5).")
    temperature: float = Field(REPORT_SAMPLING["temperature"], ge=0, description="Report: 1.")
    top_p: float = Field(REPORT_SAMPLING["top_p"], gt=0, le=1, description="Report: 0.99.")
    top_k: int | None = Field(REPORT_SAMPLING["top_k"], ge=0, description="Report: 50.")
    output_field: str = Field("responses", description="Field the group's responses are written to.")


@register
class Respond(LLMGenerate):
    type = "respond"
    Config = RespondConfig

    def output_fields(self):
        return ["prompt", self.config.output_field]

    def _outcome(self, record: dict, results: list, clients: dict) -> Outcome:
        c = self.config
        samples = super()._outcome(record, results, clients)
        if samples["drop"] is not None:
            return samples
        params = {"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "max_tokens": c.max_tokens,
                  "seed": c.seed}
        responses, errors = [], {}
        for s in samples["out"]:
            if s["sample"] is None:
                errors[s["model"]] = s[f"{c.output_field}_error"]
                continue
            model = next(m for m in c.models if m.name == s["model"])
            responses.append({"content": s[c.output_field], "model": s["model"], "sample": s["sample"],
                              "finish_reason": s.get("finish_reason"),
                              "params": params | {"n": model.n or c.n, "llm_model": self.model_llm[model.name].model}})
        group = {k: v for k, v in record.items() if k != c.output_field}
        group = {**group, "prompt": record[c.prompt_field], c.output_field: responses}
        if errors:
            group[f"{c.output_field}_errors"] = errors
        return {**samples, "out": [group]}


@register
class AutoRate(_LLMStep):
    type = "autorate"
    Config = AutoRateConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.judge_llm = merged_llm(self.default_llm, config.llm, "autorate")

    def identity(self):
        from novalign.eval.judge import load_template

        texts = {f"{name}.{lang}": load_template(f"autorator_{name}", lang, self.config.template_dir)
                 for name in ("absolute", "pairwise", "golden") for lang in ("en", "zh")}
        return super().identity() | {"llm": llm_identity(self.judge_llm), "templates": texts}

    def input_fields(self):
        return {"prompt": TEXT, "responses": (list,)}

    def output_fields(self):
        return ["responses", "rater"]

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        from novalign.eval.judge import ask_judge

        c = self.config
        plans, flat = {}, []  # record id -> (record, rater, keys, ruled); flat: (id, key, prompt, parser, lang)
        for _, record in items:
            try:
                rater, asks, ruled = plan_group(record, c, conversation_text(record["prompt"]))
            except (ValueError, KeyError) as exc:
                yield drop(record, "cannot rate", error=str(exc))
                continue
            plans[record["_id"]] = (record, rater, [a[0] for a in asks], ruled)
            lang = lang_of(record, c)
            flat.extend((record["_id"], key, prompt, parse, lang) for key, prompt, parse in asks)
        pending = {rid: len(p[2]) for rid, p in plans.items()}
        got: dict[str, dict] = {rid: {} for rid in plans}
        failed: dict[str, dict] = {}
        for rid, n in pending.items():
            if n == 0:
                yield self._finish(plans[rid], {}, {})
        if not flat:
            return
        client = self._client("judge", self.judge_llm)

        def run(deliver):  # one batch per language, so a re-ask is in the prompt's language
            for lang in sorted({f[4] for f in flat}):
                idx = [i for i, f in enumerate(flat) if f[4] == lang]
                ask_judge(client, [flat[i][2] for i in idx], [flat[i][3] for i in idx], attempts=c.attempts,
                          lang=lang, template_dir=c.template_dir, max_tokens=c.max_tokens,
                          on_done=lambda k, j, idx=idx: deliver((idx[k], j)))

        for i, judgment in _streamed(run):
            rid, key = flat[i][0], flat[i][1]
            if judgment.failed:
                failed.setdefault(rid, {})[str(key)] = {"error": judgment.error, "raw": judgment.raw}
            else:
                got[rid][key] = judgment.parsed
            pending[rid] -= 1
            if pending[rid] == 0:
                yield self._finish(plans[rid], got[rid], failed.get(rid, {}))

    def _finish(self, plan, verdicts: dict, failures: dict) -> Outcome:
        record, rater, _, ruled = plan
        if failures:
            if self.config.drop_failed:
                return drop(record, f"{rater} rating failed", failures=failures)
            return keep(record, rater=rater, rating_error=failures)
        return keep(assemble_group(record, rater, verdicts, ruled))


class _GroupConfig(Strict):
    score_field: str = Field("score", description="Each response's score field (autorate's, or a reward model's).")


def _scores(record: dict, field: str) -> list[float] | None:
    values = [r.get(field) for r in record["responses"]]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    return [float(v) for v in values]


def _move(record: dict, keep_idx: Sequence[int], reasons: dict[int, str]) -> dict:
    """The group with only ``keep_idx`` responses; the others go to ``removed`` with their reason."""
    kept = [record["responses"][i] for i in keep_idx]
    removed = list(record.get("removed", [])) + [{**record["responses"][i], "reason": reasons[i]}
                                                  for i in range(len(record["responses"])) if i not in set(keep_idx)]
    return {**record, "responses": kept, "removed": removed}


class RMScoreConfig(Strict):
    """Score every response of each group with a reward model (``novalign rm score``), for the pre-filter."""

    model_dir: str = Field(..., description="A reward model directory (<output_dir>/model of `novalign rm`).")
    output_field: str = Field("rm_score", description="Response field the reward is written to.")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(4096, ge=8)
    device: str = Field("cpu")


@register
class RMScore(Step):
    type = "rm_score"
    Config = RMScoreConfig
    mode = "global"  # the model loads once, on the driver

    def input_fields(self):
        return {"prompt": TEXT, "responses": (list,)}

    def run_all(self, records: list[dict], pmap) -> list[Outcome]:
        from novalign.flywheel.responses import messages_of
        from novalign.models.load import load_tokenizer
        from novalign.models.reward import load_reward_model, score_conversations

        c = self.config
        conversations = [(messages_of(r["prompt"]), {"role": "assistant", "content": resp["content"]})
                         for r in records for resp in r["responses"]]
        tokenizer = load_tokenizer(c.model_dir)
        model = load_reward_model(c.model_dir, device=c.device)
        rewards = iter(score_conversations(model, tokenizer, conversations, max_length=c.max_length,
                                           batch_size=c.batch_size))
        return [keep(r, responses=[{**resp, c.output_field: next(rewards)} for resp in r["responses"]]) for r in records]


class PrefilterConfig(_GroupConfig):
    """Section 3.2: "use a Reward Model or LLM-as-Judge to pre-filter responses, forming a response set with
    graded quality distinctions"."""

    keep: int = Field(3, ge=1, description="Responses kept per group, spread over the score order (3: best, "
                      "middle, worst).")


@register
class Prefilter(Step):
    type = "prefilter"
    Config = PrefilterConfig

    def input_fields(self):
        return {"responses": (list,)}

    def process_one(self, record: dict) -> Outcome:
        scores = _scores(record, self.config.score_field)
        if scores is None:
            return drop(record, "unscored response", field=self.config.score_field)
        kept = graded_indices(scores, self.config.keep)
        return keep(_move(record, sorted(kept), {i: "not in the graded subset" for i in range(len(scores))}))


class ResponseRougeConfig(Strict):
    """Section 3.3: "a rouge rule based filter is used to roughly filter the similar responses"."""

    threshold: float = Field(0.9, gt=0, le=1, description="ROUGE-L F1 at which a response is a near-duplicate.")
    min_responses: int = Field(2, ge=1, description="A group left with fewer (the models answer alike) is dropped.")


@register
class ResponseRouge(Step):
    type = "response_rouge"
    Config = ResponseRougeConfig

    def input_fields(self):
        return {"responses": (list,)}

    def process_one(self, record: dict) -> Outcome:
        texts = [r.get("content") or "" for r in record["responses"]]
        kept, reasons = rouge_keep(texts, self.config.threshold)
        group = _move(record, kept, reasons)
        if len(kept) < self.config.min_responses:
            return drop(group, "models answer alike", kept=len(kept))
        return keep(group)


class DropRulesConfig(_GroupConfig):
    """Section 3.3: "prompts with all high-scoring responses or very similar scoring responses are removed"."""

    high: float | None = Field(0.8, description="All scores >= this: dropped (None: rule off). Scores in [0, 1].")
    margin: float | None = Field(0.1, ge=0, description="max - min <= this: dropped (None: rule off).")
    low: float = Field(0.5, description="All scores below this: kept and flagged `all_low` for revision.")
    min_responses: int = Field(2, ge=1)


@register
class DropRules(Step):
    type = "drop_rules"
    Config = DropRulesConfig

    def input_fields(self):
        return {"responses": (list,)}

    def process_one(self, record: dict) -> Outcome:
        c = self.config
        scores = _scores(record, c.score_field)
        if scores is None:
            return drop(record, "unscored response", field=c.score_field)
        low = all_low(scores, c.low)
        reason = drop_reason(scores, high=c.high, margin=None if low else c.margin, min_responses=c.min_responses)
        if reason is not None:
            return drop(record, reason, scores=scores)
        return keep(record, all_low=low)


class RMGroupsConfig(_GroupConfig):
    """Scored groups into reward-model groups ``{prompt, responses: [{content, score, model}]}`` (what `novalign
    rm` reads); groups without a score difference are dropped and counted."""

    extra: list[str] = Field(["labels"], description="Record fields copied onto each group.")


@register
class RMGroups(Step):
    type = "rm_groups"
    Config = RMGroupsConfig

    def input_fields(self):
        return {"prompt": TEXT, "responses": (list,)}

    def process_one(self, record: dict) -> Outcome:
        scores = _scores(record, self.config.score_field)
        if scores is None:
            return drop(record, "unscored response", field=self.config.score_field)
        if len(set(scores)) < 2:  # no pair to learn from (an all-low group waits for revision)
            return drop(record, "no score difference", all_low=record.get("all_low"))
        group = rm_group(record, score_key=self.config.score_field, extra=self.config.extra)
        return {"_id": record["_id"], "out": [{"_id": record["_id"], **group}], "drop": None, "detail": None}
