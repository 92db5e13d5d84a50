"""Instruction back-translation with self-curation (report section 3.2, after Li et al. 2023, "Self-Alignment
with Instruction Backtranslation" -- Humpback, https://arxiv.org/abs/2308.06259).

"we use text quality models to filter high-quality texts from public sources ... and then back-translate them
to generate corresponding creative instructions." Humpback's two steps: *self-augmentation* -- a model writes
the instruction ``x`` a text ``y`` answers -- and *self-curation* -- the model rates each ``(x, y)`` on a
5-point scale and only the top-rated pairs are kept (Humpback keeps score 5 in its final iteration; our
default keeps >= 4, configurable).

:func:`parse_after` reads a marked reply ("Instruction: ...", "Revision: ..."); :func:`parse_curation` the
curation score (exactly one ``[[N]]`` in 1..5, :func:`~novalign.eval.judge.parse_rating`); :func:`sft_pair`
the resulting SFT record.
"""

from __future__ import annotations

from typing import Any

__all__ = ["parse_after", "parse_instruction", "parse_curation", "sft_pair"]


def parse_after(text: str, marker: str) -> str:
    """The reply after the last ``marker`` (e.g. ``"Instruction:"``), or the whole reply when it has none; trimmed
    of spaces and surrounding quotes.

    Accepts: ``"Sure.\\nInstruction: Write a haiku about rain."`` -> ``"Write a haiku about rain."``.
    Rejects: an empty reply, or nothing after the marker.
    """
    from novalign.eval.judge import JudgeParseError

    at = text.rfind(marker)
    body = text[at + len(marker):] if at >= 0 else text
    body = body.strip().strip('"“”').strip()
    if not body:
        raise JudgeParseError(f"nothing after {marker!r}; reply with {marker} followed by the text")
    return body


def parse_instruction(text: str) -> str:
    return parse_after(text, "Instruction:")


def parse_curation(text: str) -> float:
    """Self-curation score: exactly one ``[[N]]`` with N in 1..5 (``"Score: [[4]]"`` -> 4.0)."""
    from novalign.eval.judge import parse_rating

    return parse_rating(text, low=1, high=5)


def sft_pair(record_id: str, instruction: str, text: str, score: float, extra: dict[str, Any] | None = None) -> dict:
    """The back-translated SFT record: ``{prompt, response, messages, curation_score, source_id}``."""
    return {"_id": f"{record_id}/bt", "prompt": instruction, "response": text,
            "messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": text}],
            "curation_score": score, "source_id": record_id, **(extra or {})}
