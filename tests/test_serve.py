"""`novalign serve` end to end over real HTTP on 127.0.0.1: the novalign client and the official `openai` SDK.

One server process (the real CLI) serves the tiny model for the whole module and is stopped at the end.
"""

from __future__ import annotations

import os

import openai
import pytest
from cli_server import health, served

from novalign.llm import ChatRequest, LLMClient, RetryPolicy
from novalign.llm.openai_compat import OpenAIBackend

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
KEY = "test-key"
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """``novalign serve`` on a free loopback port; yields its base URL (``.../v1``)."""
    with served(tiny_model_dir, "--api-key", KEY, "--set", "engine.max_batch_size=64",
                "--set", "engine.batch_wait_ms=20", "--set", "engine.default_max_tokens=16", name=MODEL) as url:
        yield url


def client_for(url: str, **kwargs) -> LLMClient:
    backend = OpenAIBackend(url, MODEL, api_key=KEY, timeout_s=60)
    return LLMClient(backend, progress=False, print_usage=False, retry=RetryPolicy(max_attempts=2, base_delay=0.1),
                     **kwargs)


@pytest.fixture(scope="module")
def sdk(server):
    sdk = openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60)
    yield sdk
    sdk.close()


def test_novalign_client_against_serve(server):
    with client_for(server) as client:
        result = client.chat([{"role": "user", "content": "Hello"}], n=3, temperature=0.9, top_k=40, max_tokens=6, seed=1)
        assert len(result.texts) == 3 and result.prompt_tokens > 0 and 0 < result.completion_tokens <= 18
        greedy = client.chat([{"role": "user", "content": "Hello"}], temperature=0, max_tokens=6)
        assert greedy.choices[0].finish_reason in ("stop", "length")
        usage = client.usage.to_dict()["models"][MODEL]
        assert usage["completion_tokens"] == result.completion_tokens + greedy.completion_tokens


def test_openai_sdk_chat_completions_models_and_streaming(server, sdk):
    messages = [{"role": "user", "content": "Tell me something"}]
    assert [m.id for m in sdk.models.list().data] == [MODEL]
    full = sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                       extra_body={"top_k": 5})
    assert full.object == "chat.completion" and full.usage.completion_tokens <= 12
    stream = sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stream=True,
                                         stream_options={"include_usage": True})
    pieces, finish, chunks, usage = [], None, 0, None
    for chunk in stream:
        chunks += 1
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content  # streaming sends the same greedy text
    assert finish == full.choices[0].finish_reason and usage.completion_tokens == full.usage.completion_tokens
    assert chunks >= 3  # role chunk, token chunks, finish chunk: really streamed, not one blob
    reply = full.choices[0].message.content
    if len(reply) > 4:  # a stop string from the middle of the greedy reply: streamed text stops right before it
        stop = reply[2:4]
        stopped = sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stream=True,
                                              stop=[stop])
        streamed = "".join(c.choices[0].delta.content or "" for c in stopped if c.choices)
        assert streamed == reply[: reply.find(stop)]
    text = sdk.completions.create(model=MODEL, prompt=["Once upon", "a time"], max_tokens=4, n=2, temperature=0.7)
    assert len(text.choices) == 4 and all(c.finish_reason in ("stop", "length") for c in text.choices)


def test_errors_have_openai_shape(server, sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=7)
    assert info.value.status_code == 400 and "temperature" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):  # 5000 new tokens cannot fit the tiny model's context
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=100_000)


def test_concurrent_requests_are_batched_and_all_answered(server):
    before = health(server)
    requests = [ChatRequest([{"role": "user", "content": f"question {i}"}], temperature=0.7, max_tokens=8, seed=i)
                for i in range(40)]
    with client_for(server, max_concurrency=40) as client:
        results = list(client.batch(requests))
    after = health(server)
    assert sorted(r.index for r in results) == list(range(40)) and all(r.ok for r in results)
    assert after["chat_completions"] - before["chat_completions"] == 40
    assert after["batches"] - before["batches"] < 40 and after["largest_batch"] > 1


def test_cache_makes_a_rerun_free(server, tmp_path):
    requests = [ChatRequest([{"role": "user", "content": f"cached {i}"}], temperature=1.0, n=2, max_tokens=5)
                for i in range(10)]
    with client_for(server, cache=tmp_path / "cache.sqlite", max_concurrency=10) as client:
        first = client.run_batch(requests)
    served = health(server)["requests"]
    with client_for(server, cache=tmp_path / "cache.sqlite") as client:
        second = client.run_batch(requests)
        assert client.usage.to_dict()["models"][MODEL]["requests"] == 0
    assert health(server)["requests"] == served  # zero HTTP requests reached the server
    assert [r.texts for r in second] == [r.texts for r in first] and all(r.cached for r in second)


def test_raw_prompt_goes_to_completions_and_matches_the_local_backend(server, tiny_model_dir):
    """``ChatRequest(prompt=...)`` through the openai backend is served by ``/v1/completions`` (a chat endpoint
    would reject a body without messages) and continues the text as the local backend does (no template)."""
    from novalign.llm.local import LocalBackend

    request = ChatRequest(prompt="Question: What is 2 + 2?\nAnswer:", temperature=0.0, max_tokens=8, stop=["\n\n"])
    with client_for(server) as client:
        remote = client.chat(request)
    with LLMClient(LocalBackend(tiny_model_dir, device="cpu", dtype="float32"), progress=False,
                   print_usage=False) as client:
        here = client.chat(request)
    assert (remote.text, remote.prompt_tokens) == (here.text, here.prompt_tokens)
