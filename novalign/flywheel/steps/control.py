"""Style and refusal control steps (report section 3.2):

* ``style`` -- a style card (:mod:`novalign.flywheel.style`) put into each prompt, its name kept as ``style``;
* ``refusal_label`` -- the refusal detector (rules, plus an optional judge for what the rules leave) on
  response records (``response``) or group records (each of ``responses``);
* ``refusal_govern`` -- at most ``cap`` of each category's kept responses are refusals (surplus dropped, counted);
* ``refusal_constraints`` -- the refusal constraint put into the system message of prompts in chosen categories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from novalign.config.base import Strict
from novalign.flywheel.refusal import CONSTRAINTS, add_system_constraint, govern, parse_refusal, rule_refusal
from novalign.flywheel.responses import get_path
from novalign.flywheel.step import TEXT, Outcome, Step, drop, keep, register
from novalign.flywheel.steps.llm import _LLMStep, llm_identity, merged_llm
from novalign.flywheel.steps.prefdata import ask_by_lang, conversation_text
from novalign.flywheel.style import STYLE_CARDS, apply_style, card_text, pick_card

__all__ = ["Style", "RefusalLabel", "RefusalGovern", "RefusalConstraints"]


def _lang(record: dict, lang: str, field: str) -> str:
    if lang != "auto":
        return lang
    value = get_path(record, field)
    return "zh" if isinstance(value, str) and value.lower().startswith("zh") else "en"


class StyleConfig(Strict):
    """Style cards into prompts (report 3.2, Personalization)."""

    prompt_field: str = Field("prompt", description="The prompt (string or chat messages); rewritten as messages.")
    cards: dict[str, str | dict[str, str]] = Field(default_factory=dict, description="User-defined cards (name -> "
                                                   "text, or {en, zh}); added to the built-in ones.")
    use: list[str] | None = Field(None, description="Cards to use (None: every card).")
    assign: Literal["hash", "all", "field"] = Field("hash", description="hash: one card per prompt, stable by id; "
                                                    "all: one record per card; field: the record's style_field.")
    style_field: str = Field("style", description="Field the card's name is written to (and read, assign: field).")
    where: Literal["system", "prompt"] = Field("system", description="Into the system message, or after the last "
                                               "user turn.")
    lang: Literal["en", "zh", "auto"] = Field("auto")
    language_field: str = Field("labels.language")
    seed: int = Field(0)


@register
class Style(Step):
    type = "style"
    Config = StyleConfig

    def input_fields(self):
        return {self.config.prompt_field: TEXT}

    def output_fields(self):
        return [self.config.prompt_field, self.config.style_field]

    def process_one(self, record: dict) -> Outcome:
        c = self.config
        cards = {**STYLE_CARDS, **c.cards}
        names = c.use or list(cards)
        if c.assign == "field":
            chosen = [record.get(c.style_field)]
            if chosen[0] not in cards:
                return drop(record, "unknown style", style=chosen[0], known=sorted(cards))
        elif c.assign == "all":
            chosen = names
        else:
            chosen = [pick_card(str(record["_id"]), names, c.seed)]
        lang = _lang(record, c.lang, c.language_field)
        out = []
        for name in chosen:
            styled = apply_style(record[c.prompt_field], card_text(cards, name, lang), c.where)
            rid = record["_id"] if c.assign != "all" else f"{record['_id']}/{name}"
            out.append({**record, "_id": rid, c.prompt_field: styled, c.style_field: name})
        return {"_id": record["_id"], "out": out, "drop": None, "detail": None}


class RefusalLabelConfig(Strict):
    """The refusal detector: rules, plus an optional judge (template refusal.<lang>.txt)."""

    response_field: str = Field("response", description="A response string; or a group's `responses` list.")
    prompt_field: str = Field("prompt", description="The prompt shown to the judge.")
    output_field: str = Field("refusal", description="true / false written here (and `refusal_by`: rule/judge).")
    window: int = Field(200, ge=1, description="Characters from the start the rules look at.")
    judge: bool = Field(False, description="Ask the judge about responses the rules do not flag.")
    lang: Literal["en", "zh", "auto"] = Field("auto")
    language_field: str = Field("labels.language")
    template_dir: str | None = Field(None)
    attempts: int = Field(3, ge=1)
    max_tokens: int | None = Field(256, ge=1)
    llm: dict[str, Any] = Field(default_factory=dict, description="LLMConfig keys over the pipeline's llm.")


@register
class RefusalLabel(_LLMStep):
    type = "refusal_label"
    Config = RefusalLabelConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.judge_llm = merged_llm(self.default_llm, config.llm, "refusal_label") if config.judge else None

    def identity(self):
        from novalign.eval.judge import load_template

        extra = {}
        if self.judge_llm is not None:
            extra = {"llm": llm_identity(self.judge_llm),
                     "templates": [load_template("refusal", lang, self.config.template_dir) for lang in ("en", "zh")]}
        return super().identity() | extra

    def input_fields(self):
        return {self.config.response_field: (str, list)}

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        from novalign.eval.judge import load_template, render

        c = self.config
        slots = []  # (record index, response index or None, text)
        records = [r for _, r in items]
        for k, r in enumerate(records):
            value = r[c.response_field]
            if isinstance(value, str):
                slots.append((k, None, value))
            else:
                slots.extend((k, i, resp.get("content") or "") for i, resp in enumerate(value))
        verdicts: dict[tuple, tuple[bool | None, str, Any]] = {}
        ask = []
        for k, i, text in slots:
            if rule_refusal(text, c.window):
                verdicts[(k, i)] = (True, "rule", None)
            elif c.judge:
                ask.append((k, i, text))
            else:
                verdicts[(k, i)] = (False, "rule", None)
        if ask:
            langs = [_lang(records[k], c.lang, c.language_field) for k, _, _ in ask]
            prompts = [render(load_template("refusal", lang, c.template_dir),
                              prompt=conversation_text(records[k].get(c.prompt_field, "")), response=text)
                       for (k, i, text), lang in zip(ask, langs)]
            judgments = ask_by_lang(self._client("judge", self.judge_llm), prompts, [parse_refusal] * len(prompts),
                                    langs, attempts=c.attempts, template_dir=c.template_dir, max_tokens=c.max_tokens)
            for (k, i, _), j in zip(ask, judgments):
                verdicts[(k, i)] = (None, "judge", j.error) if j.failed else (j.parsed, "judge", None)
        for k, r in enumerate(records):
            yield self._outcome(r, verdicts, k)

    def _outcome(self, record: dict, verdicts: dict, k: int) -> Outcome:
        c = self.config
        label = lambda v: {c.output_field: v[0], f"{c.output_field}_by": v[1],  # noqa: E731
                           **({f"{c.output_field}_error": v[2]} if v[2] else {})}
        if isinstance(record[c.response_field], str):
            return keep(record, **label(verdicts[(k, None)]))
        responses = [{**resp, **label(verdicts[(k, i)])} for i, resp in enumerate(record[c.response_field])]
        return keep(record, **{c.response_field: responses})


class RefusalGovernConfig(Strict):
    """Cap the share of refusals per category (report 3.2: "strictly controlling the proportion of refusals")."""

    cap: float = Field(0.1, ge=0, le=1, description="Most refusals a category keeps, as a share of its kept records.")
    category_field: str = Field("labels.domain", description="Dotted path of the category (missing: 'none').")
    refusal_field: str = Field("refusal", description="refusal_label's output (true / false).")
    seed: int = Field(0, description="Which refusals are kept (a seeded choice per category).")


@register
class RefusalGovern(Step):
    type = "refusal_govern"
    Config = RefusalGovernConfig
    mode = "global"

    def run_all(self, records: list[dict], pmap: Callable) -> list[Outcome]:
        c = self.config
        decided = [i for i, r in enumerate(records) if isinstance(r.get(c.refusal_field), bool)]
        outcomes: list[Outcome | None] = [None] * len(records)
        for i, r in enumerate(records):
            if not isinstance(r.get(c.refusal_field), bool):
                outcomes[i] = drop(r, "refusal undecided", error=r.get(f"{c.refusal_field}_error"))
        cats = [str(get_path(records[i], c.category_field, "none")) for i in decided]
        flags, report = govern(cats, [records[i][c.refusal_field] for i in decided], c.cap, c.seed)
        for i, cat, kept in zip(decided, cats, flags):
            outcomes[i] = keep(records[i]) if kept else drop(records[i], "refusal over the cap", category=cat,
                                                             share=report[cat]["share"], cap=c.cap)
        self.report = report
        return outcomes  # type: ignore[return-value]


class RefusalConstraintsConfig(Strict):
    """The refusal constraint in the system message of prompts in the named categories (report 3.2)."""

    prompt_field: str = Field("prompt")
    category_field: str = Field("labels.domain")
    categories: list[str] | None = Field(["safety", "timeliness", "functionality"], description="Categories that "
                                         "get the constraint (None: every prompt).")
    text: dict[str, str] = Field(default_factory=lambda: dict(CONSTRAINTS), description="The constraint per language.")
    lang: Literal["en", "zh", "auto"] = Field("auto")
    language_field: str = Field("labels.language")
    output_field: str = Field("refusal_constraint", description="true on the prompts that got it.")


@register
class RefusalConstraints(Step):
    type = "refusal_constraints"
    Config = RefusalConstraintsConfig

    def input_fields(self):
        return {self.config.prompt_field: TEXT}

    def process_one(self, record: dict) -> Outcome:
        c = self.config
        cat = get_path(record, c.category_field)
        if c.categories is not None and cat not in c.categories:
            return keep(record, **{c.output_field: False})
        lang = _lang(record, c.lang, c.language_field)
        text = c.text.get(lang) or c.text.get("en")
        if not text:
            raise ValueError(f"refusal_constraints: no constraint text for {lang!r}")
        return keep(record, **{c.prompt_field: add_system_constraint(record[c.prompt_field], text), c.output_field: True})
