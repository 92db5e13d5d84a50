"""A counting, fault-injecting OpenAI-compatible chat server on 127.0.0.1, for the flywheel's tests and benches:
a stand-in for a third-party endpoint (never a novalign component).

Replies are a pure function of the request body (``reply(body, i)`` for sample ``i``), so two runs of a
pipeline get the same answers whatever the timing. It stands in for a provider that honours idempotency keys
as ``novalign serve`` does (novalign/llm/idempotency.py; ``honour_keys=False``: one that ignores them): a
request whose ``Idempotency-Key`` was generated before gets the stored reply (``replayed``), and one that
arrives while the key is generating waits for it. The server counts, per canonical body, how many times it
*generated* a reply (``generated``) -- the server-side measure of a request paid twice, whether or not the
reply reached the client -- how many 200 responses it wrote (``answered``), and how many requests it
received in all. Faults, drawn from a seeded RNG: 429 with ``Retry-After``, 500, a dropped
connection (closed without a response), a slow answer. ``status(body)`` may script an HTTP error for a body; ``on_request(count, body)`` runs before each answer (tests
SIGKILL the client from it at chosen points); returning ``False`` drops that connection unanswered.
``on_generated(count, body)`` runs after a generation, before its reply is written: returning ``False``
drops the connection with the reply generated (paid) but never delivered -- a reply in flight at a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def default_reply(body: dict, i: int) -> str:
    """A deterministic reply: a judge prompt gets a rating, anything else a short answer."""
    text = json.dumps(body.get("messages"), sort_keys=True)
    h = int(hashlib.sha256(f"{text}|{body.get('temperature')}|{i}".encode()).hexdigest()[:8], 16)
    if "Rating: [[N]]" in text:
        return f"Reasons. Rating: [[{1 + h % 10}]]"
    return f"answer {h % 1000} " + " ".join(["word"] * (3 + h % 5))


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client killed mid-request is the point of these tests
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class CountingLLM:
    def __init__(self, reply: Callable[[dict, int], str] = default_reply, *, p429: float = 0.0, p500: float = 0.0,
                 pdrop: float = 0.0, pslow: float = 0.0, slow_s: float = 0.05, delay_s: float = 0.0,
                 retry_after: str = "0", seed: int = 0, status: Callable[[dict], int | None] | None = None,
                 on_request: Callable[[int, dict], bool | None] | None = None,
                 on_generated: Callable[[int, dict], bool | None] | None = None, honour_keys: bool = True):
        self.answered: Counter[str] = Counter()
        self.generated: Counter[str] = Counter()  # canonical body -> generations
        self.replayed = 0  # replies sent from the key store (or from a generation another request was running)
        self.honour_keys = honour_keys
        self._stored: dict[str, dict] = {}  # idempotency key -> reply payload
        self._running: dict[str, threading.Event] = {}
        self.first_answered: dict[str, float] = {}  # body -> time.monotonic() of its first answer
        self.received = 0
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client was killed: nothing was delivered
                    self.close_connection = True
                    return False
                return True

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                key = json.dumps(body, sort_keys=True)
                with server._lock:
                    server.received += 1
                    count = server.received
                    roll = server._rng.random()
                if on_request is not None and on_request(count, body) is False:
                    self.close_connection = True
                    return
                if delay_s:
                    time.sleep(delay_s)
                if status is not None and (code := status(body)) is not None:  # a scripted HTTP error
                    return self._send(code, {"error": {"message": f"scripted {code}"}})
                fault = None
                for name, p in (("429", p429), ("500", p500), ("drop", pdrop), ("slow", pslow)):
                    if roll < p:
                        fault = name
                        break
                    roll -= p
                if fault:
                    with server._lock:
                        server.faults[fault] += 1
                if fault == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"retry-after": retry_after})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if fault == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                ident = self.headers.get("Idempotency-Key") if server.honour_keys else None
                payload, how = server._once(ident, key, lambda: generate(body, fault == "slow"))
                if how == "generated" and on_generated is not None and on_generated(count, body) is False:
                    self.close_connection = True
                    return
                if self._send(200, payload):
                    with server._lock:
                        server.answered[key] += 1
                        server.first_answered.setdefault(key, time.monotonic())

        def generate(body: dict, slow: bool) -> dict:
            if slow:
                time.sleep(slow_s)
            choices, tokens = [], 0
            for i in range(int(body.get("n", 1))):
                words = reply(body, i).split(" ")
                reason = "stop"
                limit = body.get("max_tokens")
                if limit is not None and len(words) > limit:
                    words, reason = words[:limit], "length"
                tokens += len(words)
                choices.append({"index": i, "message": {"role": "assistant", "content": " ".join(words)},
                                "finish_reason": reason})
            return {"id": "x", "object": "chat.completion", "model": body["model"], "choices": choices,
                    "usage": {"prompt_tokens": 10, "completion_tokens": tokens}}

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _once(self, ident: str | None, body_key: str, make: Callable[[], dict]) -> tuple[dict, str]:
        """``make()``'s reply, generated once per idempotency key ``ident`` (``None``: every time)."""
        if ident is None:
            payload = make()
            with self._lock:
                self.generated[body_key] += 1
            return payload, "generated"
        while True:
            with self._lock:
                if ident in self._stored:
                    self.replayed += 1
                    return self._stored[ident], "replayed"
                event = self._running.get(ident)
                mine = event is None
                if mine:
                    event = self._running[ident] = threading.Event()
            if not mine:  # the key is generating on another thread: wait for its reply
                event.wait()
                continue
            try:
                payload = make()
                with self._lock:
                    self._stored[ident] = payload
                    self.generated[body_key] += 1
            finally:
                with self._lock:
                    del self._running[ident]
                event.set()
            return payload, "generated"

    @property
    def requests_answered(self) -> int:
        """200 responses written (replays included)."""
        return sum(self.answered.values())

    @property
    def requests_generated(self) -> int:
        return sum(self.generated.values())

    @property
    def duplicates(self) -> int:
        """Generations of a body already generated: requests paid twice (a reply the client never got counts:
        it was paid for)."""
        return sum(n - 1 for n in self.generated.values() if n > 1)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
