"""``novalign pas build-data``: the PAS dataset in the report's three steps (section 4.6).

1. Scenario categories with their response-style requirements, and human-written seeds
   (``novalign/assets/pas/categories.yaml``, ``seeds.jsonl``; both replaceable).
2. Few-shot synthesis: for each pool prompt, an LLM sees seed examples (same category first) and returns
   ``{"category", "complement"}`` -- validated against the category list, re-asked when it does not parse.
3. Self-correction: the rule checks of :mod:`novalign.pas.rules` run first; then an LLM checks the pair
   (answers the prompt? contradicts it? too long?) and returns ``keep`` / ``rewrite`` / ``drop`` with a
   reason and, for ``rewrite``, a new complement. :func:`decide` combines both; the verdict and reason stay
   on the record (``check``).

Output: ``prompt, complement, category, check`` JSONL (appended, so a rerun resumes where it stopped; the LLM
cache makes repeated calls free). Dropped records go to ``<output>.dropped.jsonl`` and failed LLM calls to
``<output>.failed.jsonl`` -- nothing is lost silently. The category balance is printed and returned.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, Field, create_model, model_validator

from novalign.data.io import DataError, SkipReport, iter_records
from novalign.pas.augment import constrain_to_scope
from novalign.pas.rules import rule_problems

__all__ = [
    "Category", "CheckReply", "Seed", "category_balance", "check_messages", "decide", "load_categories",
    "load_seeds", "pick_shots", "read_pool", "synthesis_messages", "synthesis_schema",
]


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    style: str


@dataclass(frozen=True)
class Seed:
    prompt: str
    complement: str
    category: str


def _asset(name: str) -> Path:
    return Path(str(resources.files("novalign").joinpath("assets", "pas", name)))


def load_categories(path: str | Path | None = None) -> list[Category]:
    """The category YAML: a list of ``{name, description, style}``. Errors name the file, entry and field."""
    path = Path(path) if path is not None else _asset("categories.yaml")
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not entries:
        raise DataError(path, None, None, "must be a non-empty YAML list of {name, description, style}")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        for key in ("name", "description", "style"):
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str) or not entry[key].strip():
                raise DataError(path, i + 1, key, "must be a non-empty string (entry number given as line)")
        if entry["name"] in seen:
            raise DataError(path, i + 1, "name", f"duplicate category {entry['name']!r}")
        seen.add(entry["name"])
        out.append(Category(entry["name"], entry["description"].strip(), entry["style"].strip()))
    return out


def _string_field(path, line: int, record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, line, key, "must be a non-empty string", reason=f"bad {key}")
    return value


def load_seeds(categories: Sequence[Category], path: str | Path | None = None) -> list[Seed]:
    """Seed examples ``{prompt, complement, category}``; the category must be one of ``categories``."""
    path = Path(path) if path is not None else _asset("seeds.jsonl")
    names = {c.name for c in categories}
    seeds = []
    for line, record in iter_records(path):
        seed = Seed(*(_string_field(path, line, record, k) for k in ("prompt", "complement", "category")))
        if seed.category not in names:
            raise DataError(path, line, "category", f"unknown category {seed.category!r}", reason="unknown category")
        seeds.append(seed)
    return seeds


def read_pool(files: Sequence[str], categories: Sequence[Category], skip: SkipReport | None = None) -> list[dict]:
    """Pool records ``{prompt, category?, search_keywords?, complement?}``; bad ones raise (or are counted in
    ``skip``). A record that already has a complement skips synthesis and is only checked (step 3)."""
    names = {c.name for c in categories}
    out = []
    for path in files:
        seen = skip.total if skip is not None else 0
        start = len(out)
        for line, record in iter_records(path, skip=skip):  # malformed lines honour skip_invalid too
            try:
                item = {"prompt": _string_field(path, line, record, "prompt")}
                category = record.get("category")
                if category is not None:
                    if category not in names:
                        raise DataError(path, line, "category", f"unknown category {category!r}", reason="unknown category")
                    item["category"] = category
                if record.get("complement") is not None:  # an existing complement: only self-corrected
                    item["complement"] = _string_field(path, line, record, "complement")
                    if "category" not in item:
                        raise DataError(path, line, "category", "a record with a complement needs its category",
                                        reason="missing category")
                keywords = record.get("search_keywords")
                if keywords is not None:
                    if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
                        raise DataError(path, line, "search_keywords", "must be a list of non-empty strings",
                                        reason="bad search_keywords")
                    item["search_keywords"] = keywords
            except DataError as err:
                if skip is None:
                    raise
                skip.add(err)
                continue
            out.append(item)
        if len(out) == start and (skip.total if skip is not None else 0) == seen:
            raise DataError(path, None, None, "the file holds no records", reason="empty file")
    return out


def pick_shots(seeds: Sequence[Seed], category: str | None, k: int, key: str, seed: int = 0) -> list[Seed]:
    """``k`` seeds for one prompt: those of its category first, the rest from other categories, each group
    shuffled by a generator seeded with (``seed``, ``key``) so the choice is reproducible per prompt."""
    rng = random.Random(f"{seed}:{key}")
    same = [s for s in seeds if s.category == category]
    other = [s for s in seeds if s.category != category]
    rng.shuffle(same)
    rng.shuffle(other)
    return (same + other)[:k]


def synthesis_schema(categories: Sequence[Category]) -> type[BaseModel]:
    """The reply model of the synthesis step: ``category`` must be one of the known names."""
    names = tuple(c.name for c in categories)
    return create_model("PASComplement", category=(Literal[names], ...), complement=(str, Field(min_length=1)))


def _user_turn(prompt: str, keywords: Sequence[str]) -> str:
    extra = f"\nSearch keywords (keep the complement within their scope): {', '.join(keywords)}" if keywords else ""
    return f"User prompt:\n{prompt}{extra}"


def synthesis_messages(prompt: str, categories: Sequence[Category], shots: Sequence[Seed], *,
                       category: str | None = None, keywords: Sequence[str] = (), max_words: int = 40) -> list[dict]:
    """Few-shot chat for one pool prompt: the rules and categories, seed turns, then the prompt."""
    table = "\n".join(f"- {c.name}: {c.description} Response style: {c.style}" for c in categories)
    fixed = f" The category is {category}." if category else " Choose the category that fits best."
    system = (
        "You write complements for a Prompt Augmentation System. A complement is added to a user's prompt before "
        "the main model answers it. It supplements the prompt -- scenario requirements, non-mandatory extensions "
        "of the user's intent, format guidance -- and never answers it. Give general methods and strategies, not "
        f"specific details; about 30 words, at most {max_words}.\n\nCategories and the response style each needs:\n"
        f"{table}\n\nReply with only a JSON object: {{\"category\": <name>, \"complement\": <text>}}.{fixed}"
    )
    messages = [{"role": "system", "content": system}]
    for shot in shots:
        messages.append({"role": "user", "content": _user_turn(shot.prompt, ())})
        messages.append({"role": "assistant", "content": json.dumps({"category": shot.category,
                                                                      "complement": shot.complement})})
    messages.append({"role": "user", "content": _user_turn(prompt, keywords)})
    return messages


class CheckReply(BaseModel):
    """The self-correction verdict an LLM returns for one (prompt, complement)."""

    verdict: Literal["keep", "rewrite", "drop"]
    problems: list[Literal["answers_prompt", "contradicts_prompt", "too_long", "off_style", "other"]] = []
    reason: str = Field(min_length=1)
    rewrite: str | None = None

    @model_validator(mode="after")
    def _rewrite_has_text(self) -> "CheckReply":
        if self.verdict == "rewrite" and not (self.rewrite or "").strip():
            raise ValueError("verdict 'rewrite' needs the new complement in 'rewrite'")
        return self


def check_messages(prompt: str, complement: str, category: Category | None, findings: Sequence[str], *,
                   max_words: int = 40) -> list[dict]:
    """The self-correction request: the criteria, the rule findings, and the pair to judge."""
    style = f"\nCategory: {category.name}. Required response style: {category.style}" if category else ""
    noted = f"\nAutomatic checks found: {', '.join(findings)}." if findings else ""
    system = (
        "You check complements written for a Prompt Augmentation System. A good complement supplements the user's "
        "prompt with requirements, intent extensions or format guidance for the answering model. Reject or fix it "
        "if it (1) answers the prompt instead of complementing it, (2) contradicts the prompt, or (3) is longer "
        f"than {max_words} words. Reply with only a JSON object: {{\"verdict\": \"keep\" | \"rewrite\" | \"drop\", "
        "\"problems\": [\"answers_prompt\" | \"contradicts_prompt\" | \"too_long\" | \"off_style\" | \"other\"], "
        "\"reason\": <one sentence>, \"rewrite\": <the corrected complement, for verdict rewrite>}."
    )
    user = f"User prompt:\n{prompt}\n\nComplement:\n{complement}{style}{noted}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def decide(complement: str, rules: Sequence[str], llm: CheckReply | None, llm_error: str | None, *,
           max_words: int = 40, min_words: int = 3) -> tuple[str | None, dict[str, Any]]:
    """Combine the rule check and the LLM check into the final complement (``None``: drop) and the ``check``.

    * LLM verdict ``drop`` -> drop.
    * An LLM rewrite (verdict ``rewrite``, or ``keep`` while the rules found problems) is used if it passes the
      rules itself; otherwise drop.
    * ``keep`` with no rule problems -> keep. ``keep`` with rule problems and no rewrite -> drop: the rules veto.
    * No LLM verdict (the call failed): keep iff the rules found nothing.
    """
    check: dict[str, Any] = {"rule_problems": list(rules)}
    if llm is None:
        check["llm"] = f"unavailable: {llm_error}"
        verdict = "drop" if rules else "keep"
        why = "rule check: " + ", ".join(rules) if rules else "rule check passed (no LLM verdict)"
        return (None if rules else complement), check | {"verdict": verdict, "reason": why}
    check |= {"llm_verdict": llm.verdict, "llm_problems": list(llm.problems), "llm_reason": llm.reason}
    if llm.verdict == "drop":
        return None, check | {"verdict": "drop", "reason": llm.reason}
    if llm.verdict == "keep" and not rules:
        return complement, check | {"verdict": "keep", "reason": llm.reason}
    if llm.rewrite and llm.rewrite.strip():
        again = rule_problems(llm.rewrite, max_words=max_words, min_words=min_words)
        if not again:
            return llm.rewrite.strip(), check | {"verdict": "rewrite", "reason": llm.reason, "original": complement}
        return None, check | {"verdict": "drop", "reason": "the rewrite fails the rule check: " + ", ".join(again)}
    return None, check | {"verdict": "drop", "reason": "rule check: " + ", ".join(rules)}


def scope_findings(item: dict, complement: str) -> list[str]:
    """RAG pool records: sentences straying outside the search keywords' scope are a finding too."""
    keywords = item.get("search_keywords") or ()
    if not keywords:
        return []
    _, report = constrain_to_scope(complement, item["prompt"], keywords, policy="flag")
    return [] if report["in_scope"] else ["off_scope:" + ",".join(w for ws in report["strays"] for w in ws)]


def category_balance(records: Sequence[dict], categories: Sequence[Category]) -> dict[str, Any]:
    """Counts and shares per category (zeros included) and the max/min ratio over non-empty ones.

    Example: 3 coding, 1 math, 0 planning -> counts {coding 3, math 1, planning 0}, shares 0.75 / 0.25 / 0,
    ``imbalance`` 3.0, ``missing`` ["planning"].
    """
    counts = Counter(r["category"] for r in records)
    total = sum(counts.values())
    table = {c.name: counts.get(c.name, 0) for c in categories}
    present = [n for n in table.values() if n]
    return {
        "total": total, "counts": table,
        "shares": {k: (v / total if total else 0.0) for k, v in table.items()},
        "imbalance": (max(present) / min(present)) if present else None,
        "missing": [k for k, v in table.items() if not v],
    }
