"""Response reversal (report section 4.1, Figure 5 (c)): a high-quality text becomes the response, an LLM writes
the prompt it answers with the text's own attributes stated as constraints, an inspector LLM scores the prompt
and lists what is missing, and the prompt is revised -- at most ``max_rounds`` times -- until every attribute
the validators detect in the text (:func:`~novalign.flywheel.constraints.attributes.detect_attributes`) is
stated in it (:func:`~novalign.eval.constraints.library.expressed`).

The inspector's ``missing`` ids and suggestions feed the next revision together with the attributes the
deterministic check finds unstated; the stopping rule is the deterministic one, so a lenient inspector cannot
end the loop early. Attribute recall after each round is recorded on the output record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from novalign.eval.judge import load_template, render
from novalign.flywheel.constraints.attributes import Ask, detect_attributes, field_value, parse_json_object, with_level
from novalign.eval.constraints.library import expressed

__all__ = ["ReversalResult", "attribute_lines", "parse_inspection", "reverse"]


def attribute_lines(attributes: Sequence[dict], ids: Sequence[int] | None = None) -> str:
    """``[a1] <description>`` lines, the ids the inspector answers with."""
    chosen = range(len(attributes)) if ids is None else ids
    return "\n".join(f"[a{i + 1}] {attributes[i]['text']}" for i in chosen)


def parse_inspection(text: str | None, n: int) -> tuple[float, list[int], str]:
    """``(score, missing attribute indexes, suggestions)`` from the inspector's JSON; ``ValueError`` if malformed
    (score not a number in 1..10, an id not among ``a1..a<n>``)."""
    value = parse_json_object(text)
    score = value.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 10:
        raise ValueError(f"score must be a number in 1..10, got {score!r}")
    missing = value.get("missing", [])
    if not isinstance(missing, list):
        raise ValueError("missing must be a list of attribute ids")
    indexes = []
    for m in missing:
        if not (isinstance(m, str) and m.startswith("a") and m[1:].isdigit() and 1 <= int(m[1:]) <= n):
            raise ValueError(f"unknown attribute id {m!r} (known: a1..a{n})")
        indexes.append(int(m[1:]) - 1)
    suggestions = value.get("suggestions", "")
    return float(score), sorted(set(indexes)), suggestions if isinstance(suggestions, str) else ""


@dataclass
class ReversalResult:
    kept: list[dict] = field(default_factory=list)
    dropped: list[tuple[dict, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    recall_by_round: list[list[float]] = field(default_factory=list)  # [round][record]: attribute recall


def _unstated(attributes: list[dict], prompt: str | None) -> list[int]:
    return [i for i, a in enumerate(attributes) if prompt is None or not expressed(a, prompt)]


def reverse(records: Sequence[dict], writer: Ask, inspector: Ask, *, text_field: str = "text",
            quality_field: str | None = None, min_quality: float | None = None, max_rounds: int = 3,
            keep_incomplete: bool = False, template_dir: str | None = None) -> ReversalResult:
    """Reverse every text into a ``{prompt, response, constraints}`` record (module docstring).

    Drops: ``below min quality``, ``no detectable attributes``, and (unless ``keep_incomplete``) ``attributes
    missing after <max_rounds> rounds``. ``counts`` has ``writer failed`` and ``inspector failed`` calls.
    """
    if max_rounds < 1:
        raise ValueError("max_rounds must be >= 1")
    first_t = load_template("ifdata_reverse", "en", template_dir)
    revise_t = load_template("ifdata_revise", "en", template_dir)
    inspect_t = load_template("ifdata_inspect", "en", template_dir)
    result = ReversalResult()
    work = []  # [record, attributes, prompt, missing, suggestions, recalls, score]
    for r in records:
        q = field_value(r, quality_field)
        if min_quality is not None and (not isinstance(q, (int, float)) or q < min_quality):
            result.dropped.append((r, "below min quality"))
            continue
        attributes = detect_attributes(r[text_field])
        if not attributes:
            result.dropped.append((r, "no detectable attributes"))
            continue
        work.append({"record": r, "attributes": attributes, "prompt": None, "missing": list(range(len(attributes))),
                     "suggestions": "", "recall": [], "score": None})
    active = list(work)
    for round_no in range(1, max_rounds + 1):
        if not active:
            break
        asks = []
        for w in active:
            text, attrs = w["record"][text_field], w["attributes"]
            if w["prompt"] is None:
                content = render(first_t, text=text, attributes=attribute_lines(attrs))
            else:
                content = render(revise_t, text=text, attributes=attribute_lines(attrs), previous=w["prompt"],
                                 missing=attribute_lines(attrs, w["missing"]), suggestions=w["suggestions"] or "none")
            asks.append([{"role": "user", "content": content}])
        for w, reply in zip(active, writer(asks)):
            if reply is None or not reply.strip():
                result.counts["writer failed"] += 1
            else:
                w["prompt"] = reply.strip()
        inspections = inspector([[{"role": "user", "content": render(
            inspect_t, text=w["record"][text_field], prompt=w["prompt"] or "(none yet)",
            attributes=attribute_lines(w["attributes"]))}] for w in active])
        for w, reply in zip(active, inspections):
            unstated = _unstated(w["attributes"], w["prompt"])
            try:
                w["score"], flagged, w["suggestions"] = parse_inspection(reply, len(w["attributes"]))
            except ValueError:
                result.counts["inspector failed"] += 1
                flagged = []
            w["missing"] = sorted(set(unstated) | set(flagged))
            w["recall"].append(1 - len(unstated) / len(w["attributes"]))
        active = [w for w in active if _unstated(w["attributes"], w["prompt"])]
    for k in range(max_rounds):  # a record finished early keeps its recall in later rounds
        result.recall_by_round.append([w["recall"][min(k, len(w["recall"]) - 1)] for w in work])
    for w in work:
        complete = not _unstated(w["attributes"], w["prompt"])
        if w["prompt"] is None:
            result.dropped.append((w["record"], f"writer failed in all {max_rounds} rounds"))
            continue
        if not complete and not keep_incomplete:
            result.dropped.append((w["record"], f"attributes missing after {max_rounds} rounds"))
            continue
        result.kept.append({**with_level(w["record"], w["attributes"]), "prompt": w["prompt"], "response": w["record"][text_field],
                            "constraints": w["attributes"],
                            "reversal": {"rounds": len(w["recall"]), "recall": w["recall"],
                                         "inspector_score": w["score"], "complete": complete}})
    return result
