"""The LLM access layer: batched local generation, cache, limits, retries, accounting, structured output.

HTTP behaviour is tested against a fault-injecting OpenAI-style server of our own on 127.0.0.1 (429 with
Retry-After, 500, slow responses, truncated and invalid bodies). Every server is stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from pydantic import BaseModel

from novalign.llm import Accounting, ChatRequest, LLMClient, LLMError, Price, RateLimiter, RequestCache, RetryPolicy
from novalign.llm.cache import CachedSample, cache_key
from novalign.llm.limits import parse_retry_after
from novalign.llm.openai_compat import OpenAIBackend
from novalign.llm.structured import check_reply, extract_json

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
USER = [{"role": "user", "content": "Say hi"}]


# ------------------------------------------------------------------------------------------ fault server


class FaultServer:
    """An OpenAI-style chat server on loopback whose behaviour is chosen by the first path segment.

    ``http://127.0.0.1:PORT/<scenario>/v1/chat/completions``; every hit is logged with its arrival time and
    body, and ``in_flight_max`` records the most "busy" requests it was serving at once.
    """

    def __init__(self):
        self.hits: list[tuple[str, float, dict]] = []
        self.auth: list[str | None] = []  # the Authorization header of every hit
        self.lock = threading.Lock()
        self.in_flight = 0
        self.in_flight_max = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                scenario = self.path.strip("/").split("/")[0]
                body = json.loads(raw)
                with server.lock:
                    server.hits.append((scenario, time.monotonic(), body))
                    server.auth.append(self.headers.get("authorization"))
                    count = sum(1 for s, _, _ in server.hits if s == scenario)
                    if scenario == "busy":
                        server.in_flight += 1
                        server.in_flight_max = max(server.in_flight_max, server.in_flight)
                try:
                    server.respond(self, scenario, count, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    self.close_connection = True
                finally:
                    with server.lock:
                        server.in_flight -= scenario == "busy"

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, scenario: str) -> int:
        return sum(1 for s, _, _ in self.hits if s == scenario)

    def times(self, scenario: str) -> list[float]:
        return [t for s, t, _ in self.hits if s == scenario]

    @staticmethod
    def _send(handler, status: int, payload: bytes, headers: dict | None = None, length: int | None = None):
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload) if length is None else length))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()

    @staticmethod
    def completion(body: dict, texts: list[str]) -> bytes:
        return json.dumps({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3 * len(texts), "total_tokens": 7 + 3 * len(texts)},
        }).encode()

    def respond(self, h, scenario: str, count: int, body: dict) -> None:
        n = body.get("n", 1)
        last = body["messages"][-1]["content"]
        ok = self.completion(body, [f"{last} #{body.get('seed')}/{i}/{count}" for i in range(n)])
        if scenario == "ok":
            self._send(h, 200, ok)
        elif scenario == "busy":  # slow enough that requests overlap
            time.sleep(0.15)
            self._send(h, 200, ok)
        elif scenario == "r429" and count <= 2:
            self._send(h, 429, b'{"error": {"message": "slow down"}}', {"retry-after": "0.3"})
        elif scenario in ("r500", "always500") and (count <= 2 or scenario == "always500"):
            self._send(h, 500, b'{"error": {"message": "boom"}}')
        elif scenario == "slow" and count == 1:
            time.sleep(1.5)
            self._send(h, 200, ok)
        elif scenario == "truncated" and count == 1:
            self._send(h, 200, ok[:20], length=len(ok))  # promises more bytes than it sends, then closes
            h.close_connection = True
        elif scenario == "invalid":
            self._send(h, 200, b'{"choices": [{"index": 0, "message": ')  # complete HTTP, broken JSON
        elif scenario == "bad400":
            self._send(h, 400, b'{"error": {"message": "messages: field required", "type": "invalid_request_error"}}')
        elif scenario == "json":  # invalid, then schema-violating, then valid JSON, by conversation length
            replies = {1: "Sure! Here you go: name=a", 3: '{"name": "a"}', 5: '```json\n{"name": "a", "score": 2}\n```'}
            self._send(h, 200, self.completion(body, [replies.get(len(body["messages"]), "?")]))
        else:
            self._send(h, 200, ok)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def fault_server():
    server = FaultServer()
    yield server
    server.close()


def http_client(server: FaultServer, scenario: str, **kwargs) -> LLMClient:
    backend = OpenAIBackend(f"{server.url}/{scenario}/v1", "fake-model", api_key="k", timeout_s=kwargs.pop("timeout_s", 5.0))
    kwargs.setdefault("retry", RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=2.0))
    kwargs.setdefault("timeout_s", 5.0)
    return LLMClient(backend, progress=False, print_usage=False, seed=0, **kwargs)


# ------------------------------------------------------------------------------------------ local generation


def test_generate_batch_rows_keep_their_own_parameters(tiny_model_dir):
    """Greedy rows equal plain HF greedy decoding; a seeded sampled row draws the same tokens whatever
    shares its batch; each row stops at its own max_new_tokens / stop string."""
    from novalign.models.generate import GenerationRequest, encode_chat, generate_batch, generate_chat
    from novalign.models.load import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    ids = encode_chat(tok, USER)
    other = encode_chat(tok, [{"role": "user", "content": "A much longer question about many things?"}])
    want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    greedy, short, sampled = generate_batch(model, tok, [
        GenerationRequest(ids, max_new_tokens=6),
        GenerationRequest(other, max_new_tokens=2),
        GenerationRequest(ids, max_new_tokens=6, temperature=1.0, top_k=50, seed=7),
    ])
    assert greedy.token_ids == want[: len(greedy.token_ids)]
    assert short.completion_tokens <= 2
    alone = generate_batch(model, tok, [GenerationRequest(ids, max_new_tokens=6, temperature=1.0, top_k=50, seed=7)])[0]
    assert alone.token_ids == sampled.token_ids
    # a stop string cuts the text and reports finish_reason "stop"
    full = generate_batch(model, tok, [GenerationRequest(ids, max_new_tokens=12)])[0]
    if len(full.text) > 3:
        stop = full.text[2:4]
        cut = generate_batch(model, tok, [GenerationRequest(ids, max_new_tokens=12, stop=[stop])])[0]
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    # the old entry point still works (and strips)
    assert generate_chat(model, tok, [USER], max_new_tokens=6) == [tok.decode(want, skip_special_tokens=True).strip()]


def test_local_backend_batches_and_reproduces_seeded_samples(tiny_model_dir, tmp_path):
    from novalign.llm.local import LocalBackend

    backend = LocalBackend(tiny_model_dir, max_batch_size=16, batch_wait_ms=20, default_max_tokens=5)
    with LLMClient(backend, cache=tmp_path / "c.sqlite", progress=False, print_usage=False) as client:
        requests = [ChatRequest([{"role": "user", "content": f"q{i}"}], temperature=0.8, seed=i, n=2) for i in range(8)]
        results = client.run_batch(requests, tmp_path / "out.jsonl")
        assert all(r.ok and len(r.texts) == 2 for r in results)
        assert backend.engine.queue.largest_batch > 2  # concurrent requests shared a generate call
        usage = client.usage.to_dict()["models"][backend.model_name]
        assert usage["requests"] == 8 and usage["completion_tokens"] == sum(r.completion_tokens for r in results)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(8))
    assert json.loads((tmp_path / "out.jsonl.usage.json").read_text())["total"]["requests"] == 8
    # same seeds, no cache, a new client: the same samples
    with LLMClient(LocalBackend(tiny_model_dir, default_max_tokens=5), progress=False, print_usage=False) as fresh:
        again = fresh.run_batch(requests[:3])
    assert [r.texts for r in again] == [r.texts for r in results[:3]]


# ------------------------------------------------------------------------------------------ cache


def _sample(text: str) -> CachedSample:
    return CachedSample(text, "stop", 5, 2, "m")


def test_cache_first_writer_wins_and_keys_ignore_n():
    req = ChatRequest(USER, n=3, temperature=0.7)
    assert cache_key("m", req) == cache_key("m", ChatRequest(USER, n=1, temperature=0.7, sample_index=5))
    assert cache_key("m", req) != cache_key("m", ChatRequest(USER, temperature=0.7, seed=1))
    assert cache_key("m", req) != cache_key("other", req)


def test_cache_put_get(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    key = cache_key("m", ChatRequest(USER))
    stored = cache.put(key, {0: _sample("a"), 1: _sample("b")}, model_id="m", request=ChatRequest(USER))
    assert stored[1].text == "b"
    again = cache.put(key, {1: _sample("LATE"), 2: _sample("c")}, model_id="m", request=ChatRequest(USER))
    assert again[1].text == "b" and again[2].text == "c"  # the first writer of a sample wins
    assert set(cache.get(key, 1, 5)) == {1, 2} and len(cache) == 3
    cache.close()


_WRITER = """
import sys
from novalign.llm.cache import CachedSample, RequestCache
from novalign.llm.types import ChatRequest
cache = RequestCache(sys.argv[1], busy_timeout_s=30)
who = sys.argv[2]
for i in range(150):
    req = ChatRequest([{"role": "user", "content": f"q{i % 50}"}])
    cache.put(f"key{i % 50}", {i // 50: CachedSample(f"{who}-{i}", "stop", 1, 1, "m")}, model_id="m", request=req)
print("ok")
"""


def test_cache_survives_concurrent_writer_processes_and_threads(tmp_path):
    path = tmp_path / "shared.sqlite"
    RequestCache(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{k}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    errors: list[BaseException] = []
    cache = RequestCache(path)

    def thread_writer(k: int) -> None:
        try:
            for i in range(100):
                cache.put(f"key{i % 50}", {5 + k: _sample(f"t{k}-{i}")}, model_id="m", request=ChatRequest(USER))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outs = [p.communicate(timeout=60) for p in procs]
    assert not errors
    assert all(p.returncode == 0 and o.strip() == "ok" for p, (o, _) in zip(procs, outs)), outs
    # 50 keys x (3 process-written indices + 3 thread-written indices), each written once despite the races
    assert len(cache) == 50 * 6
    cache.close()


# ------------------------------------------------------------------------------------------ limits, accounting


def test_backoff_grows_and_honours_retry_after():
    """Equal jitter: attempt a waits within [cap/2, cap], cap = min(max, base * 2^(a-1))."""
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        for _ in range(20):
            assert cap / 2 <= policy.delay(attempt) <= cap
    assert 3.0 <= policy.delay(1, retry_after=3.0) <= 3.3
    assert policy.delay(1, retry_after=1e6) <= policy.max_retry_after * 1.1
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({}) is None


def test_rate_limiter_spaces_requests_and_tokens():
    """rpm=60 with a 5 s burst: 5 calls go at once, then one per second -> 8 calls end at t=3.
    tpm=600 (10 tokens/s, bucket 50): three 40-token calls need 40, then +30 and +40 tokens of refill."""
    now = [0.0]

    async def fake_sleep(s: float) -> None:
        now[0] += s

    async def run(limiter: RateLimiter, calls: int, tokens: int) -> float:
        for _ in range(calls):
            await limiter.acquire(tokens)
        return now[0]

    assert asyncio.run(run(RateLimiter(rpm=60, clock=lambda: now[0], sleep=fake_sleep), 8, 1)) == pytest.approx(3.0)
    now[0] = 0.0
    # 50 -> 10 after call 1; call 2 waits 3 s (to 40) -> 0; call 3 waits 4 s -> total 7 s
    assert asyncio.run(run(RateLimiter(tpm=600, clock=lambda: now[0], sleep=fake_sleep), 3, 40)) == pytest.approx(7.0)


def test_accounting_costs_per_model():
    """gpt-x: 1000 prompt * $2/M + 500 completion * $8/M = 0.002 + 0.004 = 0.006; cache hits are free."""
    acc = Accounting({"gpt-*": Price(2.0, 8.0)})
    acc.record("gpt-x", 600, 300, cached=False)
    acc.record("gpt-x", 400, 200, cached=False)
    acc.record("gpt-x", 400, 200, cached=True)
    acc.record("local-m", 10, 5, cached=False)
    data = acc.to_dict()
    assert data["models"]["gpt-x"]["cost"] == pytest.approx(0.006)
    assert data["models"]["gpt-x"]["cached_prompt_tokens"] == 400
    assert data["models"]["local-m"]["cost"] is None  # no price: unknown, not free
    assert data["total"]["prompt_tokens"] == 1010 and data["total"]["cost"] is None


def test_extract_and_check_json():
    class Item(BaseModel):
        name: str
        score: int

    assert extract_json('{"a": [1, 2]}') == {"a": [1, 2]}
    assert extract_json('blah ```json\n{"a": 1}\n``` blah') == {"a": 1}
    assert extract_json('The answer is {"a": 1} I think') == {"a": 1}
    with pytest.raises(ValueError):
        extract_json("no json {here")
    parsed, error = check_reply(ChatRequest(USER, schema=Item), '{"name": "x", "score": 3}')
    assert parsed == Item(name="x", score=3) and error is None
    parsed, error = check_reply(ChatRequest(USER, schema=Item), '{"name": "x"}')
    assert parsed is None and "score" in error
    with pytest.raises(ValueError):
        ChatRequest(USER, json_mode=True, n=2)


# ------------------------------------------------------------------------------------------ HTTP behaviour


def test_http_request_body_and_accounting(fault_server):
    with http_client(fault_server, "ok", prices={"fake-model": Price(1.0, 2.0)}) as client:
        result = client.chat(USER, n=2, temperature=0.5, top_k=20, max_tokens=9, stop=["\n"], seed=3, json_mode=False)
        assert result.texts == ["Say hi #3/0/1", "Say hi #3/1/1"] and result.prompt_tokens == 7
        body = fault_server.hits[-1][2]
        assert body["top_k"] == 20 and body["n"] == 2 and body["seed"] == 3 and body["stop"] == ["\n"]
        assert body["max_tokens"] == 9 and body["model"] == "fake-model" and "response_format" not in body
        client.chat(USER, temperature=0)
        usage = client.usage.to_dict()["models"]["fake-model"]
    # 2 calls: prompt 7 + 7 = 14, completion 6 + 3 = 9 -> cost (14 * 1 + 9 * 2) / 1e6
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 14, 9)
    assert usage["cost"] == pytest.approx(32e-6)


def test_retries_429_with_retry_after_and_500_with_backoff(fault_server):
    with http_client(fault_server, "r429") as client:
        result = client.chat(USER)
    assert result.attempts == 3
    t = fault_server.times("r429")
    assert len(t) == 3 and t[1] - t[0] >= 0.3 and t[2] - t[1] >= 0.3  # Retry-After: 0.3 honoured
    with http_client(fault_server, "r500") as client:
        result = client.chat(USER)
    t = fault_server.times("r500")
    assert result.attempts == 3 and len(t) == 3
    assert t[1] - t[0] >= 0.1 and t[2] - t[1] >= 0.2  # backoff: >= base/2, then >= base (equal jitter)


def test_timeouts_truncation_and_invalid_json(fault_server):
    with http_client(fault_server, "slow", timeout_s=0.5) as client:
        result = client.chat(USER)
    assert result.attempts == 2 and fault_server.count("slow") == 2  # the first, slow response timed out
    with http_client(fault_server, "truncated") as client:
        result = client.chat(USER)
    assert result.attempts == 2 and result.text.startswith("Say hi")
    with http_client(fault_server, "invalid", retry=RetryPolicy(max_attempts=2, base_delay=0.05)) as client:
        with pytest.raises(LLMError) as info:
            client.chat(USER)
    failure = info.value.failure
    assert failure.kind == "invalid_response" and failure.attempts == 2 and "unusable response body" in failure.reason


def test_batch_yields_explicit_failures_never_drops(fault_server):
    with http_client(fault_server, "always500", retry=RetryPolicy(max_attempts=3, base_delay=0.05)) as client:
        results = list(client.batch([[{"role": "user", "content": f"m{i}"}] for i in range(4)]))
        assert sorted(r.index for r in results) == [0, 1, 2, 3]
        assert all(not r.ok and r.kind == "server_error" and r.attempts == 3 and r.status == 500 for r in results)
        assert "HTTP 500: boom" in results[0].reason
        assert client.usage.to_dict()["models"]["fake-model"]["failed_requests"] == 4
    before = fault_server.count("bad400")
    with http_client(fault_server, "bad400") as client:
        (failure,) = client.run_batch([USER])
    assert failure.kind == "bad_request" and failure.attempts == 1 and fault_server.count("bad400") == before + 1
    assert failure.to_dict()["ok"] is False and "field required" in failure.reason


def test_concurrency_limit_and_async_batch(fault_server):
    async def main(client: LLMClient) -> list:
        return [r async for r in client.abatch([[{"role": "user", "content": f"c{i}"}] for i in range(12)])]

    with http_client(fault_server, "busy", max_concurrency=3) as client:
        results = asyncio.run(main(client))
    assert len(results) == 12 and all(r.ok for r in results)
    assert 2 <= fault_server.in_flight_max <= 3


def test_structured_output_reasks_with_the_error(fault_server):
    class Verdict(BaseModel):
        name: str
        score: int

    with http_client(fault_server, "json") as client:
        result = client.chat(USER, schema=Verdict, temperature=0)
        assert result.parsed == Verdict(name="a", score=2) and result.attempts == 3
        reasks = [b["messages"] for s, _, b in fault_server.hits if s == "json"]
        assert reasks[1][-1]["role"] == "user" and "no valid JSON" in reasks[1][-1]["content"]
        assert "score" in reasks[2][-1]["content"]  # the schema error is quoted back
        assert fault_server.hits[-1][2]["response_format"]["type"] == "json_schema"
    with http_client(fault_server, "json", structured_attempts=2) as client:
        (failure,) = client.run_batch([ChatRequest(USER, schema=Verdict, temperature=0)])
    assert not failure.ok and failure.kind == "validation" and failure.last_text == '{"name": "a"}'
    assert "score" in failure.reason and failure.attempts == 2


def test_cache_samples_top_up_and_bypass(fault_server, tmp_path):
    """n=2 then n=4 at temperature 1 asks the server only for samples 2..3; a rerun asks for nothing."""
    cache = tmp_path / "cache.sqlite"
    with http_client(fault_server, "ok", cache=cache) as client:
        first = client.chat([{"role": "user", "content": "topup"}], n=2, temperature=1.0)
        before = fault_server.count("ok")
        more = client.chat([{"role": "user", "content": "topup"}], n=4, temperature=1.0)
        assert fault_server.count("ok") == before + 1 and fault_server.hits[-1][2]["n"] == 2
        assert more.texts[:2] == first.texts and not more.cached
        extra = client.chat([{"role": "user", "content": "topup"}], n=1, temperature=1.0, sample_index=3)
        assert extra.texts == more.texts[3:] and extra.cached and extra.attempts == 0
    with http_client(fault_server, "ok", cache=cache) as client:  # a new run: everything from the cache
        before = fault_server.count("ok")
        again = client.chat([{"role": "user", "content": "topup"}], n=4, temperature=1.0)
        assert again.texts == more.texts and again.cached and fault_server.count("ok") == before
        assert client.usage.to_dict()["models"]["fake-model"]["cached_requests"] == 1
    with http_client(fault_server, "ok", cache=cache, no_cache=True) as client:
        client.chat([{"role": "user", "content": "topup"}], n=4, temperature=1.0)
        assert fault_server.count("ok") == before + 1


def test_clients_from_config(fault_server, tiny_model_dir, monkeypatch, tmp_path):
    from novalign.config import LLMConfig

    monkeypatch.setenv("OPENAI_BASE_URL", f"{fault_server.url}/ok/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    cfg = LLMConfig(model="fake-model", cache_path=str(tmp_path / "c.sqlite"), progress=False,
                    prices={"fake-*": {"prompt_per_million": 1.0, "completion_per_million": 1.0}})
    with LLMClient.from_config(cfg, print_usage=False) as client:
        assert client.chat(USER).text.startswith("Say hi") and client.cache is not None
        assert client.usage.to_dict()["models"]["fake-model"]["cost"] == pytest.approx(10e-6)
    assert fault_server.auth[-1] == "Bearer from-env"
    local = LLMConfig(backend="local", model=str(tiny_model_dir), no_cache=True, progress=False,
                      local={"default_max_tokens": 4, "device": "cpu"})
    with LLMClient.from_config(local, print_usage=False) as client:
        result = client.chat(USER, temperature=0)
        assert client.cache is None and 0 < result.completion_tokens <= 4 and result.model == tiny_model_dir.name


def test_cache_key_names_the_server_unless_a_namespace_is_given():
    """Two servers that serve one model name are different models: their answers must not share cache
    entries. A cache_namespace replaces the URL, so one model behind two addresses can share them."""
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.0)
    a = OpenAIBackend("http://127.0.0.1:8001/v1", "tiny", api_key="k")
    b = OpenAIBackend("http://127.0.0.1:8002/v1/", "tiny", api_key="k")
    assert cache_key(a.model_id, request) != cache_key(b.model_id, request)
    assert cache_key(a.model_id, request) == cache_key(OpenAIBackend("http://127.0.0.1:8001/v1/", "tiny").model_id, request)
    shared = [OpenAIBackend(url, "tiny", cache_namespace="prod") for url in ("http://a/v1", "http://b/v1")]
    assert cache_key(shared[0].model_id, request) == cache_key(shared[1].model_id, request)
