"""`novalign serve` against careless and hostile clients (issue 22, items 3 and 4), over real HTTP.

One in-process uvicorn server on a free loopback port serves the tiny model for the module, with a small
``max_batch_size`` (8) so that splitting shows, and a 1 MiB body limit.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from cli_server import app_in_thread

from novalign.llm.batching import BatchingQueue

KEY = "hardening-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from novalign.llm.local import LocalEngine
    from novalign.llm.server import create_app

    engine = LocalEngine(tiny_model_dir, device="cpu", max_batch_size=8, batch_wait_ms=30, default_max_tokens=8)
    app = create_app(engine, model_name="tiny", api_key=KEY, max_body_bytes=2**20)
    with app_in_thread(app) as port:
        yield {"host": "127.0.0.1", "port": port, "engine": engine, "app": app}
    engine.close()


def call(server, method: str, path: str, body=None, *, key: str | None = KEY, timeout: float = 60,
         raw: bytes | None = None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if chunked:
        conn.request(method, path, body=iter([data[i:i + 65536] for i in range(0, len(data), 65536)]),
                     headers=headers, encode_chunked=True)
    else:
        conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    try:
        return response.status, json.loads(payload)
    except json.JSONDecodeError:
        return response.status, {"raw": payload.decode(errors="replace")}


def chat(content: str, **params) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **params}


def health(server) -> dict:
    return call(server, "GET", "/health", key=None)[1]


def test_a_failing_batch_fails_only_its_bad_item():
    """BatchingQueue isolation: 8 items batched together, item 3 makes ``run`` raise. The batch is rerun item
    by item: the 7 others get their outputs (the item doubled), item 3 alone gets the error."""
    def run(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("item 3 is poison")
        return [2 * i for i in items]

    gate = threading.Event()
    queue = BatchingQueue(lambda items: (gate.wait(5), run(items))[1], max_batch_size=8, max_wait_s=0.5)
    futures = [queue.submit(i) for i in range(8)]
    gate.set()
    results = []
    for fut in futures:
        try:
            results.append(fut.result(timeout=10))
        except ValueError as exc:
            results.append(str(exc))
    queue.close()
    assert results == [0, 2, 4, "item 3 is poison", 8, 10, 12, 14]
    assert queue.isolated_failures == 1


def test_one_bad_request_of_eight_fails_alone(server):
    """Issue 22 item 3: ``top_k: 1e20`` once gave a plain-text 500 to itself and to the requests batched with
    it. Now it is a 400 in OpenAI's shape naming top_k, and the 7 others succeed."""
    bodies = [chat(f"question {i}", temperature=0.7, seed=i) for i in range(8)]
    bodies[5] = chat("question 5", temperature=0.7, top_k=1e20)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: call(server, "POST", "/v1/chat/completions", b), bodies))
    statuses = [status for status, _ in answers]
    assert statuses == [200] * 5 + [400] + [200] * 2, answers
    assert answers[5][1]["error"]["param"] == "top_k" and answers[5][1]["error"]["type"] == "invalid_request_error"
    for params, param in (({"seed": 2**70}, "seed"), ({"temperature": float("nan")}, "temperature"),
                          ({"max_tokens": 2**40}, "max_tokens"), ({"stop": ["x" * 2000]}, "stop")):
        status, body = call(server, "POST", "/v1/chat/completions", chat("x", **params))
        assert status == 400 and param in (body["error"]["param"] or "") + body["error"]["message"], body
    status, body = call(server, "POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": [{"type": "text", "text": 42}]}]})
    assert status == 400 and "error" in body


def test_docs_and_openapi_need_the_key(server):
    for path in ("/docs", "/openapi.json", "/redoc", "/v1/models"):
        assert call(server, "GET", path, key=None)[0] == 401, path
        assert call(server, "GET", path, key="wrong")[0] == 401, path
    assert call(server, "GET", "/openapi.json")[0] == 200
    assert call(server, "GET", "/health", key=None)[0] == 200


def test_bodies_over_the_limit_are_refused(server):
    big = json.dumps(chat("x" * (2**20 + 10))).encode()
    for chunked in (False, True):  # with a Content-Length, and without one (counted as it arrives)
        status, body = call(server, "POST", "/v1/chat/completions", raw=big, chunked=chunked)
        assert status == 413 and body["error"]["code"] == "request_too_large", (chunked, status, body)


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(server):
    limit = server["engine"].max_prompt_chars
    assert limit is not None and limit < 2**20 - 1000
    status, body = call(server, "POST", "/v1/chat/completions", chat("y" * (limit + 1)))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body


def test_tokenizing_runs_off_the_event_loop(server):
    """The event loop thread never tokenizes: a spy around the engine's encoders records the thread each
    call runs on (they still tokenize for real)."""
    engine, threads = server["engine"], []

    def spy(fn):
        def wrapped(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return fn(*args, **kwargs)
        return wrapped

    encoders = {name: getattr(engine, name) for name in ("encode_chat", "encode_text", "encode_prompt")}
    for name, fn in encoders.items():
        setattr(engine, name, spy(fn))
    try:
        assert call(server, "POST", "/v1/chat/completions", chat("hello"))[0] == 200
        assert call(server, "POST", "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2})[0] == 200
        assert call(server, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2,
                                                          "add_special_tokens": True})[0] == 200
    finally:
        for name, fn in encoders.items():
            setattr(engine, name, fn)
    assert len(threads) == 4 and all(name.startswith("novalign-tokenize") for name in threads), threads


def test_completions_add_special_tokens_only_when_asked(tiny_model_dir, tmp_path):
    """A tokenizer that puts a BOS token before every text (a TemplateProcessing post-processor, as Llama's
    does): ``/v1/completions`` continues the prompt as it is by default -- the same ids the local backend
    feeds for ``ChatRequest(prompt=...)``, so a model served and a model loaded locally see the same tokens --
    and prepends the BOS only with ``add_special_tokens: true`` (vLLM's parameter). "a b" is k ids plain, so
    ``usage.prompt_tokens`` must be k, then k + 1."""
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from novalign.llm import ChatRequest, LLMClient
    from novalign.llm.local import LocalBackend, LocalEngine
    from novalign.llm.server import create_app

    model = tmp_path / "bos-model"
    shutil.copytree(tiny_model_dir, model)
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    bos = "<|im_start|>"
    tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(model / "tokenizer.json"))
    engine = LocalEngine(model, device="cpu", max_batch_size=4, batch_wait_ms=5, default_max_tokens=2)
    plain = len(engine.encode_prompt("a b"))
    assert len(engine.encode_text("a b")) == plain + 1  # the post-processor really adds one
    server = {"host": "127.0.0.1"}
    with app_in_thread(create_app(engine, model_name="tiny", api_key=KEY, max_body_bytes=2**20)) as port:
        server["port"] = port
        counts = [call(server, "POST", "/v1/completions", {"prompt": "a b", "max_tokens": 1, **extra})[1]
                  ["usage"]["prompt_tokens"] for extra in ({}, {"add_special_tokens": True})]
    engine.close()
    with LLMClient(LocalBackend(model, device="cpu"), progress=False, print_usage=False) as client:
        local = client.chat(ChatRequest(prompt="a b", max_tokens=1, temperature=0.0)).prompt_tokens
    assert counts == [plain, plain + 1] and local == plain, (counts, local)


def test_a_request_larger_than_max_batch_size_is_split(server):
    before = health(server)["largest_batch"]
    status, body = call(server, "POST", "/v1/completions",
                        {"prompt": ["one", "two", "three"], "n": 8, "max_tokens": 2, "temperature": 0.8})
    assert status == 200 and len(body["choices"]) == 24 and [c["index"] for c in body["choices"]] == list(range(24))
    assert max(before, 8) >= health(server)["largest_batch"] and health(server)["largest_batch"] <= 8


def _latency(server) -> float:
    start = time.monotonic()
    status, _ = call(server, "POST", "/v1/chat/completions", chat("ping", temperature=0, max_tokens=2))
    assert status == 200
    return time.monotonic() - start


def _drop(server, body: dict, stream: bool) -> None:
    """Send ``body``, read at most the first event of the stream, and hang up."""
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=30)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body | {"stream": stream}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    if stream:
        response = conn.getresponse()
        assert response.status == 200
        response.fp.readline()
    else:
        time.sleep(0.3)  # let it reach the batch
    conn.sock.shutdown(2)
    conn.close()


def test_dropped_clients_stop_generating(server):
    """Issue 22 item 4: a client that hangs up had its rows generate to the end, delaying everyone behind
    them. Two long requests (8 rows x 3000 tokens each, one streamed, one not) are dropped; the next small
    request must come back about as fast as before them (well under the seconds the dropped rows would
    take)."""
    baseline = min(_latency(server) for _ in range(3))
    long = chat("tell me a long story", temperature=1.0, n=8, max_tokens=3000, seed=3)
    cancelled = health(server)["cancelled"]
    _drop(server, long, stream=True)
    _drop(server, long, stream=False)
    time.sleep(0.3)
    after = _latency(server)
    assert health(server)["cancelled"] - cancelled == 2
    assert after < baseline + 1.0, (baseline, after)
