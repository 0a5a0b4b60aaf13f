"""The HTTP surface, served by aiohttp inside the agent's own event loop.

GET  /v1/health                    200 with a valid lease and a fresh loop, else 503. No token.
GET  /metrics                      Prometheus text from this agent's registry (open by
                                   default; `api_open_metrics = false`: the read token).
GET  /v1/status                    the status document (haagent.status).
GET  /v1/events?since=N&limit=M    recent committed transitions with reasons (haagent.events)
GET  /v1/whatif?fail=n3[,n4]       where the failed nodes' guests would go (haagent.whatif).
GET  /v1/openapi.json              the OpenAPI 3 document of this API (haagent.openapi)
POST /v1/guests/{guest}/disable    stop the guest and keep it stopped
POST /v1/guests/{guest}/enable     run it again (also clears its error state)
POST /v1/guests/{guest}/migrate    body {"node": "n2"[, "generation": G]}: live-migrate the
                                   running guest to n2 (conditional on its generation: G, or
                                   the one this agent's view shows; README, "Live migration")
POST /v1/nodes/{node}/maintenance  body {"on": true|false}: drain the node, or end that
POST /v1/nodes/{node}/confirm-fenced  optional body {"by": "who"}: an admin verified that the
                                   failed node is powered off; its guests may move (README)
POST /v1/guests/{guest}/cleanup|move, /v1/cluster/disarm|arm, /v1/nodes/{node}/freeze|thaw
                                   the admin verbs of haagent.api_admin (audited)

Access (haagent.api_access): reads take the read or the admin token (or none when
`api_open_reads`), the POST verbs only the admin token, as ``Authorization: Bearer <token>``;
401 without a valid one, 403 for the read token on an admin verb. Errors are JSON
``{"error": "..."}`` with a 4xx/5xx status, never a traceback. Admin actions answer with the
outcome of the replicated command: 200 applied, 409 refused (with the reason), 503 unknown
(no majority reached in time: it may still apply; look at the status).

Hostile input (contracts the fuzz test in tests/integration/test_api_fuzz.py checks against a
real agent):

* Bad input is a 4xx, never a 500: a token of any bytes is compared as bytes (401), a body is
  read only up to `MAX_BODY_BYTES` (413) and parsed only up to `MAX_JSON_DEPTH` levels (400),
  a charset other than UTF-8 or any Content-Encoding is refused (415; bodies are never
  decompressed, so no small body can expand), malformed HTTP is aiohttp's 400.
* Bad input is logged without a traceback, once per cause, then at most once a minute per
  cause with the count of what was left out, and never more than `BadInputLog.burst` lines a
  minute in all: a client cannot flood the log (`BadInputLog`). The client's own text is
  escaped and cut short before it reaches a log line.

This module makes the application (`build_app`: the guard in front of every route) and serves
it (`serve`); the handlers live in `haagent.api_routes`, the input checks, `ApiError` and
`BadInputLog` in `haagent.api_input`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from haagent.api_access import (
    TLS_HANDSHAKE_TIMEOUT_S,
    ApiAccess,
    Gate,
    bearer_token,
    server_tls_context,
)
from haagent.api_connections import ConnectionLimit
from haagent.api_input import BAD_INPUT_LINES_PER_MINUTE, ApiError, BadInputLog
from haagent.api_routes import Handlers, add_routes, json_response
from haagent.untrusted import escape

# What other modules take from here (the API is `haagent.api`, wherever a part is defined).
__all__ = [
    "BAD_INPUT_LINES_PER_MINUTE",
    "KEEPALIVE_S",
    "LISTEN_BACKLOG",
    "MAX_CONNECTIONS",
    "MAX_REFUSING",
    "ApiError",
    "BadInputLog",
    "Handlers",
    "build_app",
    "serve",
]

MAX_REQUEST_BYTES = 64 * 1024  # aiohttp's own bound on any request body it buffers
MAX_QUERY_CHARS = 4096  # aiohttp refuses a request line over 8,190 bytes anyway
MAX_CONNECTIONS = 128  # admins, scrapers and health checks; far below a 1,024 fd limit
MAX_REFUSING = 32  # over-limit connections answered with a 503 at once; the rest just closed
# Pending connections the kernel queues; asyncio also accepts up to this many per loop
# iteration and a connection closed at once is gone two iterations later, so under a flood the
# API's descriptors peak at MAX_CONNECTIONS + MAX_REFUSING + 3 x LISTEN_BACKLOG for a moment.
LISTEN_BACKLOG = 128
KEEPALIVE_S = 15.0

log = logging.getLogger("haagent.api")


class _OneLineFilter(logging.Filter):
    """Turns aiohttp's own error reports ("Error handling request" with a traceback for
    every malformed request) into rate-limited single lines through a `BadInputLog`."""

    def __init__(self, bad_input: BadInputLog) -> None:
        super().__init__()
        self.bad_input = bad_input

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = getattr(exc, "status", None) or getattr(exc, "code", None)
        kind = type(exc).__name__
        cause = f"{status} {kind}" if isinstance(status, int) else kind
        detail = escape(" ".join(str(exc).split()), 160)
        self.bad_input.note(f"malformed HTTP ({cause})", detail)
        return False


_BAD_INPUT_KEY = web.AppKey("bad_input", BadInputLog)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def build_app(access: ApiAccess | str, h: Handlers) -> web.Application:
    """The API over `h`. `access` may be a plain token: the admin token of an old config."""
    gate = Gate(access if isinstance(access, ApiAccess) else ApiAccess(access))
    bad_input = BadInputLog(log)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = gate.check(request.method, request.path, bearer_token(request.raw_headers))
        if refused is not None:
            status, message = refused
            bad_input.note(f"{status} API token refused", f"from {request.remote}")
            return json_response({"error": message}, status)
        try:
            if len(request.query_string) > MAX_QUERY_CHARS:
                raise ApiError(414, f"query longer than {MAX_QUERY_CHARS} characters", "query")
            return await handler(request)
        except ApiError as exc:
            if exc.status < 500:
                # The cause is a fixed phrase or the route, never the client's own text.
                cause = exc.cause or f"{request.method} {_route(request)}"
                detail = f"{escape(str(exc), 160)} (from {request.remote})"
                bad_input.note(f"{exc.status} {cause}", detail)
            return json_response({"error": str(exc)}, exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                bad_input.note(f"{exc.status} {exc.reason}", f"from {request.remote}")
                return json_response({"error": exc.reason}, exc.status)
            raise
        except Exception as exc:
            # A bug, not bad input: say so once per kind of bug, with the traceback, at the
            # same bounded rate, and keep serving.
            if bad_input.note_bug(type(exc).__name__):
                log.exception("internal error serving %s %s", request.method, request.path)
            return json_response({"error": "internal error (see the agent's log)"}, 500)

    app = web.Application(middlewares=[guard], client_max_size=MAX_REQUEST_BYTES)
    app[_BAD_INPUT_KEY] = bad_input
    add_routes(app, h)
    return app


async def serve(
    app: web.Application, listen: str, access: ApiAccess | None = None
) -> web.AppRunner:
    """Start serving on "host:port" or "unix:/path", with TLS when `access` has a certificate.
    Returns the runner (call cleanup()).

    At most MAX_CONNECTIONS connections are served at once, MAX_REFUSING more get a 503
    (see `api_connections.ConnectionLimit`), an idle kept-alive connection is closed after
    KEEPALIVE_S, one answered before its request was read whole closes only once the client
    stopped sending (`api_connections.Lingering`), and a TLS handshake must finish within
    TLS_HANDSHAKE_TIMEOUT_S (a stalled one would hold a slot).
    """
    # Malformed HTTP never reaches a handler: aiohttp reports it on the logger given here,
    # which this module turns into rate-limited single lines. Bodies are never decompressed
    # (read_json_body refuses any Content-Encoding). One logger per app, outside the logging
    # registry (so it goes away with the app), that propagates to "haagent.api".
    server_log = logging.Logger("haagent.api.http")
    server_log.parent = log
    bad_input = app.get(_BAD_INPUT_KEY)
    if bad_input is not None:
        server_log.addFilter(_OneLineFilter(bad_input))
    listeners: list[asyncio.Server] = []
    factories: list[ConnectionLimit] = []

    async def close_listeners(app: web.Application) -> None:
        for listener in listeners:
            listener.close()

    async def close_lingering(app: web.Application) -> None:
        for factory in factories:
            factory.close_all()

    # runner.cleanup() shuts the app down first: stop accepting before connections close; its
    # cleanup comes after aiohttp closed its connections: end those still lingering.
    app.on_shutdown.append(close_listeners)
    app.on_cleanup.append(close_lingering)
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=server_log,
        auto_decompress=False,
        keepalive_timeout=KEEPALIVE_S,
    )
    await runner.setup()
    assert runner.server is not None
    factory = ConnectionLimit(runner.server, MAX_CONNECTIONS, MAX_REFUSING)
    factories.append(factory)
    loop = asyncio.get_running_loop()
    tls = None
    if access is not None and access.tls_cert_file and access.tls_key_file:
        tls = server_tls_context(access.tls_cert_file, access.tls_key_file)
    try:
        if listen.startswith("unix:"):
            listeners.append(
                await loop.create_unix_server(factory, listen[5:], backlog=LISTEN_BACKLOG)
            )
        else:
            host, _, port = listen.rpartition(":")
            listeners.append(
                await loop.create_server(
                    factory,
                    host.strip("[]"),
                    int(port),
                    backlog=LISTEN_BACKLOG,
                    reuse_address=True,
                    ssl=tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
                )
            )
    except BaseException:
        await runner.cleanup()
        raise
    return runner
