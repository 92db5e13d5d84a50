"""Style cards (report section 3.2, Personalization): "some favor concise and direct answers, while others prefer
detailed and structured responses. By incorporating style descriptions corresponding to different response
styles into the prompts, we mitigate style preference conflicts".

A card is a named style description in English and Chinese; the ``style`` step puts one into a prompt's system
message (or after its last user turn) and writes the card's name on the record, so responses sampled, rated
and preferred under a style are compared only with responses of that style.
"""

from __future__ import annotations

import hashlib
from typing import Any

from novalign.flywheel.responses import messages_of

__all__ = ["STYLE_CARDS", "card_text", "apply_style", "pick_card"]

STYLE_CARDS: dict[str, dict[str, str]] = {
    "concise-direct": {
        "en": "Response style: concise and direct. Give the answer first, in as few words as it needs; no "
              "preamble, no restating the question, no closing summary.",
        "zh": "回答风格：简洁直接。先给出答案，用尽量少的文字说清楚；不要开场白，不要复述问题，不要结尾总结。",
    },
    "detailed-structured": {
        "en": "Response style: detailed and structured. Organize the answer with headings or numbered steps, "
              "explain the reasoning behind each step, and end with a short summary.",
        "zh": "回答风格：详细且有条理。用小标题或编号步骤组织回答，解释每一步的理由，最后给出简短总结。",
    },
}
"""The two built-in cards the report names; a config's ``cards`` adds user-defined ones (or replaces these)."""


def card_text(cards: dict[str, Any], name: str, lang: str) -> str:
    """The description of card ``name`` in ``lang`` (a card may be one string for every language)."""
    if name not in cards:
        raise ValueError(f"unknown style card {name!r}; known: {sorted(cards)}")
    card = cards[name]
    if isinstance(card, str):
        return card
    if lang in card:
        return card[lang]
    if "en" in card:
        return card["en"]
    raise ValueError(f"style card {name!r} has no text for {lang!r} (has {sorted(card)})")


def apply_style(prompt: Any, text: str, where: str = "system") -> list[dict]:
    """The prompt as messages with the style description in its system message (``where="system"``: appended
    to an existing one, else a new first turn) or after its last user turn (``where="prompt"``)."""
    messages = messages_of(prompt)
    if where == "system":
        if messages and messages[0].get("role") == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
            return messages
        return [{"role": "system", "content": text}, *messages]
    if where != "prompt":
        raise ValueError(f"where must be 'system' or 'prompt', got {where!r}")
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("the prompt has no user turn to put the style into")
    messages[last] = {**messages[last], "content": f"{messages[last]['content']}\n\n{text}"}
    return messages


def pick_card(record_id: str, names: list[str], seed: int = 0) -> str:
    """A card for a record, stable across runs and workers: names[sha256(seed:id) mod len(names)]."""
    h = int(hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()[:12], 16)
    return names[h % len(names)]
