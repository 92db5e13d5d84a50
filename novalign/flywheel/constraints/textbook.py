"""Textbook responses (report section 4.1, Figure 5 (d), "instructional imitation"): for complex instructions, a
response that also teaches the intent, the reasoning, the pitfalls and how each constraint is met, then answers.

The prompt is an editable template (``textbook.en.txt``; put your own ``textbook.en.txt`` -- or any name given
as ``template`` -- in a ``template_dir``) with ``{prompt}`` and ``{constraints}``. The reply must have the
template's ``## <Section>`` headings; its ``## Answer`` section is checked against the record's constraints by
the validators, so a lesson whose answer breaks a constraint is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from novalign.eval.judge import load_template, render
from novalign.eval.constraints.library import check_all

__all__ = ["lesson_messages", "parse_lesson", "required_sections"]


def required_sections(template: str) -> list[str]:
    """The ``## Heading`` names a template asks for, in order (the last one holds the answer)."""
    return re.findall(r"^##\s+(.+?)\s*$", template, re.MULTILINE)


def lesson_messages(prompt: str, constraints: Sequence[Mapping[str, Any]], template: str) -> list[dict]:
    listed = "\n".join(f"- {c['text']}" for c in constraints) or "- (none stated)"
    return [{"role": "user", "content": render(template, prompt=prompt, constraints=listed)}]


def parse_lesson(reply: str | None, sections: Sequence[str],
                 constraints: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], str | None]:
    """``(sections found, drop reason or None)``: every section heading must be there, in order, non-empty, and
    the last section (the answer) must satisfy every constraint."""
    if reply is None:
        return {}, "generation failed"
    found: dict[str, str] = {}
    spans = [(m.group(1).strip(), m.start(), m.end()) for m in re.finditer(r"^##\s+(.+?)\s*$", reply, re.MULTILINE)]
    names = [s[0].lower() for s in spans]
    position = 0
    for name in sections:
        try:
            position = names.index(name.lower(), position)
        except ValueError:
            return found, f"missing section {name}"
        end = spans[position + 1][1] if position + 1 < len(spans) else len(reply)
        body = reply[spans[position][2]:end].strip()
        if not body:
            return found, f"empty section {name}"
        found[name] = body
        position += 1
    if constraints and not all(check_all(found[sections[-1]], constraints)):
        return found, "answer fails a constraint"
    return found, None


def load_lesson_template(name: str = "textbook", template_dir: str | None = None) -> str:
    template = load_template(name, "en", template_dir)
    if len(required_sections(template)) < 2:
        raise ValueError(f"textbook template {name!r} needs at least two '## Section' headings (the last: the answer)")
    return template
