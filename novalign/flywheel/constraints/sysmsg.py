"""System messages (report section 4.1, Figure 5 (a)): decompose existing system messages into components with an
LLM, keep component pools (deduplicated by the engine's dedup steps), and assemble new system messages from
components and constraint-rich prompts, with evolution and rationalization passes and a final filter.

Assembly is deterministic given its seed (:func:`assemble`): one component of each kind is drawn from the
pools, and the prompt's constraints are embedded in the constraints section. The LLM passes
(:func:`refine`) may rewrite the message, but a rewrite that no longer states one of the prompt's constraints
(:func:`~novalign.eval.constraints.library.expressed`) is rejected and counted, so evolution cannot lose
what the validators will check.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from novalign.eval.judge import load_template, parse_rating, render
from novalign.flywheel.constraints.attributes import Ask, parse_json_object
from novalign.eval.constraints.library import expressed

__all__ = ["KINDS", "PASS_TEMPLATES", "assemble", "decompose_messages", "draft", "filter_messages", "parse_decomposition",
           "pass_messages", "pools_of", "refine"]

KINDS = ("opening", "task", "workflow", "output_spec", "constraints")
_HEADINGS = {"task": "# Task", "workflow": "# Workflow", "output_spec": "# Output format", "constraints": "# Rules"}
PASS_TEMPLATES = {"evolution": "ifdata_evolve", "rationalization": "ifdata_rationalize"}


# The chat requests of the LLM calls, one function each, so that what a step sends can be reproduced exactly
# (tests train a tiny served model on these very prompts).
def decompose_messages(system: str, template: str) -> list[dict]:
    """The decomposition request for one system message (``template``: ``ifdata_decompose``)."""
    return [{"role": "user", "content": render(template, system=system)}]


def pass_messages(template: str, system: str, constraints: Sequence[Mapping[str, Any]]) -> list[dict]:
    """An evolution or rationalization request (``template``: one of :data:`PASS_TEMPLATES`) for ``system``
    that lists the ``constraints`` it must keep."""
    listed = "\n".join(f"- {c['text']}" for c in constraints) or "- (none)"
    return [{"role": "user", "content": render(template, system=system, constraints=listed)}]


def filter_messages(template: str, system: str) -> list[dict]:
    """The final filter's rating request (``template``: ``ifdata_sysfilter``)."""
    return [{"role": "user", "content": render(template, system=system)}]


def _text_list(value: Any, key: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError(f"{key!r} must be a string or a list of strings")


def parse_decomposition(text: str | None) -> list[tuple[str, str]]:
    """``(kind, text)`` components from the decomposing LLM's JSON: keys among :data:`KINDS`; a ``workflow``
    list is joined into numbered steps, each ``constraints`` item is its own component. ``ValueError`` for an
    unknown key, a wrongly typed value, or no component at all."""
    value = parse_json_object(text)
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown component key(s) {unknown} (expected {list(KINDS)})")
    out: list[tuple[str, str]] = []
    for kind in KINDS:
        items = _text_list(value.get(kind), kind)
        if kind == "workflow" and len(items) > 1:
            items = ["\n".join(f"{i}. {s}" for i, s in enumerate(items, 1))]
        out += [(kind, t) for t in items]
    if not out:
        raise ValueError("no component in the decomposition")
    return out


def pools_of(components: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Component records (``kind``, ``text``) grouped by kind, in order."""
    pools: dict[str, list[str]] = {k: [] for k in KINDS}
    for c in components:
        if c.get("kind") not in pools or not isinstance(c.get("text"), str):
            raise ValueError(f"a component record needs kind in {list(KINDS)} and a text, got {dict(c)!r}")
        pools[c["kind"]].append(c["text"])
    return pools


def assemble(pools: Mapping[str, Sequence[str]], constraints: Sequence[Mapping[str, Any]], rng: random.Random,
             extra_rules: int = 1) -> str:
    """A system message: an opening, task, workflow and output spec drawn from the pools (kinds with an empty
    pool are left out), then a rules section with ``extra_rules`` pool constraints and every constraint text of
    the prompt."""
    parts = []
    for kind in ("opening", "task", "workflow", "output_spec"):
        if pools.get(kind):
            text = rng.choice(list(pools[kind]))
            parts.append(text if kind == "opening" else f"{_HEADINGS[kind]}\n{text}")
    pool_rules = list(pools.get("constraints") or [])
    rules = rng.sample(pool_rules, min(extra_rules, len(pool_rules))) + [c["text"] for c in constraints]
    if rules:
        parts.append(_HEADINGS["constraints"] + "\n" + "\n".join(f"- {r}" for r in rules))
    return "\n\n".join(parts)


def draft(pools: Mapping[str, Sequence[str]], constraints: Sequence[Mapping[str, Any]], seed: int, record_id: str,
          extra_rules: int = 1) -> str:
    """:func:`assemble` with the record's own generator (``seed`` and its id), so a draft does not depend on
    which other records share its batch."""
    return assemble(pools, constraints, random.Random(f"{seed}/{record_id}"), extra_rules)


def refine(messages: list[str], constraints: Sequence[Sequence[Mapping[str, Any]]], llm: Ask, judge: Ask | None, *,
           evolution_rounds: int = 1, rationalize: bool = True, min_score: float = 6.0,
           template_dir: str | None = None) -> tuple[list[str | None], list[str | None], Counter]:
    """The LLM passes over assembled ``messages``: ``evolution_rounds`` evolutions, one rationalization, then the
    final filter (``judge``'s 1-10 rating, kept at >= ``min_score``). A rewrite is taken only when it still
    states every one of the message's ``constraints``; otherwise the message before it is kept and the
    rejection counted. Returns (final messages, drop reason per message or None, counts)."""
    evolve_t = load_template(PASS_TEMPLATES["evolution"], "en", template_dir)
    rational_t = load_template(PASS_TEMPLATES["rationalization"], "en", template_dir)
    counts: Counter = Counter()
    current = list(messages)
    passes = [("evolution", evolve_t)] * evolution_rounds + ([("rationalization", rational_t)] if rationalize else [])
    for name, template in passes:
        for i, reply in enumerate(llm([pass_messages(template, m, cs) for m, cs in zip(current, constraints)])):
            if reply is None or not reply.strip():
                counts[f"{name} failed"] += 1
            elif not all(expressed(c, reply) for c in constraints[i]):
                counts[f"{name} lost a constraint"] += 1
            else:
                current[i] = reply.strip()
                counts[f"{name} applied"] += 1
    reasons: list[str | None] = [None] * len(current)
    if judge is not None:
        filter_t = load_template("ifdata_sysfilter", "en", template_dir)
        for i, reply in enumerate(judge([filter_messages(filter_t, m) for m in current])):
            try:
                score = parse_rating(reply or "")
            except ValueError:
                reasons[i] = "filter judgment failed"
                continue
            if score < min_score:
                reasons[i] = "filtered as unreasonable"
    final = [None if r else m for m, r in zip(current, reasons)]
    return final, reasons, counts
