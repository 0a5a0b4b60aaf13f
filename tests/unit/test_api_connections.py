"""How the API's connections end, over plain TCP on loopback with the real aiohttp server
(tests/integration/test_api_schema.py checks the same over TLS against a real agent).

aiohttp answers a request line over 8,190 bytes with a 400 before it has read the rest; the
server must then keep reading what the client still sends, so that the client is neither
reset nor cut off while it finishes its request (api_connections.Lingering).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest
from aiohttp import web

from haagent.api import Handlers, build_app, serve
from haagent.api_connections import LINGER_QUIET_S

REQUEST = b"GET /v1/whatif?fail=" + b"n1," * 10_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def listen() -> Iterator[tuple[str, int, asyncio.AbstractEventLoop, web.AppRunner]]:
    """The API (no handler is reached: aiohttp's parser answers first) on a free port, in
    an event loop of its own thread; stopped and closed after the test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def start() -> web.AppRunner:
        return await serve(build_app("admin-token-0123456789", cast(Handlers, object())),
                           f"127.0.0.1:{port}")  # fmt: skip

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield "127.0.0.1", port, loop, runner
    finally:
        if runner.server is not None:  # not stopped by the test
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_still_sending_after_an_early_400_gets_it_and_no_reset(
    listen: tuple[str, int, asyncio.AbstractEventLoop, web.AppRunner],
) -> None:
    host, port, _, _ = listen
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(REQUEST[:9000])
        # The answer and the end of the server's sending, while our request is unfinished.
        answer = read_to_end(sock)
        assert answer.startswith(b"HTTP/1.0 400 Bad Request"), answer[:200]
        # The server still reads: the rest of the request goes out without a reset (once a
        # server closed its socket, the first send draws a reset and the next one fails).
        for start in range(9000, len(REQUEST), 3000):
            sock.sendall(REQUEST[start : start + 3000])
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_stopping_the_api_ends_a_lingering_connection(
    listen: tuple[str, int, asyncio.AbstractEventLoop, web.AppRunner],
) -> None:
    host, port, loop, runner = listen
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(REQUEST[:9000])
        assert read_to_end(sock).startswith(b"HTTP/1.0 400")
        sock.sendall(REQUEST[9000:12000])  # still sending: the connection lingers
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        # Closed by the cleanup, well before its quiet period ends: sends are soon refused.
        deadline = time.monotonic() + LINGER_QUIET_S / 2
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() < deadline:
                sock.sendall(REQUEST[:3000])
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01), loop).result(10)
