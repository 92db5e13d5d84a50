"""Tool definitions on a chat record: the OpenAI ``tools`` list, validated before it reaches the chat template.

A function-calling record carries the schemas of the tools its assistant may call::

    {"tools": [{"type": "function",
                "function": {"name": "weather", "description": "Today's weather in a city",
                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                            "required": ["city"]}}}],
     "messages": [...]}

(OpenAI's chat-completions ``tools`` parameter, https://platform.openai.com/docs/api-reference/chat/create).
Hugging Face chat templates receive the same list as ``tools`` (``apply_chat_template(..., tools=...)``) and
write it into the prompt, usually into the system turn; without it a model is trained to call tools it was
never shown. ShareGPT-style datasets often store the list as a JSON string; that is accepted too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from novalign.data.io import DataError

__all__ = ["check_tool_calls", "normalize_tools"]

# OpenAI's rule for function names: letters, digits, underscores and dashes, at most 64 characters
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def normalize_tools(raw: object, *, path: str, line: int) -> list[dict[str, Any]] | None:
    """The record's ``tools``, checked: ``None`` when absent (or an empty list), else the list of definitions.

    Each must be ``{"type": "function", "function": {"name", "description"?, "parameters"?}}`` with a unique
    name, a string description and, as parameters, a JSON Schema (checked against its meta-schema by
    ``jsonschema``) of ``"type": "object"``. Fields that are ``None`` (Parquet's absent struct fields) count
    as absent.

    Raises:
        DataError: naming ``path``, ``line`` and the field, e.g. ``tools[1].function.name``.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, line, "tools", f"a string must hold a JSON list of tools: {exc}",
                            reason="malformed tools") from exc
    if not isinstance(raw, list):
        raise DataError(path, line, "tools", f"must be a list of tool definitions, got {type(raw).__name__}",
                        reason="malformed tools")
    tools, seen = [], {}
    for i, tool in enumerate(raw):
        tools.append(_tool(tool, f"tools[{i}]", path, line))
        name = tools[-1]["function"]["name"]
        if name in seen:
            raise DataError(path, line, f"tools[{i}].function.name", f"duplicate tool name {name!r} (also tools[{seen[name]}])",
                            reason="malformed tools")
        seen[name] = i
    return tools or None


def _tool(tool: object, where: str, path: str, line: int) -> dict[str, Any]:
    def error(field: str, problem: str) -> DataError:
        return DataError(path, line, f"{where}{field}", problem, reason="malformed tools")

    if not isinstance(tool, dict):
        raise error("", f"must be an object, got {type(tool).__name__}")
    if tool.get("type") != "function":
        raise error(".type", f"must be 'function' (the only tool type chat templates render), got {tool.get('type')!r}")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise error(".function", "must be an object with name, description and parameters")
    function = {k: v for k, v in function.items() if v is not None}
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise error(".function.name", f"must be 1-64 letters, digits, '_' or '-', got {name!r}")
    if not isinstance(function.get("description", ""), str):
        raise error(".function.description", f"must be a string, got {type(function['description']).__name__}")
    if "parameters" in function:
        _check_parameters(function["parameters"], error)
    unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise error(".function", f"unknown fields {unknown} (expected name, description, parameters, strict)")
    return {"type": "function", "function": function}


def _check_parameters(schema: object, error: Any) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise error(".function.parameters", 'must be a JSON Schema object with "type": "object"')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise error(f".function.parameters{at}", f"not a valid JSON Schema: {exc.message}") from None


def check_tool_calls(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, path: str,
                     line: int) -> None:
    """Every assistant tool call names a tool of ``tools`` (when the record has tools).

    Raises:
        DataError: naming the call, e.g. ``messages[1].tool_calls[0].function.name``.
    """
    if tools is None:
        return
    names = {t["function"]["name"] for t in tools}
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if name not in names:
                raise DataError(path, line, f"messages[{i}].tool_calls[{j}].function.name",
                                f"calls {name!r}, which is not among the record's tools {sorted(names)}",
                                reason="tool call to an undefined tool")
