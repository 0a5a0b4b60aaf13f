"""A stand-in for an agent's API that answers whatever a test tells it to (any bytes)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class FakeAgent:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def fake_agent() -> Iterator[FakeAgent]:
    """A threaded HTTP server on a free loopback port, stopped on exit."""
    agent = FakeAgent()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            agent.requests.append(f"{self.command} {self.path}")
            self.send_response(agent.status)
            self.send_header("Content-Type", agent.content_type)
            self.send_header("Content-Length", str(len(agent.body)))
            self.end_headers()
            self.wfile.write(agent.body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    agent.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
