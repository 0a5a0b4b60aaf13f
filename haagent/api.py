"""The HTTP surface, served by aiohttp inside the agent's own event loop.

GET /v1/health   200 when this agent holds a valid lease and its loop is fresh, else 503.
                 No token: load balancers and systemd-style probes need it bare.
GET /metrics     Prometheus text from this agent's registry. No token (scrapers).
GET /v1/status   the status document (haagent.status). Needs the API token.

The token travels as ``Authorization: Bearer <token>``. Errors are JSON
``{"error": "..."}`` with a 4xx status, never a traceback.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

StatusFn = Callable[[], Awaitable[dict[str, Any]]]
HealthFn = Callable[[], tuple[bool, str]]
MetricsFn = Callable[[], bytes]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=1, sort_keys=True) + "\n",
        status=status,
        content_type="application/json",
    )


def build_app(
    token: str, status: StatusFn, health: HealthFn, metrics: MetricsFn
) -> web.Application:
    async def require_token(request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            return json_response(
                {"error": "missing or wrong API token (Authorization: Bearer)"}, 401
            )
        return None

    async def get_status(request: web.Request) -> web.Response:
        denied = await require_token(request)
        if denied is not None:
            return denied
        return json_response(await status())

    async def get_health(request: web.Request) -> web.Response:
        ok, reason = health()
        return json_response({"healthy": ok, "reason": reason}, 200 if ok else 503)

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return json_response({"error": exc.reason}, exc.status)
            raise

    app = web.Application(middlewares=[errors])
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
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
