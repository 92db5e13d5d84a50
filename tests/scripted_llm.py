"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests: a stand-in for a third-party endpoint
(never a novalign component). Each route ``/<route>/v1/chat/completions`` answers with ``reply(route,
messages)``; every request body is kept in ``bodies[route]`` so tests can count and inspect calls."""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from novalign.llm import LLMClient, RetryPolicy
from novalign.llm.openai_compat import OpenAIBackend

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


class ScriptedLLM:
    def __init__(self, reply: Callable[[str, list[dict]], str]):
        self.bodies: dict[str, list[dict]] = defaultdict(list)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                route = self.path.strip("/").split("/")[0]
                server.bodies[route].append(body)
                text = reply(route, body["messages"])
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def base_url(self, route: str) -> str:
        return f"{self.url}/{route}/v1"

    def client(self, route: str) -> LLMClient:
        backend = OpenAIBackend(self.base_url(route), route, api_key="k", timeout_s=5.0)
        return LLMClient(backend, progress=False, print_usage=False, retry=RetryPolicy(max_attempts=2, base_delay=0.1))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
