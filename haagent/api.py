"""The HTTP surface, served by aiohttp inside the agent's own event loop.

GET  /v1/health                    200 with a valid lease and a fresh loop, else 503. No token.
GET  /metrics                      Prometheus text from this agent's registry. No token.
GET  /v1/status                    the status document (haagent.status).
GET  /v1/whatif?fail=n3[,n4]       where the failed nodes' guests would go (haagent.whatif).
POST /v1/guests/{guest}/disable    stop the guest and keep it stopped
POST /v1/guests/{guest}/enable     run it again (also clears its error state)
POST /v1/nodes/{node}/maintenance  body {"on": true|false}: drain the node, or end that

Everything but health and metrics needs ``Authorization: Bearer <token>``. Errors are JSON
``{"error": "..."}`` with a 4xx/5xx status, never a traceback. Admin actions answer with the
outcome of the replicated command: 200 applied, 409 refused (with the reason), 503 unknown
(no majority reached in time: it may still apply; look at the status).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from haagent.ports import Outcome, OutcomeKind

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiError(Exception):
    """A request the agent cannot serve: `status` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handlers(Protocol):
    async def status(self) -> dict[str, Any]: ...

    def health(self) -> tuple[bool, str]: ...

    def metrics(self) -> bytes: ...

    def whatif(self, fail: list[str]) -> dict[str, Any]: ...

    async def set_desired(self, guest: str, running: bool) -> Outcome: ...

    async def set_maintenance(self, node: str, on: bool) -> Outcome: ...


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


def build_app(token: str, h: Handlers) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in ("/v1/health", "/metrics"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
                return json_response(
                    {"error": "missing or wrong API token (Authorization: Bearer)"}, 401
                )
        try:
            return await handler(request)
        except ApiError as exc:
            return json_response({"error": str(exc)}, exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return json_response({"error": exc.reason}, exc.status)
            raise

    async def get_status(request: web.Request) -> web.Response:
        return json_response(await h.status())

    async def get_health(request: web.Request) -> web.Response:
        ok, reason = h.health()
        return json_response({"healthy": ok, "reason": reason}, 200 if ok else 503)

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=h.metrics(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def get_whatif(request: web.Request) -> web.Response:
        raw = request.query.get("fail", "")
        fail = [n.strip() for n in raw.split(",") if n.strip()]
        if not fail:
            raise ApiError(400, "give the nodes to fail: /v1/whatif?fail=node3[,node4]")
        return json_response(h.whatif(fail))

    async def post_guest(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("enable", "disable"):
            raise ApiError(404, f"unknown guest action {action!r} (enable, disable)")
        outcome = await h.set_desired(request.match_info["guest"], action == "enable")
        return outcome_response(outcome)

    async def post_maintenance(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 'body must be JSON: {"on": true} or {"on": false}') from None
        if not isinstance(body, dict) or set(body) != {"on"} or not isinstance(body["on"], bool):
            raise ApiError(400, 'body must be {"on": true} or {"on": false}')
        return outcome_response(await h.set_maintenance(request.match_info["node"], body["on"]))

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/v1/whatif", get_whatif)
    app.router.add_post("/v1/guests/{guest}/{action}", post_guest)
    app.router.add_post("/v1/nodes/{node}/maintenance", post_maintenance)
    return app


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    """Start serving on "host:port" or "unix:/path". Returns the runner (call cleanup())."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if listen.startswith("unix:"):
        site = web.UnixSite(runner, listen[5:])
    else:
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    return runner
