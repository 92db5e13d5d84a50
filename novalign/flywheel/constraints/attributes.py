"""What the validators can see in a text (its *attributes*, as constraint instances it satisfies), coverage
metrics of the library, and the batch-LLM adapter the IF-data loops share.

:func:`detect_attributes` is response reversal's ground truth (report 4.1: "incorporating the inherent
attributes of the response as constraints for the prompt"): only attributes a validator can check are
listed, and every listed one is checked to hold before it is returned.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from novalign.data.fields import get_path
from novalign.eval.ifeval import count_words
from novalign.eval.constraints.library import REGISTRY, check, instance, matching_types

__all__ = ["Ask", "client_ask", "constraint_level", "coverage", "detect_attributes", "field_value", "parse_json_object",
           "type_coverage", "with_level"]

# a batch of conversations -> one reply text each (None: the call failed after the client's retries)
Ask = Callable[[list[list[dict]]], list[str | None]]


def client_ask(client: Any, *, temperature: float = 0.0, max_tokens: int | None = 512, n: int = 1) -> Ask:
    """An :data:`Ask` over a :class:`~novalign.llm.LLMClient` (cache, limits, retries, accounting included)."""
    from novalign.llm.types import ChatRequest

    def ask(conversations: list[list[dict]]) -> list[str | None]:
        requests = [ChatRequest(messages=c, temperature=temperature, max_tokens=max_tokens, n=n) for c in conversations]
        return [r.text if r.ok else None for r in client.run_batch(requests, progress=False)]

    return ask


def field_value(record: Mapping[str, Any], path: str | None) -> Any:
    """The value at a dotted field path (``labels.quality``), or ``None`` where any part is missing."""
    return get_path(record, path) if path else None


def constraint_level(n: int) -> str:
    """The prompt taxonomy's constraint level (issue 16's labels): none, 1-2, 3 or more constraints."""
    return "unconstrained" if n == 0 else "simple" if n <= 2 else "strong"


def with_level(record: dict, constraints: Sequence[Any]) -> dict:
    """``record`` with ``labels.constraints`` set to the level of ``constraints`` (only when it has labels)."""
    if isinstance(record.get("labels"), dict):
        return {**record, "labels": {**record["labels"], "constraints": constraint_level(len(constraints))}}
    return record


def parse_json_object(text: str | None) -> dict:
    """The JSON object in a reply (fenced or not); ``ValueError`` naming what is wrong otherwise."""
    from novalign.llm.structured import extract_json

    if text is None:
        raise ValueError("the call failed")
    value = extract_json(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_LANG_FENCE = re.compile(r"```([A-Za-z+#]+)[ \t]*\n")


def _candidates(text: str) -> Iterable[tuple[str, dict]]:
    """Attribute guesses from the text's surface; :func:`detect_attributes` keeps those that validate."""
    words = count_words(text)
    if words >= 10:
        yield "length_constraints:number_words", {"num_words": words // 10 * 10, "relation": "at least"}
    bullets = len(re.findall(r"^\s*\*[^\*].*$", text, re.M)) + len(re.findall(r"^\s*-.*$", text, re.M))
    if bullets:
        yield "detectable_format:number_bullet_lists", {"num_bullets": bullets}
    numbered = len(re.findall(r"^\s*\d+[.)]\s+\S", text, re.M))
    if numbered >= 2:
        yield "format:numbered_list", {"num_items": numbered}
    yield "detectable_format:title", {}
    rows = [ln for ln in text.splitlines() if ln.strip().startswith("|") and ln.strip().endswith("|")]
    if len(rows) >= 3:
        yield "format:table_shape", {"num_rows": len(rows) - 2, "num_columns": rows[0].strip().count("|") - 1}
    headings = _HEADING.findall(text)
    if len(headings) >= 2:
        yield "structure:section_order", {"sections": [h.strip() for h in headings]}
    elif headings:
        yield "structure:heading_count", {"num_headings": 1, "relation": "at least"}
    highlights = len([h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()])
    if highlights:
        yield "detectable_format:number_highlighted_sections", {"num_highlights": highlights}
    yield "detectable_content:postscript", {"postscript_marker": "P.S."}
    placeholders = len(re.findall(r"\[.*?\]", text))
    if placeholders:
        yield "detectable_content:number_placeholders", {"num_placeholders": placeholders}
    if text.strip()[:1] in "{[":
        yield "detectable_format:json_format", {}
    if sum(c.isalpha() for c in text) >= 20:
        yield "change_case:english_lowercase", {}
        yield "change_case:english_capital", {}
    if words >= 20:
        yield "punctuation:no_comma", {}
    yield "startend:quotation", {}
    for lang in dict.fromkeys(m.lower() for m in _LANG_FENCE.findall(text)):
        yield "format:code_block", {"language": lang}
    examples = len(re.findall(r"\bfor example\b|\bfor instance\b|\be\.g\.", text, re.I))
    if examples:
        yield "content:example_count", {"num_examples": examples, "relation": "at least"}
    if "***" in text:
        yield "length_constraints:number_paragraphs", {"num_paragraphs": len(re.split(r"\s?\*\*\*\s?", text.strip()))}
    yield "style:tone", {"tone": "enthusiastic"}


def detect_attributes(text: str) -> list[dict]:
    """The constraint instances ``text`` satisfies that its surface shows (length, lists, tables, headings and
    their order, title, postscript, placeholders, case, commas, quotes, code, examples, tone...), each checked
    by its validator; in a fixed order, one per type."""
    found, seen = [], set()
    for name, params in _candidates(text):
        if name in seen:
            continue
        item = instance(name, params)
        if check(item, text):
            found.append(item)
            seen.add(name)
    return found


def type_coverage(constraint_lists: Iterable[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The share of the library's types that occur in some record's constraints, with the counts per type."""
    counts = Counter(c["type"] for cs in constraint_lists for c in cs)
    return {"types_used": len(counts), "types_total": len(REGISTRY),
            "type_coverage": len(set(counts) & set(REGISTRY)) / len(REGISTRY), "per_type": dict(sorted(counts.items()))}


def coverage(instruction_constraints: Sequence[str]) -> dict[str, Any]:
    """The share of an instruction pool's constraint sentences that the library can express: those whose text
    matches some type's cues (report 4.1: "the coverage of constraint types in random instructions reaches up to
    90%"). Unmatched sentences are listed, so a user sees what the library lacks."""
    matched = [s for s in instruction_constraints if matching_types(s)]
    missing = [s for s in instruction_constraints if not matching_types(s)]
    total = len(instruction_constraints)
    return {"pool": total, "expressible": len(matched), "coverage": len(matched) / total if total else 0.0,
            "not_expressible": missing}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)
