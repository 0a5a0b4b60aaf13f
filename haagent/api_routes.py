"""The routes of the HTTP API (`haagent.api` lists them): one handler per route over a
`Handlers` implementation, added by `add_routes` to the application `haagent.api.build_app`
makes, whose guard answers tokens, bad input and bugs. The admin verbs' routes come from
`haagent.api_admin`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web

from haagent import api_admin
from haagent.api_input import ApiError, migrate_body, read_json_body
from haagent.ports import Outcome, OutcomeKind

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_WHATIF_NODES = 256
MAX_EVENTS_LIMIT = 1000
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


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=1, sort_keys=True) + "\n",
        status=status,
        content_type="application/json",
    )


def outcome_response(outcome: Outcome) -> web.Response:
    status = {OutcomeKind.ACCEPTED: 200, OutcomeKind.REFUSED: 409}.get(outcome.kind, 503)
    return json_response({"outcome": outcome.kind.value, "detail": outcome.detail}, status)


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) > maximum:
        raise ApiError(400, f"{name} must be an integer from 0 to {maximum}", f"bad {name}")
    return int(raw)


def add_routes(app: web.Application, h: Handlers) -> None:
    """Every route of the API over `h`, in the order that matters: the migrate route before
    the generic guest route."""

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
