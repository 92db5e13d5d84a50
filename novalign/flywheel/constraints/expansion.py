"""Constraint expansion (report section 4.1, Figure 5 (b)): several LLMs propose constraints for a prompt from the
library's descriptions, a separate LLM validates their rationality and non-contradiction, and the validators
check that the chosen response satisfies every constraint.

Where AutoIF and Evol-Instruct loop until a model agrees, :func:`expand` runs at most ``max_rounds`` rounds;
a prompt still without an accepted constraint and a passing response after them is dropped with the reason of
its last round. Every rejected proposal is counted by reason (``unparsable proposal``, ``unknown type``, ``bad
params``, ``duplicate type``, ``contradiction``, ``judge rejected``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from novalign.eval.judge import load_template, parse_checklist, render
from novalign.flywheel.constraints.attributes import Ask, field_value, parse_json_object, with_level
from novalign.eval.constraints.library import REGISTRY, ConstraintError, check_all, describe, get, validate_params

__all__ = ["CONFLICTS", "ExpansionResult", "conflicts", "expand", "library_menu", "parse_proposal"]

# type pairs no response can satisfy together (checked before the LLM validator is asked)
CONFLICTS = {frozenset(p) for p in [
    ("change_case:english_capital", "change_case:english_lowercase"),
    ("detectable_format:json_format", "detectable_format:number_bullet_lists"),
    ("detectable_format:json_format", "format:numbered_list"),
    ("detectable_format:json_format", "format:table_shape"),
    ("detectable_format:json_format", "detectable_format:title"),
    ("detectable_format:json_format", "structure:heading_count"),
    ("detectable_format:json_format", "structure:section_order"),
    ("detectable_format:json_format", "startend:quotation"),
    ("detectable_format:json_format", "combination:two_responses"),
    ("format:json_keys", "detectable_format:number_bullet_lists"),
    ("format:json_keys", "startend:quotation"),
    ("change_case:english_lowercase", "change_case:capital_word_frequency"),
    ("change_case:english_lowercase", "detectable_content:postscript"),
    ("detectable_format:constrained_response", "length_constraints:number_words"),
    ("startend:quotation", "startend:end_checker"),
    ("language:response_language", "language:script"),
]}


def conflicts(constraints: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The pairs of :data:`CONFLICTS` among the constraints' types."""
    types = [c["type"] for c in constraints]
    return [(a, b) for i, a in enumerate(types) for b in types[i + 1:] if frozenset((a, b)) in CONFLICTS]


def library_menu(names: Sequence[str] | None = None, variant: int = 0) -> str:
    """One line per type for a proposing LLM: name, category, a description with example values, parameters."""
    lines = []
    for name in names or REGISTRY:
        t = get(name)
        params = ", ".join(f"{p.name}: {p.kind}" + (f" {list(p.choices)}" if p.choices else "") for p in t.params)
        lines.append(f"- {name} | {t.category} | {describe(name, t.example, variant)} | {params or 'none'}")
    return "\n".join(lines)


def parse_proposal(text: str | None) -> list[Any]:
    """The ``constraints`` list of a proposer's JSON reply; ``ValueError`` if there is none."""
    value = parse_json_object(text)
    items = value.get("constraints")
    if not isinstance(items, list):
        raise ValueError("the reply's JSON has no 'constraints' list")
    return items


@dataclass
class ExpansionResult:
    """Kept records (with ``prompt``, ``response``, ``constraints``), dropped ``(record, reason)`` pairs, and the
    per-reason counts of rejected proposals and failed rounds."""

    kept: list[dict] = field(default_factory=list)
    dropped: list[tuple[dict, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    per_record: dict[int, Counter] = field(default_factory=dict)  # input position -> its own counts


def _screen(raw: list[Any], existing: list[dict], counts: Counter) -> list[dict]:
    """Well-formed, new, mutually compatible constraints of one proposal, in order; the rest counted."""
    chosen: list[dict] = []
    for item in raw:
        try:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                raise ConstraintError("not an object with a type")
            if item["type"] not in REGISTRY:
                counts["unknown type"] += 1
                continue
            params = validate_params(item["type"], item.get("params") or {})
        except ConstraintError:
            counts["bad params"] += 1
            continue
        if any(c["type"] == item["type"] for c in [*existing, *chosen]):
            counts["duplicate type"] += 1
            continue
        text = item.get("text") if isinstance(item.get("text"), str) and item["text"].strip() else None
        candidate = {"type": item["type"], "params": params, "text": text or describe(item["type"], params)}
        if conflicts([*existing, *chosen, candidate]):
            counts["contradiction"] += 1
            continue
        chosen.append(candidate)
    return chosen


def _numbered(constraints: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(f"{i}. {c['text']}" for i, c in enumerate(constraints, 1))


class _Run:
    """The state of one :func:`expand` call: the per-record counts and last failure reasons."""

    def __init__(self, records: Sequence[dict], result: ExpansionResult, fields: dict[str, str]):
        self.position = {id(r): i for i, r in enumerate(records)}
        self.result, self.last_reason, self.f = result, {}, fields

    def counts(self, record: dict) -> Counter:
        return self.result.per_record.setdefault(self.position[id(record)], Counter())

    def fail(self, record: dict, reason: str, count: str | None = None) -> None:
        self.last_reason[id(record)] = reason
        if count:
            self.counts(record)[count] += 1

    def propose(self, pending: list[dict], proposers: Mapping[str, Ask], asks: list, max_new: int) -> list[tuple]:
        """``(record, existing, chosen)`` for the records with a screened proposal."""
        proposals = {name: ask(asks) for name, ask in proposers.items()}
        staged = []
        for i, record in enumerate(pending):
            existing, chosen = list(record.get(self.f["constraints"]) or []), []
            for name in proposers:
                try:
                    raw = parse_proposal(proposals[name][i])
                except ValueError:
                    self.counts(record)["unparsable proposal"] += 1
                    continue
                chosen += _screen(raw, existing + chosen, self.counts(record))
            if chosen:
                staged.append((record, existing, chosen[:max_new]))
            else:
                self.fail(record, "no valid proposal")
        return staged

    def validate(self, staged: list[tuple], judge: Ask, template: str) -> list[tuple]:
        """``(record, new prompt, all constraints)`` for the records whose judge accepted a constraint."""
        pf = self.f["prompt"]
        verdicts = judge([[{"role": "user", "content": render(template, prompt=r[pf], constraints=_numbered(c))}]
                          for r, _, c in staged])
        accepted = []
        for (record, existing, chosen), reply in zip(staged, verdicts):
            try:
                marks = parse_checklist(reply, len(chosen)) if reply is not None else None
            except ValueError:
                marks = None
            if marks is None:
                self.fail(record, "judge failed", "judge failed")
                continue
            self.counts(record)["judge rejected"] += marks.count(False)
            kept = [c for c, ok in zip(chosen, marks) if ok]
            if not kept:
                self.fail(record, "no constraint accepted")
                continue
            accepted.append((record, record[pf].rstrip() + " " + " ".join(c["text"] for c in kept), existing + kept))
        return accepted

    def respond(self, accepted: list[tuple], responder: Ask | None, round_no: int) -> set[int]:
        """Keep the accepted records whose response passes every validator; returns their ids."""
        rf = self.f["response"]
        need = [a for a in accepted if not isinstance(a[0].get(rf), str)]
        if need and responder is None:
            raise ValueError(f"records without `{rf}` need a responder model")
        replies = iter(responder([[{"role": "user", "content": p}] for _, p, _ in need]) if need else [])
        done = set()
        for record, prompt, constraints in accepted:
            response = record[rf] if isinstance(record.get(rf), str) else next(replies)
            if response is None or not all(check_all(response, constraints)):
                self.fail(record, "response fails a constraint", "response fails a constraint")
                continue
            self.result.kept.append({
                **with_level(record, constraints), self.f["prompt"]: prompt, rf: response,
                self.f["constraints"]: constraints,
                "expansion": {"round": round_no, "original_prompt": record[self.f["prompt"]],
                              "rejected": dict(sorted(self.counts(record).items()))}})
            done.add(id(record))
        return done


def expand(records: Sequence[dict], proposers: Mapping[str, Ask], judge: Ask, responder: Ask | None = None, *,
           prompt_field: str = "prompt", response_field: str = "response", constraints_field: str = "constraints",
           quality_field: str | None = None, min_quality: float | None = None, max_new: int = 2,
           max_rounds: int = 3, seed: int = 0, template_dir: str | None = None) -> ExpansionResult:
    """Expand each record's prompt with up to ``max_new`` validated constraints (module docstring).

    Per round, for every prompt still pending: each proposer is asked once (batched over prompts); the
    proposals are screened (:func:`_screen`), the first ``max_new`` survivors go to ``judge`` as a checklist
    (:func:`~novalign.eval.judge.parse_checklist`), the accepted ones are appended to the prompt; then the
    response is checked by the validators: the record's own ``response_field`` if it has one, else
    ``responder``'s reply to the new prompt. A prompt whose round fails in any way is tried again next round.
    """
    if max_rounds < 1 or max_new < 1:
        raise ValueError("max_rounds and max_new must be >= 1")
    propose_t = load_template("ifdata_propose", "en", template_dir)
    validate_t = load_template("ifdata_validate", "en", template_dir)
    result = ExpansionResult()
    run = _Run(records, result, {"prompt": prompt_field, "response": response_field, "constraints": constraints_field})
    pending: list[dict] = []
    for r in records:
        q = field_value(r, quality_field)
        if min_quality is not None and (not isinstance(q, (int, float)) or q < min_quality):
            result.dropped.append((r, "below min quality"))
        else:
            pending.append(r)
    rng = random.Random(seed)
    for round_no in range(1, max_rounds + 1):
        if not pending:
            break
        asks = [[{"role": "user", "content": render(propose_t, prompt=r[prompt_field], max_new=max_new,
                                                    library=library_menu(variant=rng.randrange(3)))}] for r in pending]
        staged = run.propose(pending, proposers, asks, max_new)
        done = run.respond(run.validate(staged, judge, validate_t), responder, round_no)
        pending = [r for r in pending if id(r) not in done]
    for record in pending:
        reason = run.last_reason.get(id(record), "no valid proposal")
        result.dropped.append((record, f"{reason} after {max_rounds} rounds"))
    for c in result.per_record.values():
        result.counts.update(c)
    return result
