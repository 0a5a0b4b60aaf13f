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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from haagent import api_admin
from haagent.api_access import (
    TLS_HANDSHAKE_TIMEOUT_S,
    ApiAccess,
    Gate,
    bearer_token,
    server_tls_context,
)
from haagent.api_connections import ConnectionLimit
from haagent.ports import Outcome, OutcomeKind
from haagent.untrusted import UntrustedInputError, escape, loads_json

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY_BYTES = 4096  # the largest valid body is {"on": false}
MAX_JSON_DEPTH = 4
MAX_REQUEST_BYTES = 64 * 1024  # aiohttp's own bound on any request body it buffers
MAX_WHATIF_NODES = 256
MAX_QUERY_CHARS = 4096  # aiohttp refuses a request line over 8,190 bytes anyway
MAX_EVENTS_LIMIT = 1000
BAD_INPUT_LINES_PER_MINUTE = 20
MAX_CONNECTIONS = 128  # admins, scrapers and health checks; far below a 1,024 fd limit
MAX_REFUSING = 32  # over-limit connections answered with a 503 at once; the rest just closed
KEEPALIVE_S = 15.0

log = logging.getLogger("haagent.api")


class ApiError(Exception):
    """A request the agent cannot serve: `status` and a message for the client. `cause` is
    a fixed phrase naming the kind of problem for the log, free of the client's input."""

    def __init__(self, status: int, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause


class BadInputLog:
    """Logs bad input without a traceback, so no client can flood the log.

    The first occurrence of each cause is logged at once; after that a cause is logged at
    most once per `interval_s`, with how many were left out since its last line; and no more
    than `burst` lines are written per `interval_s` in all. At most `max_causes` causes are
    remembered (then new ones count as "other"): causes are fixed phrases and exception
    types, but the bound holds whatever callers pass.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        burst: int = BAD_INPUT_LINES_PER_MINUTE,
        max_causes: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self.max_causes = max_causes
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._window_start = -float("inf")
        self._window_lines = 0
        self.lines = 0  # written so far (for tests)

    def _admit(self, cause: str) -> tuple[str, int] | None:
        """(cause, how many were left out before) if a line may be written now, else None."""
        if cause not in self._last and len(self._last) >= self.max_causes:
            cause = "other"
        now = self.clock()
        if now - self._window_start >= self.interval_s:
            self._window_start, self._window_lines = now, 0
        last = self._last.get(cause)
        if (last is not None and now - last < self.interval_s) or self._window_lines >= self.burst:
            self._last.setdefault(cause, now)
            self._dropped[cause] = self._dropped.get(cause, 0) + 1
            return None
        self._last[cause] = now
        self._window_lines += 1
        self.lines += 1
        return cause, self._dropped.pop(cause, 0)

    def note(self, cause: str, detail: str = "") -> None:
        """One bad request of kind `cause` (a fixed phrase); `detail` must be escaped."""
        admitted = self._admit(cause)
        if admitted is None:
            return
        cause, dropped = admitted
        more = f" (and {dropped} more since the last report)" if dropped else ""
        self.logger.warning(
            "bad request: %s%s%s", escape(cause, 120), f": {detail}" if detail else "", more
        )

    def note_bug(self, kind: str) -> bool:
        """May an internal error of this kind be logged (with its traceback) now?"""
        return self._admit(f"internal error {kind}") is not None


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


MAX_BY_CHARS = api_admin.MAX_BY_CHARS  # who confirmed a fence, as the audit shows it


class Handlers(api_admin.AdminVerbs, Protocol):
    """Status, metrics and what-if are computed off the agent's loop and arrive ready; the
    status document as JSON text (serializing thousands of guests is not loop work)."""

    async def status(self) -> str: ...

    def health(self) -> tuple[bool, str]: ...

    async def metrics(self) -> bytes: ...

    async def whatif(self, fail: list[str]) -> dict[str, Any]: ...

    def events(self, since: int, limit: int) -> dict[str, Any]: ...

    async def set_desired(self, guest: str, running: bool) -> Outcome: ...

    async def set_maintenance(self, node: str, on: bool) -> Outcome: ...

    async def confirm_fenced(self, node: str, by: str) -> Outcome: ...

    async def migrate(self, guest: str, node: str, generation: int | None) -> Outcome: ...


MAX_NAME_CHARS = 63  # a node name (config.py checks configured names against the same bound)


def migrate_body(body: Any) -> tuple[str, int | None]:
    """`{"node": NAME[, "generation": G]}` of a migrate request, or ApiError 400 saying what
    is wrong (the node's existence is the state machine's to judge: 409 with the reason)."""
    ok = (
        isinstance(body, dict)
        and "node" in body
        and set(body) <= {"node", "generation"}
        and isinstance(body["node"], str)
        and 0 < len(body["node"]) <= MAX_NAME_CHARS
        and body["node"].isprintable()
    )
    generation = body.get("generation") if isinstance(body, dict) else None
    if ok and generation is not None:
        ok = type(generation) is int and 0 <= generation < 2**63
    if not ok:
        raise ApiError(
            400,
            f'body must be {{"node": "NAME"}} (at most {MAX_NAME_CHARS} printable characters) '
            'with an optional "generation": a non-negative integer',
            "body not {node}",
        )
    return body["node"], generation


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=1, sort_keys=True) + "\n",
        status=status,
        content_type="application/json",
    )


def outcome_response(outcome: Outcome) -> web.Response:
    status = {OutcomeKind.ACCEPTED: 200, OutcomeKind.REFUSED: 409}.get(outcome.kind, 503)
    return json_response({"outcome": outcome.kind.value, "detail": outcome.detail}, status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_json_body(request: web.Request) -> Any:
    """The request's JSON body, or ApiError (413 too large, 415 an encoding or charset we do
    not take, 400 not JSON or nested too deeply). Never decompresses, never buffers more than
    MAX_BODY_BYTES + 1."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "Content-Encoding is not supported; send plain JSON", "encoding")
    ctype = request.headers.get("Content-Type", "")
    media, *options = (part.strip() for part in ctype.split(";"))
    if media.lower() not in ("", "application/json"):
        raise ApiError(415, "Content-Type must be application/json", "content type")
    for option in options:
        name, _, value = option.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise ApiError(415, "charset must be utf-8", "charset")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes", "body too large")
    data = b""
    try:
        while len(data) <= MAX_BODY_BYTES:
            chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except (RequestPayloadError, HttpProcessingError, ClientPayloadError, ConnectionError) as exc:
        cause = f"body unreadable ({type(exc).__name__})"
        raise ApiError(400, "cannot read the body", cause) from None
    if len(data) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes", "body too large")
    try:
        return loads_json(data, max_bytes=MAX_BODY_BYTES, max_depth=MAX_JSON_DEPTH)
    except UntrustedInputError as exc:
        raise ApiError(400, f"body must be JSON: {exc}", "body not JSON") from None


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) > maximum:
        raise ApiError(400, f"{name} must be an integer from 0 to {maximum}", f"bad {name}")
    return int(raw)


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

    async def get_status(request: web.Request) -> web.Response:
        return web.Response(text=await h.status(), content_type="application/json")

    async def get_health(request: web.Request) -> web.Response:
        ok, reason = h.health()
        return json_response({"healthy": ok, "reason": reason}, 200 if ok else 503)

    async def get_metrics(request: web.Request) -> web.Response:
        body = await h.metrics()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def get_whatif(request: web.Request) -> web.Response:
        raw = request.query.get("fail", "")
        fail = list(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
        if not fail:
            raise ApiError(400, "give the nodes to fail: /v1/whatif?fail=node3[,node4]")
        if len(fail) > MAX_WHATIF_NODES:
            raise ApiError(400, f"at most {MAX_WHATIF_NODES} nodes to fail", "whatif too many")
        return json_response(await h.whatif(fail))

    async def get_events(request: web.Request) -> web.Response:
        since = _int_param(request, "since", 0, 2**63 - 1)
        limit = _int_param(request, "limit", 100, MAX_EVENTS_LIMIT)
        return json_response(h.events(since, limit))

    async def get_openapi(request: web.Request) -> web.Response:
        # Imported on first request: the document is large and rarely read (issue 7: RSS).
        from haagent.openapi import OPENAPI_DOCUMENT

        return json_response(OPENAPI_DOCUMENT)

    async def post_guest(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("enable", "disable"):
            raise ApiError(404, f"unknown guest action {action!r} (enable, disable)")
        outcome = await h.set_desired(request.match_info["guest"], action == "enable")
        return outcome_response(outcome)

    async def post_migrate(request: web.Request) -> web.Response:
        node, generation = migrate_body(await read_json_body(request))
        return outcome_response(await h.migrate(request.match_info["guest"], node, generation))

    async def post_maintenance(request: web.Request) -> web.Response:
        body = await read_json_body(request)
        if not isinstance(body, dict) or set(body) != {"on"} or not isinstance(body["on"], bool):
            raise ApiError(400, 'body must be {"on": true} or {"on": false}', "body not {on}")
        return outcome_response(await h.set_maintenance(request.match_info["node"], body["on"]))

    async def post_confirm_fenced(request: web.Request) -> web.Response:
        by = ""
        if request.can_read_body:
            body = await read_json_body(request)
            if (
                not isinstance(body, dict)
                or not set(body) <= {"by"}
                or not isinstance(body.get("by", ""), str)
                or len(body.get("by", "")) > MAX_BY_CHARS
                or not body.get("by", "").isprintable()
            ):
                raise ApiError(
                    400,
                    f'body must be empty or {{"by": "who"}} (at most {MAX_BY_CHARS} printable '
                    "characters)",
                    "body not {by}",
                )
            by = body.get("by", "")
        return outcome_response(await h.confirm_fenced(request.match_info["node"], by))

    app = web.Application(middlewares=[guard], client_max_size=MAX_REQUEST_BYTES)
    app[_BAD_INPUT_KEY] = bad_input
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/v1/whatif", get_whatif)
    app.router.add_get("/v1/events", get_events)
    app.router.add_get("/v1/openapi.json", get_openapi)
    # Before the generic guest route, which would answer "unknown guest action" (404).
    app.router.add_post("/v1/guests/{guest}/migrate", post_migrate)
    api_admin.add_routes(app, h, read_json_body, outcome_response, ApiError)
    app.router.add_post("/v1/guests/{guest}/{action}", post_guest)
    app.router.add_post("/v1/nodes/{node}/maintenance", post_maintenance)
    app.router.add_post("/v1/nodes/{node}/confirm-fenced", post_confirm_fenced)
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
            listeners.append(await loop.create_unix_server(factory, listen[5:], backlog=128))
        else:
            host, _, port = listen.rpartition(":")
            listeners.append(
                await loop.create_server(
                    factory,
                    host.strip("[]"),
                    int(port),
                    backlog=128,
                    reuse_address=True,
                    ssl=tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
                )
            )
    except BaseException:
        await runner.cleanup()
        raise
    return runner
