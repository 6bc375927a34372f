"""A real uvicorn serving the real app on a loopback port, in a thread of the test process
(so a test can look at the app's run queue), and a reader of Server-Sent Events."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from pipeline.api.app import create_app
from pipeline.core.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, Any]]:
    """(base URL, app) while a uvicorn server runs the app over `settings`."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from the lines of a text/event-stream body."""
    name, data = "message", []
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


@contextlib.contextmanager
def server_process(env: dict[str, str], host: str = "127.0.0.1") -> Iterator[str]:
    """The base URL of `cryptobt api --host HOST` running in its own process (the way it is deployed) on
    a free port, until the block ends; `env` is its whole environment."""
    import subprocess
    import sys
    import tempfile

    import httpx

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # not a pipe: a server that writes much must never block on it
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "api", "--host", host, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/api/strategies", timeout=2)
                break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"cryptobt api did not start: {log.read()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:  # a blocked event loop never gets to its signal handler
            server.kill()
            server.wait(timeout=15)
        log.close()
