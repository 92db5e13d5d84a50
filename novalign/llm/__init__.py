"""The LLM access layer: one client for every stage that calls a language model.

* :class:`LLMClient` -- sync ``chat``, ``batch`` / ``abatch`` (results as they finish), ``run_batch`` (to JSONL).
* Backends: :class:`~novalign.llm.openai_compat.OpenAIBackend` (any OpenAI-compatible server),
  :class:`~novalign.llm.local.LocalBackend` (in-process transformers, batched),
  :class:`~novalign.llm.vllm_engine.VLLMBackend` (vLLM offline engine, optional).
* :class:`RequestCache` (SQLite), :class:`Accounting` (tokens and cost), :class:`RetryPolicy`.
* ``novalign serve`` (:mod:`novalign.llm.server`): an OpenAI-compatible server for a local model.

Importing this package does not import torch; the local and vLLM backends load on first use.
"""

from novalign.llm.accounting import Accounting, Price
from novalign.llm.cache import RequestCache
from novalign.llm.client import LLMClient, make_backend
from novalign.llm.limits import RateLimiter, RetryPolicy
from novalign.llm.types import BackendError, ChatRequest, ChatResult, Choice, Failure, LLMError

__all__ = [
    "Accounting", "BackendError", "ChatRequest", "ChatResult", "Choice", "Failure", "LLMClient", "LLMError", "Price",
    "RateLimiter", "RequestCache", "RetryPolicy", "make_backend",
]
