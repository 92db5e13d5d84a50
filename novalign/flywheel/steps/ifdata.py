"""Instruction-following data steps (report section 4.1): ``constraint_expand``, ``response_reverse``,
``sysmsg_decompose``, ``sysmsg_assemble`` and ``textbook``. Each is a map step over a batch of records that runs
its bounded loop (:mod:`novalign.flywheel.constraints`) with the models of its config, every call through the
one :class:`~novalign.llm.LLMClient` (request cache, limits, retries, accounting). Every dropped record names
its reason; ``constraint_expand`` also records the proposals it rejected, by reason, on each kept record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field

from novalign.config.base import Strict
from novalign.flywheel.step import TEXT, Outcome, drop, keep, register
from novalign.flywheel.steps.llm import _LLMStep, llm_identity, merged_llm

__all__ = ["ConstraintExpand", "ResponseReverse", "SysmsgAssemble", "SysmsgDecompose", "Textbook"]


class RoleLLM(Strict):
    """One model of a step: a label and LLMConfig keys over the pipeline's ``llm``."""

    name: str = Field(..., description="Label (in the step's usage and the records).")
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm (model, ...).")


class _IFStep(_LLMStep):
    roles: tuple[str, ...] = ()

    def _cfg(self, name: str, overrides: dict) -> Any:
        return merged_llm(self.default_llm, overrides, f"{self.type} {name}")

    def role_llms(self) -> dict[str, Any]:
        c = self.config
        out = {}
        for role in self.roles:
            value = getattr(c, role)
            if isinstance(value, list):
                out.update({f"{role}:{m.name}": self._cfg(m.name, m.llm) for m in value})
            elif value is not None:
                out[role] = self._cfg(role, value)
        return out

    def identity(self):
        return super().identity() | {"llm": {k: llm_identity(v) for k, v in self.role_llms().items()}}

    def ask(self, role: str, temperature: float | None = None):
        from novalign.flywheel.constraints.attributes import client_ask

        cfg = self.role_llms()[role]
        return client_ask(self._client(role, cfg), temperature=self.config.temperature if temperature is None else
                          temperature, max_tokens=self.config.max_tokens)

    def usage_now(self) -> dict[str, float]:
        """Requests, cache hits and cost of this step's clients so far (the pipeline sums outcomes' usage)."""
        total = {"requests": 0, "cached": 0, "cost": 0.0}
        for client in self.clients.values():
            t = client.usage.to_dict()["total"]
            total["requests"] += t["requests"] + t["failed_requests"]
            total["cached"] += t["cached_requests"]
            total["cost"] += t["cost"] or 0.0
        return total

    def with_usage(self, outcomes: Iterator[Outcome], before: dict) -> Iterator[Outcome]:
        """``outcomes`` with the batch's usage (since ``before``) on the first one."""
        outcomes = list(outcomes)  # the batch's calls are all made by now
        after = self.usage_now()
        for i, o in enumerate(outcomes):
            yield {**o, "usage": {k: after[k] - before[k] for k in after}} if i == 0 else o

    def outcomes(self, records: Sequence[dict], kept: list[dict], dropped: list[tuple[dict, str]]) -> Iterator[Outcome]:
        by_id = {}
        for r in kept:
            by_id.setdefault(r["_id"], []).append(r)
        for record, reason in dropped:
            yield drop(record, reason)
        gone = {r["_id"] for r, _ in dropped}
        for r in records:
            if r["_id"] in by_id:
                yield {"_id": r["_id"], "out": by_id[r["_id"]], "drop": None, "detail": None}
            elif r["_id"] not in gone:  # never silently: a record neither kept nor dropped is a bug
                raise AssertionError(f"{self.type}: record {r['_id']} neither kept nor dropped")


class ExpandConfig(Strict):
    """Constraint expansion: proposers pick library constraints, a judge validates, the validators check the response."""

    prompt_field: str = Field("prompt")
    response_field: str = Field("response", description="A record's own response is checked; without one the "
                                "responder answers the expanded prompt.")
    constraints_field: str = Field("constraints", description="Existing and added constraint instances.")
    quality_field: str | None = Field(None, description="A quality score field path (e.g. labels.quality from a scorer).")
    min_quality: float | None = Field(None, description="Prompts scoring below it are dropped.")
    proposers: list[RoleLLM] = Field(..., min_length=1, description="The proposing models (several, report 4.1).")
    judge: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys of the separate validating model.")
    responder: dict[str, Any] | None = Field(None, description="LLMConfig keys of the model answering expanded prompts.")
    max_new: int = Field(2, ge=1, description="Constraints added per prompt at most.")
    max_rounds: int = Field(3, ge=1, description="Rounds per prompt at most; then it is dropped with the last reason.")
    temperature: float = Field(0.7, ge=0)
    max_tokens: int | None = Field(512, ge=1)
    seed: int = Field(0)
    template_dir: str | None = Field(None, description="Your own ifdata_propose.en.txt / ifdata_validate.en.txt.")


@register
class ConstraintExpand(_IFStep):
    type = "constraint_expand"
    Config = ExpandConfig
    roles = ("proposers", "judge", "responder")

    def input_fields(self):
        return {self.config.prompt_field: (str,)}

    def process(self, items):
        from novalign.flywheel.constraints.expansion import expand

        c, records, before = self.config, [r for _, r in items], self.usage_now()
        proposers = {m.name: self.ask(f"proposers:{m.name}") for m in c.proposers}
        res = expand(records, proposers, self.ask("judge", 0.0), self.ask("responder") if c.responder is not None else None,
                     prompt_field=c.prompt_field, response_field=c.response_field, constraints_field=c.constraints_field,
                     quality_field=c.quality_field, min_quality=c.min_quality, max_new=c.max_new,
                     max_rounds=c.max_rounds, seed=c.seed, template_dir=c.template_dir)
        yield from self.with_usage(self.outcomes(records, res.kept, res.dropped), before)


class ReverseConfig(Strict):
    """Response reversal: a writer model writes the prompt a text answers, an inspector scores it, bounded revisions."""

    text_field: str = Field("text", description="The high-quality text that becomes the response.")
    quality_field: str | None = Field(None, description="A quality score field path (labels.quality); with min_quality, a filter.")
    min_quality: float | None = Field(None)
    writer: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys of the prompt writer.")
    inspector: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys of the inspector.")
    max_rounds: int = Field(3, ge=1)
    keep_incomplete: bool = Field(False, description="Keep prompts still missing attributes after max_rounds.")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int | None = Field(512, ge=1)
    template_dir: str | None = Field(None)


@register
class ResponseReverse(_IFStep):
    type = "response_reverse"
    Config = ReverseConfig
    roles = ("writer", "inspector")

    def input_fields(self):
        return {self.config.text_field: (str,)}

    def output_fields(self):
        return ["prompt", "response", "constraints", "reversal"]

    def process(self, items):
        from novalign.flywheel.constraints.reversal import reverse

        c, records, before = self.config, [r for _, r in items], self.usage_now()
        res = reverse(records, self.ask("writer"), self.ask("inspector", 0.0), text_field=c.text_field,
                      quality_field=c.quality_field, min_quality=c.min_quality, max_rounds=c.max_rounds,
                      keep_incomplete=c.keep_incomplete, template_dir=c.template_dir)
        yield from self.with_usage(self.outcomes(records, res.kept, res.dropped), before)


class DecomposeConfig(Strict):
    """System messages split into components (task, workflow, output_spec, constraints, opening) by an LLM."""

    field: str = Field("system", description="The system message field.")
    llm: dict[str, Any] = Field(default_factory=dict)
    temperature: float = Field(0.0, ge=0)
    max_tokens: int | None = Field(512, ge=1)
    template_dir: str | None = Field(None)


@register
class SysmsgDecompose(_IFStep):
    type = "sysmsg_decompose"
    Config = DecomposeConfig
    roles = ("llm",)

    def input_fields(self):
        return {self.config.field: TEXT}

    def output_fields(self):
        return ["kind", "text", "source"]

    def process(self, items):
        before = self.usage_now()
        yield from self.with_usage(self._process(items), before)

    def _process(self, items):
        from novalign.eval.judge import load_template
        from novalign.flywheel.constraints.sysmsg import decompose_messages, parse_decomposition

        c, records = self.config, [r for _, r in items]
        template = load_template("ifdata_decompose", "en", c.template_dir)
        replies = self.ask("llm")([decompose_messages(r[c.field], template) for r in records])
        for r, reply in zip(records, replies):
            try:
                parts = parse_decomposition(reply)
            except ValueError as exc:
                yield drop(r, "unparsable decomposition", error=str(exc), raw=reply)
                continue
            out = [{"_id": f"{r['_id']}/{kind}/{k}", "kind": kind, "text": text, "source": r["_id"]}
                   for k, (kind, text) in enumerate(parts)]
            yield {"_id": r["_id"], "out": out, "drop": None, "detail": None}


class AssembleConfig(Strict):
    """New system messages from component pools and constraint-rich prompts; evolution, rationalization, filter."""

    components: str = Field(..., description="JSONL of component records (kind, text), e.g. the deduplicated "
                            "output of sysmsg_decompose.")
    prompt_field: str = Field("prompt")
    constraints_field: str = Field("constraints")
    extra_rules: int = Field(1, ge=0, description="Rules drawn from the pool besides the prompt's own constraints.")
    evolution_rounds: int = Field(1, ge=0)
    rationalize: bool = Field(True)
    llm: dict[str, Any] = Field(default_factory=dict, description="The rewriting model.")
    judge: dict[str, Any] | None = Field(default_factory=dict, description="The final filter (1-10); null: no filter.")
    min_score: float = Field(6.0)
    temperature: float = Field(0.7, ge=0)
    max_tokens: int | None = Field(1024, ge=1)
    seed: int = Field(0)
    template_dir: str | None = Field(None)


@register
class SysmsgAssemble(_IFStep):
    type = "sysmsg_assemble"
    Config = AssembleConfig
    roles = ("llm", "judge")

    def identity(self):
        import hashlib

        with open(self.config.components, "rb") as fh:  # editing the pool reruns the step
            digest = hashlib.sha256(fh.read()).hexdigest()
        return super().identity() | {"components_sha256": digest}

    def input_fields(self):
        return {self.config.prompt_field: (str,)}

    def output_fields(self):
        return ["system", "messages"]

    def process(self, items):
        before = self.usage_now()
        yield from self.with_usage(self._process(items), before)

    def _process(self, items):
        from novalign.data.io import iter_records
        from novalign.flywheel.constraints.sysmsg import draft, pools_of, refine

        c, records = self.config, [r for _, r in items]
        pools = pools_of([rec for _, rec in iter_records(c.components)])
        cons = [list(r.get(c.constraints_field) or []) for r in records]
        drafts = [draft(pools, cs, c.seed, r["_id"], c.extra_rules) for r, cs in zip(records, cons)]
        final, reasons, counts = refine(drafts, cons, self.ask("llm"), self.ask("judge", 0.0) if c.judge is not None else None,
                                        evolution_rounds=c.evolution_rounds, rationalize=c.rationalize,
                                        min_score=c.min_score, template_dir=c.template_dir)
        for r, draft, msg, reason in zip(records, drafts, final, reasons):
            if reason:
                yield drop(r, reason, draft=draft)
                continue
            yield keep(r, system=msg, draft=draft, messages=[{"role": "system", "content": msg},
                                                            {"role": "user", "content": r[c.prompt_field]}])


class TextbookConfig(Strict):
    """Textbook responses: intent, reasoning, pitfalls, constraints, answer -- from an editable template."""

    prompt_field: str = Field("prompt")
    constraints_field: str = Field("constraints")
    output_field: str = Field("response")
    template: str = Field("textbook", description="Template name: <template_dir>/<name>.en.txt or the bundled one.")
    template_dir: str | None = Field(None)
    keep: str = Field("lesson", pattern="^(lesson|answer)$", description="'lesson': the whole reply as the "
                      "response; 'answer': only its last section (the lesson kept in `lesson`).")
    llm: dict[str, Any] = Field(default_factory=dict)
    temperature: float = Field(0.7, ge=0)
    max_tokens: int | None = Field(2048, ge=1)


@register
class Textbook(_IFStep):
    type = "textbook"
    Config = TextbookConfig
    roles = ("llm",)

    def identity(self):
        from novalign.flywheel.constraints.textbook import load_lesson_template

        return super().identity() | {"template_text": load_lesson_template(self.config.template, self.config.template_dir)}

    def input_fields(self):
        return {self.config.prompt_field: (str,)}

    def process(self, items):
        before = self.usage_now()
        yield from self.with_usage(self._process(items), before)

    def _process(self, items):
        from novalign.flywheel.constraints.textbook import lesson_messages, load_lesson_template, parse_lesson, required_sections

        c, records = self.config, [r for _, r in items]
        template = load_lesson_template(c.template, c.template_dir)
        sections = required_sections(template)
        cons = [list(r.get(c.constraints_field) or []) for r in records]
        replies = self.ask("llm")([lesson_messages(r[c.prompt_field], cs, template) for r, cs in zip(records, cons)])
        for r, cs, reply in zip(records, cons, replies):
            found, reason = parse_lesson(reply, sections, cs)
            if reason:
                yield drop(r, reason, raw=reply)
            elif c.keep == "answer":
                yield keep(r, **{c.output_field: found[sections[-1]], "lesson": reply})
            else:
                yield keep(r, **{c.output_field: reply})

