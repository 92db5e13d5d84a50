"""Structured output: find the JSON in a reply, validate it, and word the re-ask when it is wrong.

The client sends ``response_format`` (JSON object, or the pydantic model's JSON schema) so that servers
which constrain decoding do so; it still checks every reply itself, because many servers do not. A reply
that fails is answered with a follow-up turn quoting the error, up to the configured number of attempts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from novalign.llm.types import ChatRequest

__all__ = ["extract_json", "check_reply", "reask_messages"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole reply, a fenced ```json block, or the first object/array in it.

    >>> extract_json('Sure: ```json\\n{"a": 1}\\n``` done')
    {'a': 1}

    Raises:
        ValueError: no JSON value found.
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    for block in _FENCE.findall(stripped):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(stripped):
        if ch in "{[":
            try:
                return decoder.raw_decode(stripped, i)[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("the reply contains no valid JSON value")


def check_reply(request: ChatRequest, text: str) -> tuple[Any, str | None]:
    """``(parsed, None)`` if ``text`` satisfies the request's JSON mode / schema, else ``(None, error)``."""
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, str(exc)
    if request.schema is None:
        if not isinstance(value, (dict, list)):
            return None, f"expected a JSON object, got {type(value).__name__}"
        return value, None
    try:
        return request.schema.model_validate(value), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        return None, f"the JSON does not match the schema: {problems}"


def reask_messages(request: ChatRequest, reply: str, error: str) -> list[dict]:
    """The conversation for the next attempt: ``request``'s messages (earlier attempts included), the bad
    reply, then a user turn naming what was wrong."""
    wanted = "a JSON object"
    if request.schema is not None:
        wanted += " matching this JSON schema: " + json.dumps(request.schema.model_json_schema(), separators=(",", ":"))
    note = f"Your reply could not be used: {error}. Answer again with only {wanted}."
    return [*request.messages, {"role": "assistant", "content": reply}, {"role": "user", "content": note}]
