"""Steps that call models: ``llm_generate`` (n samples from one or several models, with per-model quotas) and
``llm_judge`` (a verdict per record through :func:`novalign.eval.judge.ask_judge`).

Every call goes through the one :class:`~novalign.llm.LLMClient` (limits, retries, SQLite request cache,
accounting). The cache key is the request (model, messages, sampling parameters) and nothing else: how a
reply is parsed is no part of it, so changing a judge's parser reruns the step from the cache with zero new
requests. A changed ``max_tokens`` is a new request, unless the step opts in with ``reuse_max_tokens``:
replies cached under those earlier limits that fit the new one (finished by themselves, not cut by the limit,
no longer than the new limit) are copied to the new key (:func:`fitting_samples`) before anything is asked.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from novalign.config.llm import LLMConfig
from novalign.config.pipeline import LLMGenerateConfig, LLMJudgeConfig
from novalign.flywheel.step import TEXT, Outcome, Step, drop, register

__all__ = ["fitting_samples", "reuse_fitting", "LLMGenerate", "LLMJudge", "merged_llm"]

_END = object()


def merged_llm(default: LLMConfig | None, overrides: dict[str, Any], where: str) -> LLMConfig:
    """The pipeline's ``llm`` with a step's (or a model's) keys over it."""
    base = default.model_dump() if default is not None else {}
    try:
        return LLMConfig.model_validate({**base, **overrides})
    except Exception as exc:
        raise ValueError(f"{where}: llm: {exc}") from exc


def llm_identity(cfg: LLMConfig) -> dict[str, Any]:
    """What of an LLM config changes answers (so it is in the step's key): not limits, retries or the cache."""
    return {"backend": cfg.backend, "model": cfg.model, "base_url": cfg.cache_namespace or cfg.base_url}


def fitting_samples(samples: dict, max_tokens: int | None, old_max_tokens: int | None, exact_counts: bool) -> dict:
    """Of samples cached under limit ``old_max_tokens`` (index -> CachedSample), the ones still valid under
    ``max_tokens``: finished with a reason other than ``length`` (the old limit did not cut them) and, when the
    new limit is lower, no longer than it. That length is known only if the cache holds each sample's own
    token count (``exact_counts``; an OpenAI server reports one total for n samples, which the client splits
    evenly): without it nothing is reused under a lower limit. Only the leading run of indices 0, 1, ... is
    returned, so sample k stays sample k."""
    lower = max_tokens is not None and (old_max_tokens is None or max_tokens < old_max_tokens)
    if lower and not exact_counts:
        return {}
    out = {}
    for i in range(len(samples)):
        s = samples.get(i)
        if s is None or s.finish_reason == "length" or (lower and s.completion_tokens > max_tokens):
            break
        out[i] = s
    return out


def reuse_fitting(client, requests: Sequence, old_limits: Sequence[int]) -> int:
    """Copy the replies cached under earlier ``max_tokens`` values (``old_limits``, tried in order) that fit each
    request's limit (:func:`fitting_samples`) to the request's own cache key, so the client finds them there.
    Returns how many requests got samples this way."""
    from novalign.llm.cache import cache_key

    cache, model_id = client.cache, client.backend.model_id
    if cache is None or not old_limits:
        return 0
    copied = 0
    for request in requests:
        key = cache_key(model_id, request)
        if len(cache.get(key, 0, request.n)) == request.n:
            continue
        for old in old_limits:
            stored = cache.get(cache_key(model_id, dataclasses.replace(request, max_tokens=old)), 0, request.n)
            # one sample per call: the server's token count is that sample's own (assumes the earlier run asked
            # with the same n, as a rerun of the same step does)
            found = fitting_samples(stored, request.max_tokens, old, exact_counts=request.n == 1)
            if found:
                cache.put(key, found, model_id=model_id, request=request)
                copied += 1
                break
    return copied


def _usage(client, result) -> dict[str, Any]:
    price = client.usage.price(client.backend.model_name)
    cached = bool(getattr(result, "cached", False)) if result.ok else False
    cost = 0.0
    if price is not None and result.ok and not cached:
        cost = (result.prompt_tokens * price.prompt_per_million
                + result.completion_tokens * price.completion_per_million) / 1e6
    return {"requests": int(result.ok and not cached) + int(not result.ok), "cached": int(cached), "cost": cost}


def _add_usage(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in ("requests", "cached", "cost")}


def _streamed(run: Callable[[Callable[[Any], None]], None]) -> Iterator[Any]:
    """Run ``run(deliver)`` on a thread and yield what it delivers, as it delivers it; re-raise its error."""
    items: queue.Queue = queue.Queue()
    error: list[BaseException] = []

    def target():
        try:
            run(items.put)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            error.append(exc)
        finally:
            items.put(_END)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while (item := items.get()) is not _END:
        yield item
    thread.join()
    if error:
        raise error[0]


def ask_models_concurrently(clients: dict[str, Any], plans: dict[str, list]) -> Iterator[tuple[str, Any]]:
    """``(model name, result)`` for every request of ``plans`` (model name -> requests), as the results come:
    each model's ``LLMClient.batch`` runs on its own thread, so k models take about as long as the slowest,
    not as long as all of them together (each client keeps its own limits). One model's crash is re-raised
    (the step fails) instead of its results going silently missing."""
    def run(deliver):
        errors: list[BaseException] = []

        def ask(name: str, requests: list) -> None:
            try:
                for res in clients[name].batch(requests, progress=False):
                    deliver((name, res))
            except BaseException as exc:  # noqa: BLE001 - re-raised below: a crash fails the step
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=item, daemon=True) for item in plans.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    return _streamed(run)


class _LLMStep(Step):
    resources = "llm"

    def __init__(self, config, *, llm: LLMConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.default_llm = llm
        self.clients: dict[str, Any] = {}

    def _client(self, name: str, cfg: LLMConfig):
        from novalign.llm import LLMClient

        if name not in self.clients:
            self.clients[name] = LLMClient.from_config(cfg, progress=False, print_usage=False)
        return self.clients[name]

    def close(self) -> dict[str, Any]:
        usage = {}
        for name, client in self.clients.items():
            usage[name] = client.usage.to_dict()["total"]
            client.close()
        self.clients = {}
        return usage


@register
class LLMGenerate(_LLMStep):
    type = "llm_generate"
    Config = LLMGenerateConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.model_llm = {m.name: merged_llm(self.default_llm, m.llm, f"llm_generate model {m.name!r}")
                          for m in config.models}

    def identity(self):
        return super().identity() | {"llm": {k: llm_identity(v) for k, v in self.model_llm.items()}}

    def input_fields(self):
        return {self.config.prompt_field: TEXT}

    def output_fields(self):
        return [self.config.output_field, "model", "sample"]

    def _request(self, record: dict, n: int, tag: Any):
        from novalign.llm.types import ChatRequest

        c, value = self.config, record[self.config.prompt_field]
        if isinstance(value, str):
            messages = ([{"role": "system", "content": c.system}] if c.system else []) + [{"role": "user", "content": value}]
        else:
            messages = value
        return ChatRequest(messages=messages, n=n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                           max_tokens=c.max_tokens, seed=c.seed, tag=tag, tools=self._tools(record))

    def check_record(self, record: dict, path: str, line: int) -> None:
        self._tools(record, path, line)

    def _tools(self, record: dict, path: str = "input", line: int = 0) -> list[dict] | None:
        """The record's tool definitions (``tools_field``), checked as training data's are; None without."""
        from novalign.data.tools import normalize_tools

        field = self.config.tools_field
        return None if field is None else normalize_tools(record.get(field), path=path, line=line)

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        c = self.config
        plan: dict[str, list] = {}  # model name -> requests
        expected: dict[str, int] = {}
        for pos, record in items:
            for m in c.models:
                if m.max_prompts is None or pos < m.max_prompts:
                    plan.setdefault(m.name, []).append(self._request(record, m.n or c.n, (record["_id"], m.name)))
                    expected[record["_id"]] = expected.get(record["_id"], 0) + 1
        records = {r["_id"]: r for _, r in items}
        for _, r in items:  # a prompt past every model's quota is dropped, and says so
            if r["_id"] not in expected:
                yield drop(r, "past every model's quota")
        clients = {name: self._client(name, self.model_llm[name]) for name in plan}
        for name, requests in plan.items():
            reuse_fitting(clients[name], requests, c.reuse_max_tokens)

        got: dict[str, list] = {}
        for name, result in ask_models_concurrently(clients, plan):
            rid = result.request.tag[0]
            got.setdefault(rid, []).append((name, result))
            if len(got[rid]) == expected[rid]:
                yield self._outcome(records[rid], got.pop(rid), clients)

    def _outcome(self, record: dict, results: list, clients: dict) -> Outcome:
        c = self.config
        order = {m.name: i for i, m in enumerate(c.models)}
        results.sort(key=lambda nr: order[nr[0]])
        usage: dict = {}
        out, errors = [], {}
        for name, result in results:
            usage = _add_usage(usage, _usage(clients[name], result))
            if not result.ok:
                errors[name] = f"{result.kind}: {result.reason}"
                continue
            for k, choice in enumerate(result.choices):
                out.append({**record, "_id": f"{record['_id']}/{name}/{k}", c.output_field: choice.text,
                            "model": name, "sample": k, "finish_reason": choice.finish_reason})
        if errors and c.drop_failed:
            kinds = sorted({e.split(":", 1)[0] for e in errors.values()})
            return {"_id": record["_id"], "out": [], "drop": f"llm failed: {'/'.join(kinds)}",
                    "detail": {"errors": errors}, "usage": usage, "llm_failed": True}
        for name, error in errors.items():
            out.append({**record, "_id": f"{record['_id']}/{name}/error", c.output_field: None, "model": name,
                        "sample": None, f"{c.output_field}_error": error})
        # llm_failed: a call failed (no reply to cache), so a run with retry_failed asks again (pipeline.py)
        return {"_id": record["_id"], "out": out, "drop": None, "detail": None, "usage": usage,
                **({"llm_failed": True} if errors else {})}


def _range_checked(parse: Callable[[str], float], low: float, high: float, text: str) -> float:
    from novalign.eval.judge import JudgeParseError

    score = parse(text)
    if not low <= score <= high:
        raise JudgeParseError(f"score {score:g} outside {low:g}..{high:g}")
    return score


@register
class LLMJudge(_LLMStep):
    type = "llm_judge"
    Config = LLMJudgeConfig

    def __init__(self, config, **kwargs: Any):
        super().__init__(config, **kwargs)
        from novalign.eval.judge import load_template

        self.judge_llm = merged_llm(self.default_llm, config.llm, "llm_judge")
        self.template = load_template(config.template, config.lang, config.template_dir)

    def identity(self):
        # the template's text, not only its name: editing your template file reruns the step
        return super().identity() | {"llm": llm_identity(self.judge_llm), "template_text": self.template}

    def input_fields(self):
        from novalign.eval.judge import _PLACEHOLDER

        return {name: (str, list, int, float) for name in _PLACEHOLDER.findall(self.template)}

    def output_fields(self):
        return [self.config.output_field]

    def parser(self) -> Callable[[str], Any]:
        from novalign.eval.judge import bracket_score, last_number, parse_pairwise, parse_rating

        c = self.config
        if c.parser == "rating":
            return partial(parse_rating, low=c.low, high=c.high)
        if c.parser == "pairwise":
            return parse_pairwise
        return partial(_range_checked, bracket_score if c.parser == "brackets" else last_number, c.low, c.high)

    def process(self, items: Sequence[tuple[int, dict]]) -> Iterator[Outcome]:
        from novalign.eval.judge import ask_judge, render
        from novalign.flywheel.step import text_of

        c, records = self.config, [r for _, r in items]
        if not records:
            return
        client = self._client("judge", self.judge_llm)
        prompts = [render(self.template, **{k: text_of(v) if isinstance(v, list) else v for k, v in r.items()})
                   for r in records]
        parse = self.parser()
        asked = {"before": 0}
        if c.reuse_max_tokens:  # the first round's requests, exactly as ask_judge builds them
            from novalign.llm.types import ChatRequest

            first = [ChatRequest(messages=[{"role": "user", "content": p}], temperature=0.0, max_tokens=c.max_tokens)
                     for p in prompts]
            reuse_fitting(client, first, c.reuse_max_tokens)

        def run(deliver):
            ask_judge(client, prompts, [parse] * len(prompts), attempts=c.attempts, lang=c.lang,
                      template_dir=c.template_dir, max_tokens=c.max_tokens, on_done=lambda i, j: deliver((i, j)))

        for i, judgment in _streamed(run):
            yield self._outcome(records[i], judgment, client, asked)

    def _outcome(self, record: dict, judgment, client, asked: dict) -> Outcome:
        c = self.config
        # usage of this judgment: calls the client made since the last outcome (re-asks included)
        total = client.usage.to_dict()["total"]
        now = {"requests": total["requests"] + total["failed_requests"], "cached": total["cached_requests"],
               "cost": total["cost"] or 0.0}
        usage = {k: now[k] - asked.get(k, 0) for k in now}
        asked.update(now)
        if judgment.failed:
            # a failed call is marked for retry_failed; a reply that would not parse is not: asked again, the
            # cache gives back the same replies and the same failure
            flag = {"llm_failed": True} if judgment.failure is not None else {}
            if c.drop_failed:
                return {"_id": record["_id"], "out": [], "drop": "judgment failed",
                        "detail": {"error": judgment.error, "raw": judgment.raw}, "usage": usage, **flag}
            fields = {c.output_field: None, f"{c.output_field}_error": judgment.error, f"{c.output_field}_raw": judgment.raw}
            return {"_id": record["_id"], "out": [{**record, **fields}], "drop": None, "detail": None, "usage": usage,
                    **flag}
        if c.min_score is not None and isinstance(judgment.parsed, (int, float)) and judgment.parsed < c.min_score:
            return {"_id": record["_id"], "out": [], "drop": "below min_score", "detail": {"score": judgment.parsed},
                    "usage": usage}
        return {"_id": record["_id"], "out": [{**record, c.output_field: judgment.parsed}], "drop": None,
                "detail": None, "usage": usage}
