"""``novalign eval --config eval.yaml``: every model of the config on every suite, resumable.

For each model and suite the runner builds a :class:`~novalign.eval.suite_api.SuiteContext` -- the model as a
responder (a local directory or any OpenAI-compatible endpoint, through :class:`~novalign.llm.LLMClient`; or a
responses file in score-only mode), the judge client, the records an interrupted run already wrote -- and
calls the suite. Outputs::

    <output_dir>/<model>/<suite>.jsonl   one record per sample, appended durably (flush + fsync per record)
    <output_dir>/summary.json            {model: {suite: summary}}, rewritten atomically after every suite
    <output_dir>/report.md + charts/     tables and per-category bar charts (novalign.eval.report)

Resume: a rerun reads each ``<suite>.jsonl`` into ``ctx.done``; the suite asks only for the samples missing
there, so a finished suite asks nothing and just recomputes its summary. A last line cut short by a kill is
dropped with a warning and counted (``resume.dropped_truncated`` in the summary); any other unreadable line
is an error naming file and line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError, KeyedAppender, iter_records, output_lock, read_keyed, write_json_atomic
from novalign.eval.suite_api import Conversation, SuiteContext
from novalign.eval.suites import resolve_suite

__all__ = ["EvalError", "ModelResponder", "RecordWriter", "ReplayResponder", "read_done", "run_eval"]

log = logging.getLogger("novalign.eval")


class EvalError(RuntimeError):
    """The model under test could not answer (a request failed after retries, with ``on_failure: error``)."""


# ---------------------------------------------------------------------------------------------- records


def read_done(path: Path) -> tuple[dict[str, dict], int]:
    """Records an earlier run wrote to ``path``, by id, and how many truncated last lines were dropped (0/1).

    The resume rules are :func:`novalign.data.io.read_keyed`'s: a torn last line (a kill mid-write) is cut off,
    logged and counted; any other bad line, or an id written twice, is a :class:`DataError` naming the line.
    """
    return read_keyed(path, "id")


class RecordWriter:
    """A suite's record sink: checks the fields every suite record must have (see novalign.eval.suite_api),
    then appends it to the suite's :class:`~novalign.data.io.KeyedAppender` (durable when the call returns)."""

    REQUIRED = ("id", "category", "failed")

    def __init__(self, sink: KeyedAppender, suite: str):
        self.sink, self.suite = sink, suite
        self.seen = set(sink.done)

    @property
    def count(self) -> int:
        return self.sink.count

    def __call__(self, record: dict) -> None:
        missing = [k for k in self.REQUIRED if k not in record]
        if missing:
            raise ValueError(f"suite {self.suite!r} wrote a record without {missing} (see novalign.eval.suite_api)")
        key = str(record["id"])
        if key in self.seen:
            raise ValueError(f"suite {self.suite!r} wrote id {key!r} twice")
        self.seen.add(key)
        self.sink.append(record)

    def close(self) -> None:
        self.sink.close()


# ------------------------------------------------------------------------------------------- responders


class ModelResponder:
    """A model under test as a :data:`~novalign.eval.suite_api.Responder`: a batch of conversations -> replies.

    The :class:`~novalign.llm.LLMClient` is built on first use (a local model loads only when a suite asks), so
    models listed only as peers cost nothing until a pairwise suite calls them. ``samples`` gives n replies
    per conversation (pass@k).
    """

    def __init__(self, model, make_client: Callable[[], Any], progress: bool):
        self.model, self.make_client, self.progress = model, make_client, progress
        self.client = None
        self.num_requests = 0
        self.num_failures = 0

    def _messages(self, conv: Conversation) -> Conversation:
        if self.model.system_prompt and not any(m.get("role") == "system" for m in conv):
            return [{"role": "system", "content": self.model.system_prompt}, *conv]
        return list(conv)

    def _client(self):
        if self.client is None:
            self.client = self.make_client()
        return self.client

    def _requests(self, items: list, *, raw: bool, n: int = 1, temperature: float | None = None,
                  stop: Sequence[str] | None = None, max_tokens: int | None = None) -> list:
        """Requests for conversations, or for raw prompts (no template, no system prompt: the text is all)."""
        from novalign.llm import ChatRequest

        m = self.model
        common = dict(n=n, temperature=m.temperature if temperature is None else temperature, top_p=m.top_p,
                      max_tokens=max_tokens or m.max_tokens, seed=m.seed, stop=list(stop) if stop else None)
        if raw:
            return [ChatRequest(prompt=p, **common) for p in items]
        return [ChatRequest(messages=self._messages(c), **common) for c in items]

    def _ask(self, requests: list, n: int, together: bool) -> list[list[str]]:
        client = self._client()
        results = client.run_together(requests) if together else client.run_batch(requests, progress=self.progress)
        replies: list[list[str]] = []
        for result in results:
            self.num_requests += 1
            if result.ok:
                replies.append(result.texts)
                continue
            self.num_failures += 1
            if self.model.on_failure == "error":
                raise EvalError(f"model {self.model.name!r}: a request failed ({result}); rerun to resume, or set "
                                f"on_failure: empty to score it as an empty reply")
            log.warning("model %s: a request failed (%s); scored as an empty reply", self.model.name, result)
            replies.append([""] * n)
        return replies

    def samples(self, convs: list[Conversation], n: int = 1, temperature: float | None = None) -> list[list[str]]:
        if not convs:
            return []
        return self._ask(self._requests(convs, raw=False, n=n, temperature=temperature), n, together=False)

    def __call__(self, convs: list[Conversation], *, stop: Sequence[str] | None = None, max_tokens: int | None = None,
                 together: bool = False) -> list[str]:
        return self._one_each(convs, False, stop, max_tokens, together)

    def complete(self, prompts: list[str], *, stop: Sequence[str] | None = None, max_tokens: int | None = None,
                 together: bool = False) -> list[str]:
        """Raw text continuations of ``prompts`` (see :mod:`novalign.eval.suite_api`)."""
        return self._one_each(prompts, True, stop, max_tokens, together)

    def _one_each(self, items: list, raw: bool, stop: Sequence[str] | None, max_tokens: int | None,
                  together: bool) -> list[str]:
        """One reply per chat conversation (``raw=False``) or raw-text prompt (``raw=True``)."""
        if not items:
            return []
        requests = self._requests(items, raw=raw, stop=stop, max_tokens=max_tokens)
        return [texts[0] for texts in self._ask(requests, 1, together)]

    def prompt_tokens(self, items: list[Conversation | str]) -> list[int] | None:
        """Token lengths of conversations (as templated) or raw prompts, where the backend can count them."""
        if not items:
            return []
        return self._client().prompt_tokens(self._requests(items, raw=isinstance(items[0], str)))

    def close(self) -> None:
        """Release the client (and a local model's memory); a later call builds it again."""
        if self.client is not None:
            self.client.close()
            self.client = None


class ReplayResponder:
    """Score-only mode: replies looked up in a responses JSONL instead of generated (IFEval's ``evaluation_main``).

    Lines are ``{prompt, response}`` (matched to a conversation's last user message) or ``{messages,
    response}`` (matched to the whole conversation). A conversation with no response is a :class:`DataError`.
    """

    def __init__(self, path: Path):
        self.path = path
        self.by_prompt: dict[str, str] | None = None  # read on first use: a peer's file only when a suite asks
        self.by_messages: dict[str, str] = {}

    def _load(self) -> None:
        path = self.path
        if not path.is_file():
            raise FileNotFoundError(f"responses file not found: {path}")
        by_prompt: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for line, record in iter_records(path):
            if not isinstance(record.get("response"), str):
                raise DataError(path, line, "response", "missing or not a string", reason="bad response")
            if isinstance(record.get("messages"), list):
                key, table = _conversation_key(record["messages"]), self.by_messages
            elif isinstance(record.get("prompt"), str):
                key, table = record["prompt"], by_prompt
            else:
                raise DataError(path, line, "prompt", "needs a string prompt or a messages list", reason="bad prompt")
            if key in table and table[key] != record["response"]:  # which one to score would be a guess
                raise DataError(path, line, "response", f"a different response to the same prompt is on line "
                                f"{first_line[key]}", reason="conflicting responses")
            table[key] = record["response"]
            first_line.setdefault(key, line)
        self.by_prompt = by_prompt

    def complete(self, prompts: list[str], **_: Any) -> list[str]:
        """Raw prompts, looked up as ``{prompt, response}`` lines (the whole prompt text is the key)."""
        if self.by_prompt is None:
            self._load()
        missing = [p for p in prompts if p not in self.by_prompt]
        if missing:
            raise DataError(self.path, None, "prompt", f"no response for the prompt {missing[0][:80]!r}",
                            reason="missing response")
        return [self.by_prompt[p] for p in prompts]

    def __call__(self, convs: list[Conversation], **_: Any) -> list[str]:
        """Replies to ``convs``; the generation keywords (``stop``, ``together``, ...) do not apply to a file."""
        if self.by_prompt is None:
            self._load()
        replies = []
        for conv in convs:
            reply = self.by_messages.get(_conversation_key(conv))
            if reply is None:
                last_user = next((m["content"] for m in reversed(conv) if m.get("role") == "user"), None)
                reply = self.by_prompt.get(last_user)
            if reply is None:
                shown = (last_user or "")[:80]
                raise DataError(self.path, None, "prompt", f"no response for the prompt {shown!r}",
                                reason="missing response")
            replies.append(reply)
        return replies

    def close(self) -> None:
        pass


def _conversation_key(messages: list[dict]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)


def _client_for_path(cfg, model):
    from novalign.config import LLMConfig
    from novalign.llm import LLMClient

    cache = cfg.cache_path or str(Path(cfg.output_dir) / "llm-cache.sqlite")
    llm = LLMConfig(backend="local", model=model.path, local=model.local, cache_path=cache, no_cache=cfg.no_cache,
                    progress=cfg.progress)
    return LLMClient.from_config(llm, print_usage=False)


def _responder(cfg, model, suite_name: str):
    """The model's responder for one suite (replay files can differ per suite), or None (judgments only)."""
    from novalign.llm import LLMClient

    if model.responses is not None:
        path = Path(model.responses)
        return ReplayResponder(path / f"{suite_name}.jsonl" if path.is_dir() else path)
    if model.path is not None:
        if not Path(model.path).is_dir():
            raise FileNotFoundError(f"model {model.name!r}: model directory not found: {model.path}")
        return ModelResponder(model, lambda: _client_for_path(cfg, model), cfg.progress)
    if model.llm is not None:
        return ModelResponder(model, lambda: LLMClient.from_config(model.llm, print_usage=False), cfg.progress)
    return None


# ---------------------------------------------------------------------------------------------- the run


def check_inputs(cfg) -> None:
    """Fail before any generation on what would fail later: unknown suites, missing data or model files."""
    if not cfg.models:
        raise ValueError("the config lists no models")
    if not cfg.suites:
        raise ValueError("the config lists no suites")
    for suite in cfg.suites:
        resolve_suite(suite.type)
        if suite.data is not None and not Path(suite.data).is_file():
            raise FileNotFoundError(f"suite {suite.name!r}: data file not found: {suite.data}")
    for model in cfg.models:
        if model.path is not None and not Path(model.path).is_dir():
            raise FileNotFoundError(f"model {model.name!r}: model directory not found: {model.path}")
        if model.responses is not None and not Path(model.responses).exists():
            raise FileNotFoundError(f"model {model.name!r}: responses not found: {model.responses}")


def _run_suite(cfg, model, suite, respond, judge, peers) -> dict[str, Any]:
    sink = KeyedAppender(Path(cfg.output_dir) / model.name / f"{suite.name}.jsonl", "id", default=str)
    done, dropped = sink.done, sink.dropped
    options = dict(suite.options)
    options.setdefault("batch_size", cfg.batch_size)  # samples per respond call (ifeval, math, code)
    options.setdefault("chunk_size", cfg.batch_size)  # the same, for the judged suites (novalign.eval.checklist)
    if cfg.judge is not None:
        options.setdefault("judge_attempts", 1 + cfg.judge.max_reasks)
        options.setdefault("judge_max_tokens", cfg.judge.max_tokens)
    writer = RecordWriter(sink, suite.name)
    asked_before = _model_requests(respond, peers), _judge_requests(judge)
    ctx = SuiteContext(
        name=suite.name, data=Path(suite.data) if suite.data else None, respond=respond, judge=judge,
        write=writer, done=done, options=options, peers=peers, model_name=model.name,
        lang=cfg.judge.lang if cfg.judge else "en",
        template_dir=Path(cfg.judge.template_dir) if cfg.judge and cfg.judge.template_dir else None,
        progress=cfg.progress, complete=getattr(respond, "complete", None),
        prompt_tokens=getattr(respond, "prompt_tokens", None),
    )
    try:
        summary = resolve_suite(suite.type)(ctx)
    finally:
        writer.close()
    summary = dict(summary)
    # What this run did: records written (a replay of judgments writes records but asks nobody), and the
    # requests actually sent to the models (the one under test and its pairwise peers) and to the judge.
    summary["resume"] = {"reused": len(done), "written": writer.count,
                         "model_requests": _model_requests(respond, peers) - asked_before[0],
                         "judge_requests": _judge_requests(judge) - asked_before[1], "dropped_truncated": dropped}
    if isinstance(respond, ModelResponder):
        summary["num_generation_failures"] = respond.num_failures
    log.info("%s / %s: %d records reused, %d new", model.name, suite.name, len(done), writer.count)
    return summary


def _model_requests(respond, peers: dict) -> int:
    """Conversations sent to a model so far; a responses file (:class:`ReplayResponder`) sends none."""
    return sum(r.num_requests for r in (respond, *peers.values()) if isinstance(r, ModelResponder))


def _judge_requests(judge) -> int:
    """Judge calls so far (answered, from the cache, or failed; each re-ask counts), from the client's usage."""
    if judge is None:
        return 0
    return sum(u.requests + u.cached_requests + u.failed_requests for u in judge.usage.models.values())


def run_eval(cfg) -> dict[str, dict[str, dict]]:
    """Run every suite of an :class:`~novalign.config.EvalConfig` on every model; returns ``{model: {suite:
    summary}}`` (also written to summary.json) and writes report.md with charts.

    Raises:
        ValueError / FileNotFoundError / DataError: bad config or input (before generation where possible).
        EvalError: a model request failed for good (``on_failure: error``); a rerun resumes.
    """
    from novalign.eval.report import write_report
    from novalign.llm import LLMClient

    check_inputs(cfg)
    out_dir = Path(cfg.output_dir)
    with output_lock(out_dir, "novalign eval"):  # a second eval on the same folder is refused, not interleaved
        return _run_all(cfg, out_dir, write_report, LLMClient)


def _run_all(cfg, out_dir: Path, write_report, LLMClient) -> dict[str, dict[str, dict]]:
    summary_path = out_dir / "summary.json"
    summaries: dict[str, dict[str, dict]] = {}
    judge = LLMClient.from_config(cfg.judge, print_usage=False) if cfg.judge is not None else None
    generators = {m.name: _responder(cfg, m, "") for m in cfg.models if m.responses is None}  # lazy, shared
    try:
        for model in cfg.models:  # one model at a time: a local model is loaded, used on every suite, released
            for suite in cfg.suites:
                responders = {m.name: generators[m.name] if m.name in generators else _responder(cfg, m, suite.name)
                              for m in cfg.models}
                peers = {name: r for name, r in responders.items() if name != model.name and r is not None}
                summary = _run_suite(cfg, model, suite, responders[model.name], judge, peers)
                summaries.setdefault(model.name, {})[suite.name] = summary
                write_json_atomic(summary_path, summaries, default=str)
            for responder in generators.values():  # peers used by a pairwise suite are released too
                if responder is not None:
                    responder.close()
    finally:
        for responder in generators.values():
            if responder is not None:
                responder.close()
        if judge is not None:
            judge.close()
    ordered = {m.name: {s.name: summaries[m.name][s.name] for s in cfg.suites} for m in cfg.models}
    write_json_atomic(summary_path, ordered, default=str)
    write_report(ordered, out_dir)
    return ordered
