"""Preference data: reading, checking, score targets, pair expansion and tokenization (report section 3.3).

Every record is one prompt and two or more responses. Four forms are read (JSONL or Parquet):

* a pair -- ``{"prompt": [messages] or "text", "chosen": ..., "rejected": ..., "chosen_score": s,
  "rejected_score": s}``. A response is a string, one assistant message, or a list holding one assistant
  message. Scores are optional (TRL's ``score_chosen`` / ``score_rejected`` are read too); a score is a
  number or an object of dimensions (see :mod:`novalign.data.scores`). An optional top-level ``system``
  string goes before a text prompt, and ``annotator`` names whose scale the scores are on.
* TRL's preference format, read as is: the pair form above with text or conversational fields, or the
  implicit-prompt form ``{"chosen": [full conversation], "rejected": [full conversation]}`` whose prompt
  is everything before the last (assistant) message -- it must be the same on both sides.
* a group of N responses -- ``{"prompt": ..., "responses": [{"content": ..., "rank": 1, "score": s,
  "annotator": "a3"}, ...]}``. Rank 1 is best and equal ranks are ties; without ranks the normalized
  scores order the group. A group becomes pairs: every better/worse pair (``pairs="all"``) or only
  responses on adjacent rank levels (``pairs="adjacent"``).
* for KTO only, TRL's unpaired form -- ``{"prompt": ..., "completion": ..., "label": true}``.

The same (prompt, chosen, rejected) triple is kept once, wherever it came from; the number dropped is
reported. Bad input -- chosen identical to rejected, a pair with only one of its two scores when the scores
are used, a score outside its declared range -- is a :class:`~novalign.data.io.DataError` naming file,
line and field, or a counted skip with ``skip_invalid``.

Tokenization goes through the chat template exactly as SFT does (:func:`tokenize_response`): the labels
mark the response's own tokens (content plus end-of-turn marker), and the sequence ends at the last of
them -- the "last real token" where a reward model reads its score.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from jinja2 import TemplateError

from novalign.config import ScoreConfig
from novalign.data.chat import (
    ControlTokenInContent,
    SampleTooLong,
    TokenizedSample,
    ToolsNotRendered,
    normalize_messages,
    tokenize_conversation,
)
from novalign.data.io import DataError, SkipReport, read_valid
from novalign.data.tools import check_tool_calls, normalize_tools
from novalign.data.scores import ScoreObservation, ScoreProblem, normalize_scores, parse_score

__all__ = [
    "PreferencePair",
    "PreferenceData",
    "UnpairedSample",
    "UnpairedData",
    "expand_ranked",
    "load_preference_dataset",
    "load_unpaired_dataset",
    "parse_prompt_response",
    "split_by_prompt",
    "tokenize_response",
]

PairMode = Literal["all", "adjacent"]
Message = dict[str, Any]


@dataclass
class PreferencePair:
    """One tokenized comparison: ``chosen`` is preferred over ``rejected`` for ``prompt``.

    ``*_target`` is the normalized absolute score r-hat, or None when the pair carries no scores (or they
    are not used); equation (1)'s alpha is then 0 for this pair.
    """

    prompt: list[Message]
    chosen_message: Message
    rejected_message: Message
    chosen: TokenizedSample
    rejected: TokenizedSample
    chosen_target: float | None = None
    rejected_target: float | None = None
    source: str = ""
    tools: list[Message] | None = None  # the record's tool definitions, rendered into both sequences

    @property
    def has_targets(self) -> bool:
        return self.chosen_target is not None and self.rejected_target is not None


@dataclass
class PreferenceData:
    pairs: list[PreferencePair]
    skipped: SkipReport
    num_duplicates: int = 0


@dataclass
class UnpairedSample:
    """One KTO sample: a response that is desirable or undesirable for its prompt."""

    prompt: list[Message]
    message: Message
    sample: TokenizedSample
    desirable: bool
    source: str = ""
    tools: list[Message] | None = None


@dataclass
class UnpairedData:
    samples: list[UnpairedSample]
    skipped: SkipReport
    num_duplicates: int = 0


# --------------------------------------------------------------------------------- pure helpers


def expand_ranked(order: Sequence[float], mode: PairMode = "all") -> list[tuple[int, int]]:
    """Pairs ``(better, worse)`` of a ranked group; lower ``order`` is better, equal values are ties.

    >>> expand_ranked([2, 1, 3, 1])            # two responses tied for first
    [(1, 0), (1, 2), (3, 0), (3, 2), (0, 2)]
    >>> expand_ranked([2, 1, 3, 1], "adjacent")  # level 1 -> level 2 -> level 3
    [(1, 0), (3, 0), (0, 2)]
    """
    if mode not in ("all", "adjacent"):
        raise ValueError(f"pair mode must be 'all' or 'adjacent', got {mode!r}")
    levels = sorted(set(order))
    members = {level: [i for i, v in enumerate(order) if v == level] for level in levels}
    pairs = []
    for a, better in enumerate(levels):
        worse_levels = levels[a + 1 : a + 2] if mode == "adjacent" else levels[a + 1 :]
        for i in members[better]:
            pairs.extend((i, j) for worse in worse_levels for j in members[worse])
    return pairs


def split_by_prompt(items: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split pairs (or KTO samples) into (train, held-out) so that no prompt is on both sides."""
    prompts = sorted({_canon(item.prompt) for item in items})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: int(round(fraction * len(prompts)))])
    train = [x for x in items if _canon(x.prompt) not in held]
    return train, [x for x in items if _canon(x.prompt) in held]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------------- parsing


@dataclass
class _Response:
    message: Message
    field: str  # where the response sits in the record, for errors: "chosen", "responses[2].content"
    plain: bool  # the field held a string (so it *is* the content)
    rank: float | None = None
    raw_score: Any = None
    score_field: str | None = None
    annotator: str | None = None
    sample: TokenizedSample | None = None
    target: float | None = None


@dataclass
class _Record:
    path: str
    line: int
    prompt: list[Message]
    prompt_fields: list[tuple[str, bool]]  # per prompt message: (field, plain)
    responses: list[_Response]
    kind: Literal["pair", "group", "unpaired"]
    label: bool | None = None  # unpaired only
    order: list[float] | None = None  # group only, filled once targets are known
    scores_used: bool = False
    tools: list[dict[str, Any]] | None = None  # the record's tool definitions, shown to every response


    def error(self, fld: str | None, problem: str, reason: str) -> DataError:
        return DataError(self.path, self.line, fld, problem, reason=reason)

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


def _as_prompt(record: dict, rec: _Record) -> None:
    raw = record.get("prompt")
    if isinstance(raw, str):
        system = record.get("system")
        if system is not None:
            if not isinstance(system, str):
                raise rec.error("system", f"must be a string, got {type(system).__name__}", "non-string content")
            if system.strip():
                rec.prompt.append({"role": "system", "content": system})
                rec.prompt_fields.append(("system", True))
        rec.prompt.append({"role": "user", "content": raw})
        rec.prompt_fields.append(("prompt", True))
    elif isinstance(raw, list) and raw:
        for i, msg in enumerate(raw):
            if not isinstance(msg, dict):
                raise rec.error(f"prompt[{i}]", "message must be an object", "wrong type")
            rec.prompt.append({k: v for k, v in msg.items() if v is not None})
            rec.prompt_fields.append((f"prompt[{i}]", False))
    elif raw is None:
        raise rec.error("prompt", "missing field", "missing field")
    else:
        raise rec.error("prompt", "must be a string or a non-empty list of messages", "wrong type")


def _as_response(raw: Any, fld: str, rec: _Record) -> _Response:
    """A response field: a string, one assistant message, or a list holding one assistant message."""
    if isinstance(raw, str):
        return _Response({"role": "assistant", "content": raw}, fld, plain=True)
    where = fld
    if isinstance(raw, list):
        if len(raw) != 1:
            raise rec.error(fld, f"a response must be one assistant message, got a list of {len(raw)}", "wrong type")
        raw, where = raw[0], f"{fld}[0]"
    if not isinstance(raw, dict):
        raise rec.error(fld, "must be a string or an assistant message", "wrong type")
    if raw.get("role", "assistant") != "assistant":
        raise rec.error(f"{where}.role", f"a response must be an assistant message, not {raw.get('role')!r}", "wrong role order")
    message = {k: v for k, v in raw.items() if v is not None}
    message["role"] = "assistant"
    if message.get("content") is None and message.get("tool_calls"):
        message["content"] = ""  # a pure tool-call turn
    if not isinstance(message.get("content"), str):  # ``content: 42`` once came back as an int
        raise rec.error(f"{where}.content", f"must be a string, got {type(message.get('content')).__name__}",
                        "non-string content")
    return _Response(message, where, plain=False)


def _implicit_pair(record: dict, rec: _Record) -> None:
    """TRL's implicit-prompt form: two full conversations that differ only in their last message."""
    sides = {}
    for name in ("chosen", "rejected"):
        conv = record.get(name)
        if not isinstance(conv, list) or len(conv) < 2:
            raise rec.error(name, "without 'prompt', must be a full conversation (a list of messages)", "wrong type")
        sides[name] = conv
    if _canon(sides["chosen"][:-1]) != _canon(sides["rejected"][:-1]):
        raise rec.error("rejected", "chosen and rejected conversations differ before their last message", "prompt mismatch")
    for i, msg in enumerate(sides["chosen"][:-1]):
        if not isinstance(msg, dict):
            raise rec.error(f"chosen[{i}]", "message must be an object", "wrong type")
        rec.prompt.append({k: v for k, v in msg.items() if v is not None})
        rec.prompt_fields.append((f"chosen[{i}]", False))
    n = len(sides["chosen"]) - 1
    rec.responses = [_as_response(sides[s][-1], f"{s}[{n}]", rec) for s in ("chosen", "rejected")]


def _parse_record(record: dict, path: str, line: int) -> _Record:
    """Sort a raw record into a pair, group or unpaired sample (shapes only; scores come later), with its
    checked ``tools`` (the SFT reader's rules: :mod:`novalign.data.tools`)."""
    rec = _parse_shape(record, path, line)
    rec.tools = normalize_tools(record.get("tools"), path=path, line=line)
    return rec


def _parse_shape(record: dict, path: str, line: int) -> _Record:
    if "responses" in record:
        rec = _Record(path, line, [], [], [], "group")
        _as_prompt(record, rec)
        raw = record["responses"]
        if not isinstance(raw, list) or len(raw) < 2:
            raise rec.error("responses", "must be a list of at least two responses", "wrong type")
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or "content" not in item:
                raise rec.error(f"responses[{i}]", "must be an object with 'content' (and 'rank' and/or 'score')", "wrong type")
            resp = _as_response(item["content"], f"responses[{i}].content", rec)
            resp.rank = item.get("rank")
            if resp.rank is not None and (isinstance(resp.rank, bool) or not isinstance(resp.rank, (int, float))
                                          or not math.isfinite(resp.rank)):  # NaN once dropped it from every pair
                raise rec.error(f"responses[{i}].rank", "must be a finite number (1 = best)", "wrong type")
            resp.raw_score, resp.score_field = item.get("score"), f"responses[{i}].score"
            resp.annotator = item.get("annotator", record.get("annotator"))
            rec.responses.append(resp)
        return rec
    if "chosen" in record or "rejected" in record:
        rec = _Record(path, line, [], [], [], "pair")
        if record.get("prompt") is None:
            _implicit_pair(record, rec)
        else:
            _as_prompt(record, rec)
            for name in ("chosen", "rejected"):
                if record.get(name) is None:
                    raise rec.error(name, "missing field", "missing field")
            rec.responses = [_as_response(record[s], s, rec) for s in ("chosen", "rejected")]
        for resp, name in zip(rec.responses, ("chosen", "rejected")):
            alias = f"score_{name}"  # TRL's spelling
            key = f"{name}_score" if record.get(f"{name}_score") is not None or record.get(alias) is None else alias
            resp.raw_score, resp.score_field, resp.annotator = record.get(key), key, record.get("annotator")
        if _canon(rec.responses[0].message) == _canon(rec.responses[1].message):
            raise rec.error("rejected", "identical to 'chosen': a pair must compare two different responses",
                            "chosen identical to rejected")
        return rec
    if "completion" in record and "label" in record:
        rec = _Record(path, line, [], [], [], "unpaired")
        _as_prompt(record, rec)
        rec.responses = [_as_response(record["completion"], "completion", rec)]
        if not isinstance(record["label"], bool):
            raise rec.error("label", "must be true (desirable) or false (undesirable)", "wrong type")
        rec.label = record["label"]
        return rec
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(
        path, line, None,
        f"unknown preference record: expected 'chosen'/'rejected', 'responses' or 'completion'/'label' (found keys: {keys})",
        reason="unknown record format",
    )


def _check_scores(rec: _Record, cfg: ScoreConfig, want_scores: bool) -> None:
    """Parse the scores a record needs: all of them for the MSE term, or a group's order without ranks."""
    if rec.kind == "unpaired":
        return
    needs_order = rec.kind == "group" and any(r.rank is None for r in rec.responses)
    has = [r.raw_score is not None for r in rec.responses]
    if not (needs_order or (want_scores and any(has))):
        return
    if not all(has):
        missing = rec.responses[has.index(False)].score_field
        if needs_order:
            problem = "missing score: a group without a rank on every response is ordered by its scores"
        else:
            given = rec.responses[has.index(True)].score_field
            problem = f"missing score: '{given}' is given, and the MSE term (alpha > 0) needs every score of the record"
        raise rec.error(missing, problem, "missing score")
    for r in rec.responses:
        try:
            r.raw_score = parse_score(r.raw_score, cfg)
        except ScoreProblem as exc:
            raise rec.error(f"{r.score_field}.{exc.field}" if exc.field else r.score_field, exc.problem, exc.reason) from exc
        if cfg.group_by == "annotator" and not isinstance(r.annotator, str):
            raise rec.error("annotator", "missing annotator id (scores.group_by is 'annotator')", "missing annotator")
    rec.scores_used = True


# --------------------------------------------------------------------------------- tokenization


def parse_prompt_response(record: dict, *, path: str, line: int) -> tuple[list[Message], Message, list[Message] | None]:
    """A ``{"prompt", "response"}`` (or ``{"messages": [... , assistant]}``) record for scoring, as
    ``(prompt messages, response message, tools)``; ``tools`` is the record's checked tool list or None.

    Raises:
        DataError: naming the field, if the record has neither form or its messages or tools are invalid.
    """
    tools = normalize_tools(record.get("tools"), path=path, line=line)
    if "messages" in record:
        messages = normalize_messages(record, path=path, line=line)
        check_tool_calls(messages, tools, path=path, line=line)
        return messages[:-1], messages[-1], tools
    rec = _Record(path, line, [], [], [], "unpaired", tools=tools)
    if record.get("response") is None:
        raise rec.error("response", "missing field (a scoring record is {prompt, response} or {messages})", "missing field")
    _as_prompt(record, rec)
    resp = _as_response(record["response"], "response", rec)
    _validate(rec, resp)
    return rec.prompt, resp.message, tools


def _validate(rec: _Record, resp: _Response) -> list[Message]:
    """Check the conversation prompt + response with the SFT rules; errors name this record's fields."""
    fields = rec.prompt_fields + [(resp.field, resp.plain)]
    try:
        messages = normalize_messages({"messages": rec.prompt + [resp.message]}, path=rec.path, line=rec.line)
        check_tool_calls(messages, rec.tools, path=rec.path, line=rec.line)
        return messages
    except DataError as err:
        m = re.match(r"messages\[(\d+)\](.*)", err.field or "")
        if m is None:
            raise
        base, plain = fields[int(m.group(1))]
        raise rec.error(base if plain else base + m.group(2), err.problem, err.reason) from err


def tokenize_response(
    tokenizer: Any, prompt: Sequence[Message], response: Message, *, max_length: int,
    tools: Sequence[dict[str, Any]] | None = None,
) -> TokenizedSample:
    """Tokenize prompt + response through the chat template (with ``tools`` shown, as in SFT); labels mark the
    response's tokens only, and the sequence ends at the last of them (its end-of-turn marker).

    Raises:
        SampleTooLong, ToolsNotRendered, ControlTokenInContent, jinja2.TemplateError: as
            :func:`tokenize_conversation`.
        ValueError: the template puts no tokens in the response.
    """
    sample = tokenize_conversation(tokenizer, [*prompt, response], max_length=max_length, train_on="last",
                                   tools=tools)
    last = max((i for i, y in enumerate(sample.labels) if y != -100), default=-1)
    if last < 0:
        raise ValueError("the response has no tokens after rendering")
    return TokenizedSample(sample.input_ids[: last + 1], sample.labels[: last + 1])


def _tokenize(rec: _Record, resp: _Response, tokenizer: Any, max_length: int) -> TokenizedSample:
    _validate(rec, resp)
    fields = rec.prompt_fields + [(resp.field, resp.plain)]
    try:
        return tokenize_response(tokenizer, rec.prompt, resp.message, max_length=max_length, tools=rec.tools)
    except SampleTooLong as exc:
        raise rec.error(resp.field, str(exc), "sequence longer than max_length") from exc
    except ToolsNotRendered as exc:
        raise rec.error("tools", str(exc), "chat template ignores tools") from exc
    except ControlTokenInContent as exc:
        if exc.index is None:
            raise rec.error("tools", str(exc), "special token in content") from exc
        base, plain = fields[exc.index]
        raise rec.error(base if plain else f"{base}.content", str(exc), "special token in content") from exc
    except TemplateError as exc:
        raise rec.error(None, f"chat template rejected the conversation: {exc}", "chat template error") from exc
    except ValueError as exc:
        raise rec.error(resp.field, str(exc), "no response tokens") from exc


# --------------------------------------------------------------------------------- datasets


def _read_records(
    paths: Sequence[str | os.PathLike[str]], tokenizer: Any, *, max_length: int, scores: ScoreConfig | None,
    want_scores: bool, skip_invalid: bool,
) -> tuple[list[_Record], SkipReport]:
    """Pass 1: parse, check and tokenize every record; then fill in normalized targets (pass 2). ``scores``
    defaults to one number, minmax. Returns the records and the report of those skipped (with ``skip_invalid``)."""
    scores = scores or ScoreConfig()

    def parse(raw: dict, path: str, line: int) -> _Record:
        rec = _parse_record(raw, path, line)
        _check_scores(rec, scores, want_scores)
        for resp in rec.responses:
            resp.sample = _tokenize(rec, resp, tokenizer, max_length)
        return rec

    records, report = read_valid(paths, parse, skip_invalid=skip_invalid)
    scored = [r for rec in records if rec.scores_used for r in rec.responses]
    observations = [
        ScoreObservation(r.raw_score, r.annotator if scores.group_by == "annotator" else rec.path)
        for rec in records if rec.scores_used for r in rec.responses
    ]
    for r, target in zip(scored, normalize_scores(observations, scores)):
        r.target = target
    return records, report


def _record_pairs(rec: _Record, mode: PairMode) -> list[tuple[int, int]]:
    if rec.kind == "pair":
        return [(0, 1)]
    if all(r.rank is not None for r in rec.responses):
        order = [float(r.rank) for r in rec.responses]
    else:
        order = [-float(r.target) for r in rec.responses]  # higher normalized score is better
    return expand_ranked(order, mode)


def load_preference_dataset(
    paths: Sequence[str | os.PathLike[str]],
    tokenizer: Any,
    *,
    max_length: int,
    pairs: PairMode = "all",
    scores: ScoreConfig | None = None,
    use_scores: bool = False,
    skip_invalid: bool = False,
) -> PreferenceData:
    """Read preference files into tokenized pairs, with duplicates removed.

    Args:
        paths: JSONL/Parquet files in any of the forms of the module docstring.
        tokenizer: a fast tokenizer with a chat template.
        max_length: the longest prompt + response, in tokens.
        pairs: how groups expand ("all" or "adjacent").
        scores: the score scheme (dimensions, ranges, normalization); default: one number, minmax.
        use_scores: the scores feed a loss (a reward model with alpha > 0): check them all and fill the
            targets. Otherwise scores are read only to order groups that have no ranks.
        skip_invalid: count and skip invalid records instead of raising.

    Raises:
        DataError: an invalid record (unless ``skip_invalid``), naming file, line and field.
    """
    records, report = _read_records(paths, tokenizer, max_length=max_length, scores=scores, want_scores=use_scores,
                                    skip_invalid=skip_invalid)
    out: list[PreferencePair] = []
    seen: set[tuple[str, str, str]] = set()
    duplicates = 0
    for rec in records:
        if rec.kind == "unpaired":
            err = rec.error("label", "an unpaired (completion/label) record can only train KTO", "unpaired record")
            if not skip_invalid:
                raise err
            report.add(err)
            continue
        for i, j in _record_pairs(rec, pairs):
            good, bad = rec.responses[i], rec.responses[j]
            key = (_canon([rec.prompt, rec.tools]), _canon(good.message), _canon(bad.message))
            if key in seen or key[1] == key[2]:  # the latter: one response listed twice in a group
                duplicates += 1
                continue
            seen.add(key)
            out.append(PreferencePair(
                rec.prompt, good.message, bad.message, good.sample, bad.sample,
                good.target if use_scores else None, bad.target if use_scores else None, rec.source, rec.tools,
            ))
    return PreferenceData(out, report, duplicates)


def load_unpaired_dataset(
    paths: Sequence[str | os.PathLike[str]],
    tokenizer: Any,
    *,
    max_length: int,
    pairs: PairMode = "all",
    scores: ScoreConfig | None = None,
    skip_invalid: bool = False,
) -> UnpairedData:
    """KTO samples: unpaired records as they are; every pair (also from groups) gives its chosen response
    as desirable and its rejected one as undesirable. Identical (prompt, response, label) samples are kept once.
    """
    records, report = _read_records(paths, tokenizer, max_length=max_length, scores=scores, want_scores=False,
                                    skip_invalid=skip_invalid)
    out: list[UnpairedSample] = []
    seen: set[tuple[str, str, bool]] = set()
    duplicates = 0

    def add(rec: _Record, resp: _Response, label: bool) -> None:
        nonlocal duplicates
        key = (_canon([rec.prompt, rec.tools]), _canon(resp.message), label)
        if key in seen:
            duplicates += 1
            return
        seen.add(key)
        out.append(UnpairedSample(rec.prompt, resp.message, resp.sample, label, rec.source, rec.tools))

    for rec in records:
        if rec.kind == "unpaired":
            add(rec, rec.responses[0], bool(rec.label))
            continue
        for i, j in _record_pairs(rec, pairs):
            if _canon(rec.responses[i].message) != _canon(rec.responses[j].message):
                add(rec, rec.responses[i], True)
                add(rec, rec.responses[j], False)
    return UnpairedData(out, report, duplicates)
