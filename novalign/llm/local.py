"""In-process generation with a local Hugging Face model: one engine, batched across concurrent callers.

:class:`LocalEngine` owns the model, its tokenizer and a :class:`~novalign.llm.batching.BatchingQueue`;
every caller -- the client's :class:`LocalBackend` or an HTTP handler of ``novalign serve`` -- submits rows
(:class:`~novalign.models.generate.GenerationRequest`) and the queue runs what arrives together as one
:func:`~novalign.models.generate.generate_batch`. Runs on CPU or GPU.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import threading
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Callable, Sequence

import torch

from novalign.llm.batching import BatchingQueue
from novalign.llm.types import BackendError, BackendResponse, ChatRequest, sample_seeds
from novalign.models.generate import GenerationOutput, GenerationRequest, encode_chat, generate_batch
from novalign.models.load import load_model, load_tokenizer

__all__ = ["InvalidRow", "LocalEngine", "LocalBackend", "cancel_rows", "model_fingerprint"]


def model_fingerprint(path: str | Path) -> str:
    """Identity of a model directory for cache keys: its resolved path plus its weight files' sizes and times."""
    p = Path(path).expanduser().resolve()
    parts = [str(p)]
    for f in sorted(p.glob("*")):
        if f.suffix in {".safetensors", ".bin", ".json"} and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return f"{p.name}@{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"


class InvalidRow(ValueError):
    """A generation parameter the engine cannot run; ``param`` names it (OpenAI's error field)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _check_sampling(*, n: int, temperature: float, top_p: float, top_k: int | None, max_tokens: int | None,
                    seed: int | None) -> int:
    """Refuse values that would fail (or poison) a whole batch, e.g. a top_k past int64; returns top_k as the
    sampler takes it (0: off; -1 and None mean off too, vLLM's convention)."""
    def bad(param: str, why: str) -> InvalidRow:
        return InvalidRow(f"{param} {why}", param)

    if not isinstance(n, int) or n < 1:
        raise bad("n", f"must be an integer >= 1, got {n!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise bad("temperature", f"must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and math.isfinite(top_p) and 0 < top_p <= 1):
        raise bad("top_p", f"must be in (0, 1], got {top_p!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not -1 <= top_k < 2**31):
        raise bad("top_k", f"must be an integer in [-1, 2^31), got {top_k!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise bad("max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63):
        raise bad("seed", f"must be a 64-bit integer, got {seed!r}")
    return top_k if top_k and top_k > 0 else 0


def _auto_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LocalEngine:
    """A local model behind a batching queue. ``submit(rows)`` -> future of one output per row."""

    def __init__(self, model_path: str | Path, *, device: str = "auto", dtype: str = "auto", max_batch_size: int = 32,
                 batch_wait_ms: float = 5.0, default_max_tokens: int = 256, name: str | None = None):
        self.path = Path(model_path)
        self.device = _auto_device(device)
        if dtype == "auto":
            dtype = "bf16" if self.device.startswith("cuda") else "float32"
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_model(self.path, dtype=dtype, device=self.device)
        self.model.eval()
        self.name = name or self.path.resolve().name
        self.fingerprint = model_fingerprint(self.path)
        self.default_max_tokens = default_max_tokens
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_batch_size = max_batch_size
        # a job whose tokens were streamed already cannot be rerun alone after its batch failed: its client
        # saw those tokens
        self.queue: BatchingQueue[list[GenerationRequest], list[GenerationOutput]] = BatchingQueue(
            self._run, max_batch_size=max_batch_size, max_wait_s=batch_wait_ms / 1000, size=len,
            retryable=lambda job: not any(r.tokens_streamed for r in job),
        )

    @functools.cached_property
    def max_prompt_chars(self) -> int | None:
        """Most characters a prompt that fits the context can have: context length times the longest token
        string (a token's string has at least as many characters as its decoded text). ``None``: no context
        limit known. Lets a server refuse a huge prompt before tokenizing it."""
        if self.max_positions is None:
            return None
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        longest = max((len(t) for t in tokens if isinstance(t, str)), default=1)
        return self.max_positions * max(longest, 1)

    def _run(self, jobs: list[list[GenerationRequest]]) -> list[list[GenerationOutput]]:
        outputs = generate_batch(self.model, self.tokenizer, [row for job in jobs for row in job])
        split, start = [], 0
        for job in jobs:
            split.append(outputs[start : start + len(job)])
            start += len(job)
        return split

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return encode_chat(self.tokenizer, messages, tools)

    def encode_text(self, text: str) -> list[int]:
        """``text`` with the tokenizer's special tokens (a BOS where it adds one): ``/v1/completions`` with
        ``add_special_tokens: true``."""
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode_prompt(self, text: str) -> list[int]:
        """A raw completion prompt (:attr:`ChatRequest.prompt`), continued as it is: no BOS or other special
        token is added, as the project's pretraining encodes plain text (``novalign.data.text``)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def request_rows(self, request: ChatRequest) -> tuple[list[int], list[GenerationRequest]]:
        """The prompt ids and the ``n`` rows of one client request (its chat rendered by the template, or its
        raw prompt).

        Raises:
            ValueError (or the template's error): the messages do not render, or the prompt does not fit.
        """
        if request.prompt is not None:
            prompt_ids = self.encode_prompt(request.prompt)
        else:
            prompt_ids = self.encode_chat(request.messages, request.tools)
        rows = self.rows(prompt_ids, n=request.n, temperature=request.temperature, top_p=request.top_p,
                         top_k=request.top_k, max_tokens=request.max_tokens, stop=request.stop, seed=request.seed,
                         sample_index=request.sample_index)
        return prompt_ids, rows

    def rows(self, prompt_ids: list[int], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int | None = None, max_tokens: int | None = None, stop: Sequence[str] | None = None,
             seed: int | None = None, sample_index: int = 0,
             on_token: Callable[[int, int], None] | None = None) -> list[GenerationRequest]:
        """The ``n`` rows of one request; ``on_token(sample, token_id)`` streams them.

        Raises:
            InvalidRow: a parameter out of range, or the prompt plus ``max_tokens`` does not fit the context.
        """
        top_k = _check_sampling(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                seed=seed)
        if top_k >= len(self.tokenizer):
            top_k = 0  # keeps every token anyway: off
        room = None if self.max_positions is None else self.max_positions - len(prompt_ids)
        if room is not None and room < 1:
            raise InvalidRow(f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.max_positions}",
                             "messages")
        if max_tokens is None:
            max_tokens = self.default_max_tokens if room is None else min(self.default_max_tokens, room)
        elif room is not None and max_tokens > room:
            raise InvalidRow(f"max_tokens={max_tokens} plus the {len(prompt_ids)}-token prompt exceeds this "
                             f"model's context of {self.max_positions} tokens", "max_tokens")
        seeds = sample_seeds(seed, sample_index, n)
        cancel = threading.Event()  # one per call: cancel_rows ends all n rows
        return [
            GenerationRequest(
                prompt_ids, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, seed=seeds[j], stop=tuple(stop or ()),
                on_token=None if on_token is None else (lambda tok, j=j: on_token(j, tok)), cancel=cancel,
            )
            for j in range(n)
        ]

    def submit(self, rows: list[GenerationRequest]) -> Future:
        """Future of one output per row. More rows than ``max_batch_size`` go as several jobs (each a batch of
        its own), so one request can never make a batch larger than the cap. Cancelling the future cancels
        every row (queued jobs are skipped, running rows end at their next step)."""
        size = self.max_batch_size
        if not rows:
            done: Future = Future()
            done.set_result([])
            return done
        parts = [self.queue.submit(rows[i : i + size]) for i in range(0, len(rows), size)]
        if len(parts) == 1:
            whole = parts[0]
        else:
            whole = Future()
            whole.set_running_or_notify_cancel()
            left = [len(parts)]
            lock = threading.Lock()

            def part_done(_: Future) -> None:
                with lock:
                    left[0] -= 1
                    if left[0]:
                        return
                errors = [p.exception() for p in parts if not p.cancelled() and p.exception() is not None]
                if errors:
                    whole.set_exception(errors[0])
                elif any(p.cancelled() for p in parts):
                    whole.set_exception(CancelledError("the request was cancelled"))
                else:
                    whole.set_result([out for p in parts for out in p.result()])

            for p in parts:
                p.add_done_callback(part_done)
        whole.parts = parts  # for cancel_rows
        return whole

    def close(self) -> None:
        self.queue.close()


def cancel_rows(fut: Future, rows: Sequence[GenerationRequest]) -> None:
    """Give up on ``rows`` submitted as ``fut``: queued jobs are dropped, running rows end at their next step."""
    for row in rows:
        if row.cancel is not None:
            row.cancel.set()
    for part in getattr(fut, "parts", [fut]):
        part.cancel()


class LocalBackend:
    """Client backend over a :class:`LocalEngine` (pass an engine, or a model path and engine options)."""

    kind = "local"

    def __init__(self, engine: LocalEngine | str | Path, **engine_options):
        self._owns_engine = not isinstance(engine, LocalEngine)
        self.engine = LocalEngine(engine, **engine_options) if self._owns_engine else engine
        self.model_name = self.engine.name
        self.model_id = f"local:{self.engine.fingerprint}"

    async def generate(self, request: ChatRequest) -> BackendResponse:
        prompt_ids, rows = self._prepare(request)
        outputs = await asyncio.wrap_future(self.engine.submit(rows))
        return self._response(prompt_ids, outputs)

    def prompt_tokens(self, request: ChatRequest) -> int:
        """How many tokens ``request``'s prompt is for this model (its template or raw encoding)."""
        return len(self.engine.encode_prompt(request.prompt) if request.prompt is not None
                   else self.engine.encode_chat(request.messages, request.tools))

    async def generate_many(self, requests: list[ChatRequest]) -> list[BackendResponse | BackendError]:
        """All ``requests`` as one job of the engine, so they run in one ``generate_batch``, rows in this order
        (when nothing else is queued: the engine may add other callers' jobs to the batch, never split this
        one). A request that cannot be encoded comes back as its :class:`BackendError`; the rest still run."""
        prepared: list[tuple[list[int], list] | BackendError] = []
        for request in requests:
            try:
                prepared.append(self._prepare(request))
            except BackendError as exc:
                prepared.append(exc)
        jobs = [p for p in prepared if not isinstance(p, BackendError)]
        rows = [row for _, job_rows in jobs for row in job_rows]
        outputs = await asyncio.wrap_future(self.engine.submit(rows)) if rows else []
        results: list[BackendResponse | BackendError] = []
        start = 0
        for p in prepared:
            if isinstance(p, BackendError):
                results.append(p)
                continue
            prompt_ids, job_rows = p
            results.append(self._response(prompt_ids, outputs[start : start + len(job_rows)]))
            start += len(job_rows)
        return results

    def _prepare(self, request: ChatRequest) -> tuple[list[int], list[GenerationRequest]]:
        try:
            return self.engine.request_rows(request)
        except Exception as exc:  # a template that rejects the messages, a prompt too long: the request's fault
            raise BackendError("bad_request", f"{type(exc).__name__}: {exc}", retryable=False) from exc

    def _response(self, prompt_ids: list[int], outputs: list[GenerationOutput]) -> BackendResponse:
        return BackendResponse(
            model=self.model_name, texts=[o.text for o in outputs], finish_reasons=[o.finish_reason for o in outputs],
            prompt_tokens=len(prompt_ids), completion_tokens=sum(o.completion_tokens for o in outputs),
            completion_tokens_each=[o.completion_tokens for o in outputs],
        )

    async def aclose(self) -> None:
        if self._owns_engine:
            self.engine.close()
