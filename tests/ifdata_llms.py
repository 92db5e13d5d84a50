"""Simulated external LLMs for the IF-data loops: deterministic stand-ins for third-party models (never novalign
components), used by tests/test_ifdata.py (served over HTTP by tests/scripted_llm.py) and bench/constraints.py
(called in-process). Each is ``reply(messages) -> str``, a pure function of the conversation.

* :func:`writer` -- response reversal's prompt writer, an imperfect one: in the first round it states each
  listed attribute with probability ``p_first``, in a revision each missing one with probability ``p_fix``
  (the draws hash the text and the attribute, so runs repeat).
* :func:`inspector` -- lists the attributes whose description is not in the prompt word for word.
"""

from __future__ import annotations

import hashlib
import json
import re


def _draw(*parts: str) -> float:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _lines(block: str) -> list[tuple[str, str]]:
    return re.findall(r"^\[(a\d+)\] (.+)$", block, re.MULTILINE)


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def writer(messages: list[dict], p_first: float = 0.6, p_fix: float = 0.85) -> str:
    content = messages[-1]["content"]
    text = content.rsplit("Text:\n", 1)[1].split("\n\n", 1)[0]
    if "Prompt so far:" in content:  # a revision
        previous = content.split("Prompt so far:\n", 1)[1].rsplit("\n\nReply with only", 1)[0]
        missing = _lines(_between(content, "missing properties:\n", "\n\nReviewer"))
        added = [d for i, d in missing if _draw(text, i, "fix", previous) < p_fix]  # a new draw per revision
        return " ".join([previous, *added])
    wanted = _lines(_between(content, "with its exact numbers and names:\n", "\n\nText:"))
    stated = [d for i, d in wanted if _draw(text, i, "first") < p_first]
    topic = " ".join(re.findall(r"[A-Za-z]+", text)[:4]).lower()  # letters only: no number or marker leaks in
    return " ".join([f"Write a text about {topic}.", *stated])


def inspector(messages: list[dict]) -> str:
    content = messages[-1]["content"]
    attributes = _lines(_between(content, "Properties of the text:\n", "\n\nText:"))
    prompt = content.split("Prompt:\n", 1)[1].rsplit("\n\nReply with only", 1)[0]
    missing = [i for i, d in attributes if d not in prompt]
    return json.dumps({"score": 9 if not missing else 5, "missing": missing,
                       "suggestions": "state the missing properties" if missing else ""})
