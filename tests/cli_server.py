"""Start a novalign CLI server (``novalign serve``, ``novalign pas serve``) as a real subprocess for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def start_server(args: list[str], marker: str = "novalign serve:", env: dict | None = None,
                 ) -> tuple[subprocess.Popen, str, list[str]]:
    """Run ``novalign <args>`` (give ``--port 0``); wait (bounded) for the line starting with ``marker`` that
    names its URL. Returns the process, its base URL (``http://127.0.0.1:PORT/v1``) and its growing output."""
    proc = subprocess.Popen([sys.executable, "-m", "novalign.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=None if env is None else {**os.environ, **env})
    lines: list[str] = []
    url, deadline = None, time.monotonic() + 90
    while url is None and time.monotonic() < deadline:  # bounded: the process prints its URL or exits
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(marker):
            url = line.split("http://", 1)[1].split()[0]
    if url is None:
        proc.kill()
        pytest.fail(f"{marker} did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()  # keep it flowing
    return proc, "http://" + url, lines


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def served(model_dir, *extra: str, name: str = "tiny", env: dict | None = None) -> Iterator[str]:
    """``novalign serve`` of ``model_dir`` on a free loopback port; yields its ``.../v1`` URL."""
    proc, url, _ = start_server(["serve", "--model", str(model_dir), "--port", "0", "--served-model-name", name,
                                 *extra], env=env)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url
    finally:
        stop(proc)


def health(url: str) -> dict:
    """The server's ``/health`` document (request counters, latency)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def app_in_thread(app) -> Iterator[int]:
    """Serve an ASGI app (``novalign serve``'s or the PAS proxy's ``create_*app``) with uvicorn in a daemon thread
    on a free loopback port, for tests that need the app object itself (its counters, its engine); yields the
    port and stops the server on exit."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start within 30 s"
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
