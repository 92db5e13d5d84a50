"""Idempotency keys (issue 15): `novalign serve` generates a keyed request once, and the novalign client sends
keys that make a killed-and-restarted run's repeats replays. A real in-process uvicorn server of the tiny model
over HTTP on 127.0.0.1; generations are counted by the server's own /health counters."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli_server import app_in_thread

from novalign.llm import LLMClient, RetryPolicy
from novalign.llm.idempotency import IdempotencyStore, KeyReused, reply_size
from novalign.llm.openai_compat import OpenAIBackend


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from novalign.llm.local import LocalEngine
    from novalign.llm.server import create_app

    engine = LocalEngine(tiny_model_dir, device="cpu", max_batch_size=8, batch_wait_ms=20, default_max_tokens=8)
    app = create_app(engine, model_name="tiny")
    with app_in_thread(app) as port:
        yield {"port": port, "counters": app.state.counters}
    engine.close()


def post(server, body: dict, key: str | None, *, hang_up_after: float | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    if hang_up_after is not None:
        time.sleep(hang_up_after)
        conn.sock.shutdown(2)
        conn.close()
        return None
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, response.getheader("Idempotent-Replayed"), payload


def sampled(content: str, max_tokens: int = 24) -> dict:
    """Unseeded sampling at temperature 1: two generations of it differ (almost surely), so equal texts mean
    one generation."""
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 1.0, "n": 2,
            "max_tokens": max_tokens}


def texts(payload: dict) -> list[str]:
    return [c["message"]["content"] for c in payload["choices"]]


def test_a_repeat_with_the_same_key_is_replayed_not_generated(server):
    c = server["counters"]
    before = dict(c)
    status, replayed, first = post(server, sampled("tell me a story"), "key-1")
    assert status == 200 and replayed is None
    status, replayed, again = post(server, sampled("tell me a story"), "key-1")
    assert status == 200 and replayed == "true" and again == first
    status, _, other = post(server, sampled("tell me a story"), "key-2")  # another key: a separate sample
    assert status == 200 and other["id"] != first["id"]
    assert c["generations"] - before["generations"] == 2 and c["idempotent_replays"] - before["idempotent_replays"] == 1
    status, _, error = post(server, sampled("another story"), "key-1")  # the key with another body
    assert status == 422 and error["error"]["code"] == "idempotency_key_reused"
    assert post(server, sampled("x"), "k" * 256)[0] == 400


def test_concurrent_duplicates_generate_once(server):
    """Six requests with one key at once: one generation; the other five wait for it (or, if it finished
    first, get it stored) and all six get the same sampled texts."""
    c = server["counters"]
    before = dict(c)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: post(server, sampled("a concurrent story", 48), "same"), range(6)))
    assert all(status == 200 for status, _, _ in replies)
    assert len({json.dumps(p, sort_keys=True) for _, _, p in replies}) == 1
    assert c["generations"] - before["generations"] == 1
    assert (c["idempotent_joins"] - before["idempotent_joins"]) + (c["idempotent_replays"] - before["idempotent_replays"]) == 5


def test_a_keyed_request_whose_client_hangs_up_still_finishes_once(server):
    """A keyed request's client hangs up mid-generation (a SIGKILLed pipeline); the same request sent again
    with the key gets that generation's reply: one generation in all, nothing cancelled. Without a key the
    same hang-up cancels the rows (issue 22's behaviour, kept)."""
    c = server["counters"]
    before = dict(c)
    post(server, sampled("an abandoned story", 64), "abandoned", hang_up_after=0.1)
    status, replayed, reply = post(server, sampled("an abandoned story", 64), "abandoned")
    assert status == 200 and replayed == "true" and len(texts(reply)) == 2
    assert c["generations"] - before["generations"] == 1 and c["cancelled"] == before["cancelled"]


def _client(server, cache) -> LLMClient:
    backend = OpenAIBackend(f"http://127.0.0.1:{server['port']}/v1", "tiny", timeout_s=60)
    return LLMClient(backend, cache=cache, no_cache=cache is None, progress=False, print_usage=False,
                     retry=RetryPolicy(max_attempts=2, base_delay=0.05))


def test_the_client_resends_a_lost_reply_under_the_same_key(server, tmp_path):
    """The client sends an idempotency key derived from its cache. A reply the client never stored (its rows
    are deleted from the cache, as when the process was killed before writing them) is asked again by a new
    client on that cache: the server replays it (no generation) and the text is the same. A new cache file
    (a new salt) asks fresh: one generation. Without a cache, the same request twice is two samples: two
    generations."""
    c, messages = server["counters"], [{"role": "user", "content": "a lost reply"}]
    with _client(server, tmp_path / "c.sqlite") as client:
        before = c["generations"]
        first = client.chat(messages, temperature=1.0, max_tokens=16).text
        assert c["generations"] == before + 1
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        db.execute("DELETE FROM samples")
    with _client(server, tmp_path / "c.sqlite") as client:
        replays = c["idempotent_replays"]
        assert client.chat(messages, temperature=1.0, max_tokens=16).text == first
        assert c["generations"] == before + 1 and c["idempotent_replays"] == replays + 1
    with _client(server, tmp_path / "fresh.sqlite") as client:
        client.chat(messages, temperature=1.0, max_tokens=16)
        assert c["generations"] == before + 2
    with _client(server, None) as client:
        client.chat(messages, temperature=1.0, max_tokens=16)
        client.chat(messages, temperature=1.0, max_tokens=16)
        assert c["generations"] == before + 4


def test_the_store_is_bounded_expires_and_keeps_no_failures():
    """max_entries 2: after keys a, b, c only b and c are stored, so a generates again (now c and a are
    stored). ttl 10 s on a fake clock: at t=11 a, stored at t=0, is gone. A generation that raises is not stored (the next call generates), and a key
    with another fingerprint is refused."""
    now = [0.0]
    store = IdempotencyStore(max_entries=2, ttl_s=10, clock=lambda: now[0])
    calls: list[str] = []

    def produce(value):
        async def run():
            calls.append(value)
            if value == "boom":
                raise RuntimeError("boom")
            return value
        return run

    async def scenario():
        for k in "abc":
            assert await store.run(k, "f", produce(k)) == (k, "generated")
        assert await store.run("c", "f", produce("c2")) == ("c", "replayed")
        assert await store.run("a", "f", produce("a2")) == ("a2", "generated")  # evicted: generated again
        now[0] = 5.0
        assert await store.run("a", "f", produce("a3")) == ("a2", "replayed")
        now[0] = 11.0
        assert await store.run("a", "f", produce("a3")) == ("a3", "generated")  # expired
        with pytest.raises(RuntimeError):
            await store.run("x", "f", produce("boom"))
        assert await store.run("x", "f", produce("ok")) == ("ok", "generated")
        with pytest.raises(KeyReused):
            await store.run("x", "other", produce("no"))

    asyncio.run(scenario())
    assert calls == ["a", "b", "c", "a2", "a3", "boom", "ok"]


def test_the_store_is_bounded_by_bytes():
    """max_bytes 20: replies are JSON strings, "aaaaaaaa" is 10 bytes with its quotes. a and b fill the store
    (20 bytes); c (10) pushes the oldest, a, out, so a generates again; a reply of 30 bytes is larger than the
    whole store and is kept nowhere (b and c stay, the next call of that key generates)."""
    store = IdempotencyStore(max_entries=100, ttl_s=10, max_bytes=20)
    assert reply_size("aaaaaaaa") == 10 and reply_size("é") == 4  # UTF-8 bytes, not characters

    async def value(v):
        return v

    async def scenario():
        for k in "abc":
            assert await store.run(k, "f", lambda k=k: value(k * 8)) == (k * 8, "generated")
        assert store.bytes == 20 and len(store) == 2
        assert (await store.run("a", "f", lambda: value("A" * 8)))[1] == "generated"  # a was evicted
        assert (await store.run("c", "f", lambda: value("x")))[1] == "replayed"
        assert (await store.run("big", "f", lambda: value("z" * 28)))[1] == "generated"
        assert store.bytes == 20 and (await store.run("big", "f", lambda: value("y")))[1] == "generated"

    asyncio.run(scenario())
