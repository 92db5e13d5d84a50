"""A counting, fault-injecting OpenAI-compatible chat server on 127.0.0.1, for the flywheel's tests and benches:
a stand-in for a third-party endpoint (never a novalign component).

Replies are a pure function of the request body (``reply(body, i)`` for sample ``i``), so two runs of a
pipeline get the same answers whatever the timing. The server counts, per canonical body, how many times it
*answered* it (a full 200 response written) -- the server-side measure of a request paid twice -- and how
many requests it received in all. Faults, drawn from a seeded RNG: 429 with ``Retry-After``, 500, a dropped
connection (closed without a response), a slow answer. ``status(body)`` may script an HTTP error for a body; ``on_request(count, body)`` runs before each answer (tests
SIGKILL the client from it at chosen points); returning ``False`` drops that connection unanswered.
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


class CountingLLM:
    def __init__(self, reply: Callable[[dict, int], str] = default_reply, *, p429: float = 0.0, p500: float = 0.0,
                 pdrop: float = 0.0, pslow: float = 0.0, slow_s: float = 0.05, delay_s: float = 0.0,
                 retry_after: str = "0", seed: int = 0, status: Callable[[dict], int | None] | None = None, on_request: Callable[[int, dict], bool | None] | None = None):
        self.answered: Counter[str] = Counter()
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
                if fault == "slow":
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
                if self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": choices,
                                    "usage": {"prompt_tokens": 10, "completion_tokens": tokens}}):
                    with server._lock:
                        server.answered[key] += 1
                        server.first_answered.setdefault(key, time.monotonic())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests_answered(self) -> int:
        return sum(self.answered.values())

    @property
    def duplicates(self) -> int:
        """Answers given again to a body already answered: requests paid twice."""
        return sum(n - 1 for n in self.answered.values() if n > 1)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
