"""Chat records: normalization, validation and tokenization with assistant masks.

Three input formats are accepted and normalized to OpenAI-style messages
(``{"role": ..., "content": ...}``):

* ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (OpenAI),
* ``{"conversations": [{"from": "human", "value": "..."}, ...]}`` (ShareGPT),
* ``{"prompt": "...", "response": "...", "system": "..."}`` (single turn).

Any of them may carry ``tools``, the OpenAI list of function definitions (:mod:`novalign.data.tools`); they
are passed to the chat template (``apply_chat_template(..., tools=...)``), which writes them into the prompt.

Tokenization renders the whole conversation with the tokenizer's chat
template and tokenizes the text once. Which tokens are trained is found
without knowing anything about the template: for every assistant turn the
conversation is also rendered up to the generation prompt before that turn and
through the end of that turn; the characters between the two renders are the
turn's own output (content plus end-of-turn marker), and tokens starting in
such a span are trained. Tool definitions, like system and user turns, are never trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import TemplateError

from novalign.data.io import DataError, SkipReport, read_valid
from novalign.data.tools import check_tool_calls, normalize_tools

__all__ = [
    "IGNORE_INDEX",
    "ChatTemplateError",
    "ControlTokenInContent",
    "SampleTooLong",
    "TokenizedSample",
    "ToolsNotRendered",
    "check_chat_tokenizer",
    "load_chat_dataset",
    "normalize_messages",
    "tokenize_conversation",
]

IGNORE_INDEX = -100
"""Label value for positions that are not trained on."""

TrainOn = Literal["all", "last"]

_OPENAI_ROLES = frozenset({"system", "user", "assistant", "tool"})
_SHAREGPT_ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}


# --------------------------------------------------------------------------- errors


class SampleTooLong(ValueError):
    """A tokenized conversation is longer than the allowed maximum."""

    def __init__(self, length: int, max_length: int) -> None:
        self.length = length
        self.max_length = max_length
        super().__init__(f"sequence has {length} tokens, more than max_length={max_length}")


class ControlTokenInContent(ValueError):
    """A message's text (``index``; ``None``: the tool definitions) contains a special token string (e.g.
    ``<|im_end|>``).

    Tokenizing the rendered text would turn it into the real control token,
    silently changing the conversation's structure.
    """

    def __init__(self, index: int | None, token: str) -> None:
        self.index = index
        self.token = token
        super().__init__(f"content contains the special token {token!r}")


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used for masked training."""


class ToolsNotRendered(ChatTemplateError):
    """The conversation has tool definitions but the chat template renders the same text without them."""


# --------------------------------------------------------------------------- normalization


def normalize_messages(record: dict[str, Any], *, path: str, line: int) -> list[dict[str, Any]]:
    """Convert a raw record to validated OpenAI-style messages.

    Accepts OpenAI ``messages``, ShareGPT ``conversations`` (with an optional
    top-level ``system`` string) or ``prompt``/``response`` records (optional
    ``system``). Extra keys on OpenAI messages (``tool_calls``,
    ``tool_call_id``, ``name``, ...) are kept unless their value is ``None``
    (Parquet fills absent struct fields with nulls).

    Raises:
        DataError: naming ``path``, ``line`` and the offending field, if the
            record has no known format, a message is malformed, the roles are
            out of order, there is no assistant turn, the last message is not
            an assistant turn, or an assistant turn is empty.
    """
    return _Normalizer(path, line).normalize(record)[0]


class _Normalizer:
    """Normalizes one record; remembers each message's raw field names for errors."""

    def __init__(self, path: str, line: int) -> None:
        self.path = path
        self.line = line
        self.messages: list[dict[str, Any]] = []
        self.role_fields: list[str] = []
        self.content_fields: list[str] = []

    def error(self, field: str | None, problem: str, reason: str) -> DataError:
        return DataError(self.path, self.line, field, problem, reason=reason)

    def normalize(self, record: object) -> tuple[list[dict[str, Any]], list[str]]:
        """Return the messages and, per message, the raw field holding its content."""
        if not isinstance(record, dict):
            raise self.error(None, "record is not an object", "not a JSON object")
        if "messages" in record:
            self._openai(record["messages"])
        elif "conversations" in record:
            self._sharegpt(record)
        elif "prompt" in record or "response" in record:
            self._system(record, skip_if=False)
            self._append("user", self._string(record.get("prompt"), "prompt"), "prompt", "prompt")
            self._append("assistant", self._string(record.get("response"), "response"), "response", "response")
        else:
            keys = ", ".join(sorted(map(str, record))) or "none"
            raise self.error(
                None,
                "unknown record format: expected 'messages', 'conversations' or 'prompt'/'response' "
                f"(found keys: {keys})",
                "unknown record format",
            )
        self._validate()
        return self.messages, self.content_fields

    def _append(self, role: str, content: str, role_field: str, content_field: str, **extra: Any) -> None:
        self.messages.append({"role": role, "content": content, **extra})
        self.role_fields.append(role_field)
        self.content_fields.append(content_field)

    def _string(self, value: object, field: str) -> str:
        if value is None:
            raise self.error(field, "missing field", "missing field")
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {type(value).__name__}", "non-string content")
        return value

    def _system(self, record: dict[str, Any], *, skip_if: bool) -> None:
        """Prepend the record's top-level ``system`` string, if any (and not ``skip_if``)."""
        if record.get("system") is None:
            return
        system = self._string(record["system"], "system")
        if system.strip() and not skip_if:
            self._append("system", system, "system", "system")

    def _list(self, raw: object, field: str) -> list[Any]:
        if not isinstance(raw, list):
            raise self.error(field, "must be a list of messages", "wrong type")
        if not raw:
            raise self.error(field, "empty conversation", "empty conversation")
        return raw

    def _openai(self, raw: object) -> None:
        for i, msg in enumerate(self._list(raw, "messages")):
            where = f"messages[{i}]"
            if not isinstance(msg, dict):
                raise self.error(where, "message must be an object", "wrong type")
            role = self._string(msg.get("role"), f"{where}.role")
            if role not in _OPENAI_ROLES:
                known = ", ".join(sorted(_OPENAI_ROLES))
                raise self.error(f"{where}.role", f"unknown role {role!r} (expected one of {known})", "unknown role")
            tool_calls = msg.get("tool_calls")
            if tool_calls is not None and (role != "assistant" or not isinstance(tool_calls, list)):
                raise self.error(f"{where}.tool_calls", "must be a list, on an assistant message", "wrong type")
            content = msg.get("content")
            if content is None and tool_calls:
                content = ""  # OpenAI allows null content on a pure tool-call turn
            content = self._string(content, f"{where}.content")
            extra = {k: v for k, v in msg.items() if k not in ("role", "content") and v is not None}
            self._append(role, content, f"{where}.role", f"{where}.content", **extra)

    def _sharegpt(self, record: dict[str, Any]) -> None:
        raw = self._list(record["conversations"], "conversations")
        first = raw[0].get("from") if isinstance(raw[0], dict) else None
        self._system(record, skip_if=first == "system")
        for i, turn in enumerate(raw):
            where = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise self.error(where, "turn must be an object", "wrong type")
            speaker = self._string(turn.get("from"), f"{where}.from")
            role = _SHAREGPT_ROLES.get(speaker.lower())
            if role is None:
                known = ", ".join(sorted(_SHAREGPT_ROLES))
                raise self.error(f"{where}.from", f"unknown role {speaker!r} (expected one of {known})", "unknown role")
            content = self._string(turn.get("value"), f"{where}.value")
            self._append(role, content, f"{where}.from", f"{where}.value")

    def _validate(self) -> None:
        """Check role order and assistant turns; see :func:`normalize_messages`."""
        messages = self.messages
        previous = "start"
        for i, msg in enumerate(messages):
            role = msg["role"]
            if previous not in _ALLOWED_BEFORE[role]:
                if role == "system":
                    problem = "a system message is only allowed as the first message"
                elif previous in ("start", "system"):
                    problem = f"conversation must start with a user message, not {role!r}"
                else:
                    problem = f"{role!r} message cannot follow {previous!r} message"
                raise self.error(self.role_fields[i], problem, "wrong role order")
            if role == "assistant" and not msg["content"].strip() and not msg.get("tool_calls"):
                raise self.error(self.content_fields[i], "empty assistant turn", "empty assistant turn")
            previous = role
        if not any(m["role"] == "assistant" for m in messages):
            raise self.error(None, "conversation has no assistant turn", "no assistant turn")
        if previous != "assistant":
            raise self.error(
                self.role_fields[-1], f"last message must be an assistant turn, not {previous!r}",
                "last message not assistant",
            )


# Roles that may directly precede each role ("start" = no previous message).
_ALLOWED_BEFORE: dict[str, tuple[str, ...]] = {
    "system": ("start",),
    "user": ("start", "system", "assistant"),
    "assistant": ("user", "tool"),
    "tool": ("assistant", "tool"),
}


# --------------------------------------------------------------------------- tokenization


@dataclass
class TokenizedSample:
    """One tokenized conversation.

    ``labels[i]`` is ``input_ids[i]`` where the model is trained to produce
    that token and :data:`IGNORE_INDEX` elsewhere. Labels are *not* shifted:
    the trainer aligns position ``i``'s logits with ``labels[i + 1]``.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained_tokens(self) -> int:
        """Number of positions with a real label."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def check_chat_tokenizer(tokenizer: Any) -> None:
    """Raise a clear error unless ``tokenizer`` is fast and has a chat template."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; assistant-token masks need character "
            "offsets (return_offsets_mapping), which only fast (Rust `tokenizers`) tokenizers provide"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
            "(a Jinja template) before tokenizing conversations"
        )


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    max_length: int,
    train_on: TrainOn = "all",
    tools: Sequence[dict[str, Any]] | None = None,
) -> TokenizedSample:
    """Tokenize a conversation and mark the assistant tokens to train on.

    Args:
        tokenizer: A fast Hugging Face tokenizer with a ``chat_template``.
        messages: Validated OpenAI-style messages (see :func:`normalize_messages`).
        max_length: Maximum number of tokens.
        train_on: ``"all"`` trains every assistant turn, ``"last"`` only the last one.
        tools: Validated tool definitions (:func:`novalign.data.tools.normalize_tools`), given to the
            template as ``tools`` in every render; none of their tokens is trained.

    Raises:
        TypeError: the tokenizer is not fast.
        ChatTemplateError: no chat template, or it is not prefix-stable (it
            renders earlier turns differently once later turns are added).
        ToolsNotRendered: ``tools`` given, but the template does not show them.
        ControlTokenInContent: a message or a tool definition contains a special-token string.
        SampleTooLong: the conversation has more than ``max_length`` tokens.
        jinja2.TemplateError: the template rejected the conversation.
    """
    if train_on not in ("all", "last"):
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    check_chat_tokenizer(tokenizer)
    messages = list(messages)
    tools = list(tools) if tools else None
    _check_no_control_tokens(tokenizer, messages, tools)

    full = _render(tokenizer, messages, tools=tools)
    if tools and full == _render(tokenizer, messages):
        raise ToolsNotRendered(
            "the chat template renders the conversation the same with and without its `tools`, so the tool "
            "definitions would be dropped; use a template that shows tools (e.g. Qwen2.5's or Llama 3.1's)"
        )
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    if len(input_ids) > max_length:
        raise SampleTooLong(len(input_ids), max_length)
    offsets: list[tuple[int, int]] = encoding["offset_mapping"]

    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        assistant_turns = assistant_turns[-1:]
    spans = [_assistant_span(tokenizer, messages, i, full, tools) for i in assistant_turns]

    labels = [IGNORE_INDEX] * len(input_ids)
    span_idx = 0
    for pos, (start, _end) in enumerate(offsets):
        # Offsets and spans are both sorted, so one forward pass suffices.
        while span_idx < len(spans) and start >= spans[span_idx][1]:
            span_idx += 1
        if span_idx == len(spans):
            break
        if spans[span_idx][0] <= start:
            labels[pos] = input_ids[pos]
    return TokenizedSample(input_ids=input_ids, labels=labels)


def _render(tokenizer: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
            tools: list[dict[str, Any]] | None = None) -> str:
    text = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # defensive: batched input or an unexpected return type
        raise ChatTemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _assistant_span(
    tokenizer: Any, messages: list[dict[str, Any]], turn: int, full: str, tools: list[dict[str, Any]] | None
) -> tuple[int, int]:
    """Character span of assistant turn ``turn`` (content + end-of-turn marker) in ``full``."""
    prefix = _render(tokenizer, messages[:turn], add_generation_prompt=True, tools=tools)
    # The render through the last message is the full render already made (the same call): reusing it saves
    # one render per record, a third of a single-turn record's three.
    through = full if turn == len(messages) - 1 else _render(tokenizer, messages[: turn + 1], tools=tools)
    for name, text in (("the generation prompt before", prefix), ("the conversation through", through)):
        if not full.startswith(text):
            mismatch = _first_mismatch(text, full)
            raise ChatTemplateError(
                f"chat template is not prefix-stable: rendering {name} assistant turn {turn} "
                f"differs from the full conversation at character {mismatch} "
                f"({text[mismatch:mismatch + 40]!r} vs {full[mismatch:mismatch + 40]!r}); the template "
                "probably rewrites earlier turns when later ones are added, so assistant tokens "
                "cannot be located reliably"
            )
    start = len(prefix)
    if len(through) < start:
        raise ChatTemplateError(
            f"chat template is not prefix-stable: the generation prompt before assistant turn {turn} "
            "is longer than the rendered turn itself"
        )
    # Trailing whitespace after the end-of-turn marker belongs to the template, not the model.
    return start, max(start, len(through.rstrip()))


def _first_mismatch(a: str, b: str) -> int:
    for i, (ca, cb) in enumerate(zip(a, b)):
        if ca != cb:
            return i
    return min(len(a), len(b))


def _check_no_control_tokens(tokenizer: Any, messages: list[dict[str, Any]],
                             tools: list[dict[str, Any]] | None = None) -> None:
    special = _special_token_strings(tokenizer)
    if not special:
        return
    texts: list[tuple[int | None, Any]] = [(i, msg.get("content")) for i, msg in enumerate(messages)]
    if tools:
        texts.append((None, json.dumps(tools, ensure_ascii=False)))
    for i, content in texts:
        if not isinstance(content, str):
            continue
        for token in special:
            if token in content:
                raise ControlTokenInContent(i, token)


def _special_token_strings(tokenizer: Any) -> list[str]:
    """All special token strings of ``tokenizer``, longest first."""
    tokens: set[str] = {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    return sorted((t for t in tokens if t), key=len, reverse=True)


# --------------------------------------------------------------------------- datasets


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the tokenizer's longest token string: a text of more than ``n`` times this many
    characters cannot be ``n`` tokens or fewer (a token's decoded text is no longer than its string)."""
    cached = getattr(tokenizer, "_novalign_longest_token", None)
    if cached is None:
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        cached = max([len(t) for t in tokens if isinstance(t, str)] + [1])
        try:
            tokenizer._novalign_longest_token = cached
        except AttributeError:
            pass
    return cached


def load_chat_dataset(
    paths: Sequence[str | os.PathLike[str]],
    tokenizer: Any,
    *,
    max_length: int,
    train_on: TrainOn = "all",
    skip_invalid: bool = False,
) -> tuple[list[TokenizedSample], SkipReport]:
    """Read, validate and tokenize every record of every file in ``paths``.

    Args:
        paths: ``.jsonl``/``.json`` (JSON-lines) or ``.parquet`` files.
        tokenizer: A fast tokenizer with a chat template.
        max_length: Conversations with more tokens are invalid.
        train_on: ``"all"`` or ``"last"`` assistant turn(s) to train on.
        skip_invalid: If true, invalid records are counted in the returned
            :class:`SkipReport` and skipped; otherwise the first one raises.

    Returns:
        The tokenized samples (in file order) and the skip report.

    Raises:
        DataError: an invalid record (with ``skip_invalid=False``), naming the
            file, line/row, field and problem.
        TypeError, ChatTemplateError: the tokenizer cannot be used.
        FileNotFoundError, ValueError: a path is missing or of unknown type.
    """
    if train_on not in ("all", "last"):
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    check_chat_tokenizer(tokenizer)
    max_chars = max_length * longest_token_chars(tokenizer)
    return read_valid(paths, lambda record, path, line: _record_to_sample(
        record, tokenizer, path=path, line=line, max_length=max_length, train_on=train_on, max_chars=max_chars),
        skip_invalid=skip_invalid)


def _record_to_sample(
    record: dict[str, Any],
    tokenizer: Any,
    *,
    path: str,
    line: int,
    max_length: int,
    train_on: TrainOn,
    max_chars: int | None = None,
) -> TokenizedSample:
    """Normalize and tokenize one record, turning every per-record failure into a DataError."""
    messages, content_fields = _Normalizer(path, line).normalize(record)
    chars = sum(len(m["content"]) for m in messages)
    if max_chars is not None and chars > max_chars:  # a 10 MB record once took a minute to tokenize first
        raise DataError(path, line, None, f"{chars} characters cannot fit max_length={max_length} tokens "
                        f"(at most {max_chars} characters can)", reason="sequence longer than max_length")
    tools = normalize_tools(record.get("tools"), path=path, line=line)
    check_tool_calls(messages, tools, path=path, line=line)
    try:
        sample = tokenize_conversation(tokenizer, messages, max_length=max_length, train_on=train_on, tools=tools)
    except SampleTooLong as exc:
        raise DataError(path, line, None, str(exc), reason="sequence longer than max_length") from exc
    except ToolsNotRendered as exc:
        raise DataError(path, line, "tools", str(exc), reason="chat template ignores tools") from exc
    except ControlTokenInContent as exc:
        field = "tools" if exc.index is None else content_fields[exc.index]
        raise DataError(path, line, field, str(exc), reason="special token in content") from exc
    except TemplateError as exc:
        raise DataError(path, line, None, f"chat template rejected the conversation: {exc}",
                        reason="chat template error") from exc
    if sample.num_trained_tokens == 0:
        raise DataError(path, line, None, "no assistant tokens to train on",
                        reason="no assistant tokens to train on")
    return sample

