"""The PAS proxy's credentials and robustness (issue 22 item 5), over real HTTP.

The upstream is a stand-in for a paid OpenAI-compatible API (``http.server`` on loopback): it records the
``Authorization`` header each request brought and answers a fixed completion, or, for ``"cut": true``, a
stream that stops after one event without ``[DONE]``. The proxy runs in-process under uvicorn with PAS
switched off per request (``X-PAS: off``), so no PAS model is needed.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cli_server import app_in_thread

from novalign.pas.augment import PromptAugmenter
from novalign.pas.proxy import check_messages, create_proxy_app

UPSTREAM_KEY = "sk-upstream-secret"
PROXY_KEY = "proxy-client-key"


class _Upstream(BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(self.headers.get("Authorization"))
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
            if not body.get("cut"):
                self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        payload = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


@pytest.fixture(scope="module")
def proxies(upstream):
    """Two proxies holding the same upstream key: one with a client key, one without."""
    aug = PromptAugmenter(client=None)
    with app_in_thread(create_proxy_app(aug, upstream, upstream_api_key=UPSTREAM_KEY, api_key=PROXY_KEY)) as keyed, \
            app_in_thread(create_proxy_app(aug, upstream, upstream_api_key=UPSTREAM_KEY)) as open_:
        yield {"keyed": keyed, "open": open_}


def ask(port: int, key: str | None, body: dict | None = None, raw: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "X-PAS": "off"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body or {"messages": [{"role": "user", "content": "hello"}]})
    conn.request("POST", "/v1/chat/completions", body=data, headers=headers)
    response = conn.getresponse()
    out = response.status, response.read()
    conn.close()
    return out


def test_proxy_refuses_keyless_clients_and_never_relays_its_upstream_key(proxies):
    """With a client key: no key or a wrong one is a 401 that never reaches the upstream; the right one
    gets the upstream key upstream (not the client's). Without a client key: the upstream sees only what
    the client sent -- nothing, or the client's own key -- never the proxy's upstream key."""
    _Upstream.seen.clear()
    assert ask(proxies["keyed"], None)[0] == 401
    assert ask(proxies["keyed"], "wrong")[0] == 401
    assert _Upstream.seen == []  # refused before any upstream call
    assert ask(proxies["keyed"], PROXY_KEY)[0] == 200
    assert _Upstream.seen == [f"Bearer {UPSTREAM_KEY}"]
    _Upstream.seen.clear()
    assert ask(proxies["open"], None)[0] == 200
    assert ask(proxies["open"], "client-own-key")[0] == 200
    assert _Upstream.seen == [None, "Bearer client-own-key"]


def test_malformed_messages_are_400_not_500(proxies):
    for messages in ([42], ["hi"], [{"role": 1, "content": "x"}], [{"role": "user", "content": 42}],
                     [{"role": "user", "content": [7]}]):
        status, body = ask(proxies["keyed"], PROXY_KEY, {"messages": messages})
        assert status == 400 and json.loads(body)["error"]["message"].startswith("messages"), (messages, body)
    assert ask(proxies["keyed"], PROXY_KEY, raw=b"[1, 2]")[0] == 400
    assert check_messages([{"role": "user", "content": None}]) is None


def test_a_stream_cut_upstream_ends_with_an_error_event(proxies):
    messages = [{"role": "user", "content": "hello"}]
    status, whole = ask(proxies["keyed"], PROXY_KEY, {"messages": messages, "stream": True})
    assert status == 200 and whole.rstrip().endswith(b"data: [DONE]") and b'"error"' not in whole
    status, cut = ask(proxies["keyed"], PROXY_KEY, {"messages": messages, "stream": True, "cut": True})
    assert status == 200 and b"data: [DONE]" not in cut
    events = [json.loads(line[6:]) for line in cut.decode().splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["type"] == "upstream_error", cut


def test_pas_serve_off_loopback_needs_a_client_key(monkeypatch):
    from novalign.config import PASServeConfig
    from novalign.pas.proxy import serve_proxy

    monkeypatch.delenv("NOVALIGN_PAS_API_KEY", raising=False)
    with pytest.raises(ValueError, match="needs a client key"):
        serve_proxy(PASServeConfig(host="0.0.0.0"))
