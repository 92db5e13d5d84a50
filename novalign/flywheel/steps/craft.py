"""Steps that write responses or instructions with an LLM (report section 3.2):

* ``revise`` -- human-machine collaborative response modification: for a group whose responses all score low,
  an LLM writes a critique of the best response, then a revision guided by it. ``mode: annotate`` adds the
  revision to the group (``model: revision``, with the critique attached) for annotators; ``mode: sft`` checks
  it with the absolute AutoRator and emits an SFT record when it scores at least ``min_score``;
* ``backtranslate`` -- instruction back-translation with self-curation (:mod:`novalign.flywheel.backtranslate`).

Every LLM reply goes through :func:`novalign.eval.judge.ask_judge` (strict parsers, re-asks); a step that
cannot get a usable reply drops the record with its reason and every raw reply (``drops.jsonl``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.flywheel.autorators import rating_to_unit
from novalign.flywheel.backtranslate import parse_after, parse_curation, parse_instruction, sft_pair
from novalign.flywheel.responses import all_low, get_path, messages_of
from novalign.flywheel.step import TEXT, Outcome, drop, keep, register
from novalign.flywheel.steps.llm import _LLMStep, llm_identity, merged_llm
from novalign.flywheel.steps.prefdata import ask_by_lang, conversation_text

__all__ = ["Revise", "Backtranslate"]


class _LLMOptions(Strict):
    lang: Literal["en", "zh", "auto"] = Field("auto", description="Template language; auto: from language_field.")
    language_field: str = Field("labels.language", description="Dotted path of the language label (zh* -> zh).")
    template_dir: str | None = Field(None, description="Folder of your own templates (same names).")
    attempts: int = Field(3, ge=1, description="Tries per reply (the first ask plus re-asks).")
    max_tokens: int | None = Field(1024, ge=1)
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of every ask.")
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm.")


class _AskStep(_LLMStep):
    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.ask_llm = merged_llm(self.default_llm, config.llm, self.type)

    def _templates(self) -> dict[str, str]:
        from novalign.eval.judge import load_template

        return {f"{n}.{lang}": load_template(n, lang, self.config.template_dir)
                for n in self.template_names for lang in ("en", "zh")}

    def identity(self):
        return super().identity() | {"llm": llm_identity(self.ask_llm), "templates": self._templates()}

    def lang(self, record: dict) -> str:
        if self.config.lang != "auto":
            return self.config.lang
        language = get_path(record, self.config.language_field)
        return "zh" if isinstance(language, str) and language.lower().startswith("zh") else "en"

    def ask(self, prompts: list[str], parser, records: list[dict]) -> list:
        """One judgment per prompt (parsed, or failed with its raw replies), in order; re-asks in each record's
        language."""
        if not prompts:
            return []
        c = self.config
        return ask_by_lang(self._client(self.type, self.ask_llm), prompts, [parser] * len(prompts),
                           [self.lang(r) for r in records], attempts=c.attempts, template_dir=c.template_dir,
                           max_tokens=c.max_tokens, request_params={"temperature": c.temperature})

    def render(self, name: str, record: dict, **values: Any) -> str:
        from novalign.eval.judge import load_template, render

        return render(load_template(name, self.lang(record), self.config.template_dir), **values)


class ReviseConfig(_LLMOptions):
    """Critique then revise the groups whose responses all score low (report 3.2)."""

    score_field: str = Field("score", description="Each response's score in [0, 1].")
    low: float = Field(0.5, description="A group is revised when every score is below this (or it has "
                       "`all_low: true` from drop_rules).")
    mode: Literal["annotate", "sft"] = Field("annotate", description="annotate: the revision joins the group for "
                                             "annotators with its critique; sft: judge-checked SFT records.")
    min_score: float = Field(0.7, ge=0, le=1, description="sft mode: the absolute AutoRator's score (0-1) a "
                             "revision needs.")


@register
class Revise(_AskStep):
    type = "revise"
    Config = ReviseConfig
    template_names = ("critique", "revise", "autorator_absolute")

    def input_fields(self):
        return {"prompt": TEXT, "responses": (list,)}

    def _needs(self, record: dict) -> bool:
        if record.get("all_low") is True:
            return True
        scores = [r.get(self.config.score_field) for r in record["responses"]]
        return all(isinstance(s, (int, float)) for s in scores) and all_low(scores, self.config.low)

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        c = self.config
        todo = []
        for _, record in items:
            if self._needs(record):
                todo.append(record)
            else:
                yield keep(record)
        if not todo:
            return
        best = [max(range(len(r["responses"])), key=lambda i, r=r: r["responses"][i].get(c.score_field) or 0)
                for r in todo]
        texts = [conversation_text(r["prompt"]) for r in todo]
        answers = [r["responses"][b]["content"] for r, b in zip(todo, best)]
        critiques = self.ask([self.render("critique", r, prompt=t, response=a)
                              for r, t, a in zip(todo, texts, answers)], partial(parse_after, marker="Critique:"), todo)
        ok = [i for i, j in enumerate(critiques) if not j.failed]
        revisions = dict(zip(ok, self.ask([self.render("revise", todo[i], prompt=texts[i], response=answers[i],
                                                       critique=critiques[i].parsed) for i in ok],
                                          partial(parse_after, marker="Revision:"), [todo[i] for i in ok])))
        good = [i for i in ok if not revisions[i].failed]
        checks = {}
        if c.mode == "sft":
            checks = dict(zip(good, self.ask([self.render("autorator_absolute", todo[i], prompt=texts[i],
                                                          response=revisions[i].parsed) for i in good], rating_to_unit,
                                             [todo[i] for i in good])))
        for i, record in enumerate(todo):
            yield self._outcome(record, best[i], critiques[i], revisions.get(i), checks.get(i))

    def _outcome(self, record: dict, best: int, critique, revision, check) -> Outcome:
        if critique.failed:
            return drop(record, "critique failed", error=critique.error, raw=critique.raw)
        if revision.failed:
            return drop(record, "revision failed", error=revision.error, raw=revision.raw, critique=critique.parsed)
        if self.config.mode == "annotate":
            new = {"content": revision.parsed, "model": "revision", "critique": critique.parsed, "source_response": best}
            return keep(record, responses=[*record["responses"], new], revised=True)
        if check.failed:
            return drop(record, "revision judge check failed", error=check.error, raw=check.raw)
        if check.parsed < self.config.min_score:
            return drop(record, "revision below min_score", score=check.parsed, revision=revision.parsed)
        sft = {"_id": f"{record['_id']}/revision", "messages": [*messages_of(record["prompt"]),
                                                                 {"role": "assistant", "content": revision.parsed}],
               "critique": critique.parsed, "judge_score": check.parsed, "source_id": record["_id"],
               "labels": record.get("labels", {})}
        return {"_id": record["_id"], "out": [sft], "drop": None, "detail": None}


class BacktranslateConfig(_LLMOptions):
    """Instruction back-translation with self-curation (report 3.2; Humpback)."""

    text_field: str = Field("text", description="The high-quality text (the response to be).")
    quality_field: str | None = Field("quality", description="Dotted path of a quality score from a classifier or "
                                      "judge; None: no quality filter.")
    min_quality: float = Field(0.0, description="Texts scoring below this are dropped before any LLM call.")
    min_curation: float = Field(4, ge=1, le=5, description="Self-curation score (1-5) a pair needs (Humpback: 5).")


@register
class Backtranslate(_AskStep):
    type = "backtranslate"
    Config = BacktranslateConfig
    template_names = ("backtranslate", "curate")

    def input_fields(self):
        return {self.config.text_field: (str,)}

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        c = self.config
        todo = []
        for _, record in items:
            q = get_path(record, c.quality_field) if c.quality_field else None
            if c.quality_field and (isinstance(q, bool) or not isinstance(q, (int, float))):
                yield drop(record, "no quality score", field=c.quality_field)
            elif c.quality_field and q < c.min_quality:
                yield drop(record, "below min_quality", quality=q)
            else:
                todo.append(record)
        texts = [r[c.text_field] for r in todo]
        instructions = self.ask([self.render("backtranslate", r, text=t) for r, t in zip(todo, texts)],
                                parse_instruction, todo)
        ok = [i for i, j in enumerate(instructions) if not j.failed]
        curated = dict(zip(ok, self.ask([self.render("curate", todo[i], instruction=instructions[i].parsed,
                                                     response=texts[i]) for i in ok], parse_curation,
                                          [todo[i] for i in ok])))
        for i, record in enumerate(todo):
            ins, cur = instructions[i], curated.get(i)
            if ins.failed:
                yield drop(record, "instruction failed", error=ins.error, raw=ins.raw)
            elif cur.failed:
                yield drop(record, "curation failed", error=cur.error, raw=cur.raw, instruction=ins.parsed)
            elif cur.parsed < c.min_curation:
                yield drop(record, "below min_curation", score=cur.parsed, instruction=ins.parsed)
            else:
                extra = {"labels": record["labels"]} if "labels" in record else {}
                yield {"_id": record["_id"], "out": [sft_pair(record["_id"], ins.parsed, texts[i], cur.parsed, extra)],
                       "drop": None, "detail": None}
