"""Backend for vLLM's offline engine (``vllm.LLM``), when vLLM is installed. GPU only; optional.

UNTESTED HERE: the CI machines have no GPU and no vLLM, so this file is written against vLLM's documented
``LLM.chat(messages_list, sampling_params=[...])`` / ``SamplingParams`` API and never executed by the test
suite. Requests arriving together are handed to one ``LLM.chat`` call (vLLM then schedules them with
continuous batching), each with its own ``SamplingParams``. JSON mode and schemas use vLLM's structured
outputs (``StructuredOutputsParams``, or ``GuidedDecodingParams`` before vLLM 0.11).
"""

from __future__ import annotations

import asyncio
import json

from novalign.llm.batching import BatchingQueue
from novalign.llm.types import BackendError, BackendResponse, ChatRequest, sample_seeds

__all__ = ["VLLMBackend"]


def _structured_kwargs(schema: dict) -> dict:
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:  # vLLM < 0.11
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


class VLLMBackend:
    """``vllm.LLM(model=..., **engine_args)`` behind the client interface."""

    kind = "vllm"

    def __init__(self, model: str, *, default_max_tokens: int = 256, max_batch_size: int = 256,
                 batch_wait_ms: float = 10.0, **engine_args):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError("the 'vllm' backend needs vLLM (GPU only): pip install vllm -- or use backend 'local' "
                              "(in-process transformers) or 'openai' against a running `vllm serve`") from exc
        self._sampling_params_cls = SamplingParams
        self.llm = LLM(model=model, **engine_args)
        self.model_name = model
        self.model_id = f"vllm:{model}"
        self.default_max_tokens = default_max_tokens
        self.queue: BatchingQueue[tuple[ChatRequest, object], BackendResponse] = BatchingQueue(
            self._run, max_batch_size=max_batch_size, max_wait_s=batch_wait_ms / 1000, size=lambda item: item[0].n,
            name="novalign-vllm",
        )

    def sampling_params(self, request: ChatRequest):
        kwargs: dict = {
            "n": request.n, "temperature": request.temperature, "top_p": request.top_p,
            "max_tokens": request.max_tokens or self.default_max_tokens, "stop": request.stop or None,
        }
        if request.top_k:
            kwargs["top_k"] = request.top_k
        if request.seed is not None:
            kwargs["seed"] = sample_seeds(request.seed, request.sample_index, 1)[0] if request.sample_index else request.seed
        if request.structured:
            schema = request.schema.model_json_schema() if request.schema is not None else {"type": "object"}
            kwargs.update(_structured_kwargs(schema))
        return self._sampling_params_cls(**kwargs)

    def _run(self, items: list[tuple[ChatRequest, object]]) -> list[BackendResponse]:
        chats = [i for i, (r, _) in enumerate(items) if r.prompt is None]
        raws = [i for i, (r, _) in enumerate(items) if r.prompt is not None]  # raw prompts: LLM.generate, no template
        by_index: dict[int, object] = {}
        groups: dict[str, list[int]] = {}  # LLM.chat takes one `tools` list for all its conversations
        for i in chats:
            groups.setdefault(json.dumps(items[i][0].tools, sort_keys=True), []).append(i)
        for group in groups.values():
            tools = items[group[0]][0].tools
            outs = self.llm.chat([items[i][0].messages for i in group], sampling_params=[items[i][1] for i in group],
                                 use_tqdm=False, **({"tools": tools} if tools else {}))
            by_index.update(zip(group, outs, strict=True))
        if raws:
            outs = self.llm.generate([items[i][0].prompt for i in raws], sampling_params=[items[i][1] for i in raws],
                                     use_tqdm=False)
            by_index.update(zip(raws, outs, strict=True))
        outputs = [by_index[i] for i in range(len(items))]
        responses = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda o: o.index)
            responses.append(BackendResponse(
                model=self.model_name, texts=[o.text for o in samples], finish_reasons=[o.finish_reason for o in samples],
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=sum(len(o.token_ids) for o in samples),
                completion_tokens_each=[len(o.token_ids) for o in samples],
            ))
        return responses

    async def generate(self, request: ChatRequest) -> BackendResponse:
        try:  # built here, so that one request's bad parameters fail that request, not its whole batch
            params = self.sampling_params(request)
        except (ValueError, TypeError) as exc:
            raise BackendError("bad_request", f"{type(exc).__name__}: {exc}", retryable=False) from exc
        return await asyncio.wrap_future(self.queue.submit((request, params)))

    async def aclose(self) -> None:
        self.queue.close()
