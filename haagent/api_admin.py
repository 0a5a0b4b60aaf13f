"""The admin verbs of issue 12 part 5 on the HTTP API (admin token only, like every POST):

POST /v1/guests/{guest}/cleanup   forget the guest's failure history without stopping it
POST /v1/guests/{guest}/move      body {"node": N}: stop it and start it on N
POST /v1/cluster/disarm           body {"for_s": S}: no fencing or recovery for S seconds
POST /v1/cluster/arm              fence and recover again (also automatic after for_s)
POST /v1/nodes/{node}/freeze      its agent may be away: not declared failed, guests stay
POST /v1/nodes/{node}/thaw        end that

Every body may carry the audit fields ``"by"`` (who: the CLI sends USER@HOST) and
``"reason"`` (why: the CLI's ``--reason``); the agent records ``"<by> via api@<node>"`` (or
``api@<node>`` alone) with its wall clock in the replicated audit (status `audit`). The token
is the admin token (the read token gets 403), so the role is always "admin" and is not
repeated. Answers are the replicated command's outcome (200 / 409 with the reason / 503).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from haagent.commands import MAX_REASON_CHARS
from haagent.ports import Outcome

MAX_BY_CHARS = 64
MAX_NODE_CHARS = 63


class AdminVerbs(Protocol):
    async def cleanup_guest(self, guest: str, by: str, reason: str) -> Outcome: ...

    async def move_guest(self, guest: str, node: str, by: str, reason: str) -> Outcome: ...

    async def set_arming(self, disarm: bool, for_s: float, by: str, reason: str) -> Outcome: ...

    async def set_frozen(self, node: str, on: bool, by: str, reason: str) -> Outcome: ...


class BodyError(ValueError):
    """The body does not have the documented shape (the API answers 400)."""


def _text(body: dict[str, Any], name: str, limit: int, required: bool = False) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        need = "a" if required else "an optional"
        raise BodyError(f"{name!r} must be {need} string of at most {limit} printable characters")
    if required and not value:
        raise BodyError(f"{name!r} must not be empty")
    return value


def parse_body(body: Any, required: dict[str, str]) -> dict[str, Any]:
    """Check an admin verb's JSON body: `required` maps field -> "node" or "seconds"; `by` and
    `reason` are optional everywhere; nothing else is allowed. Raises `BodyError`."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BodyError("body must be a JSON object")
    allowed = {"by", "reason", *required}
    extra = sorted(set(body) - allowed)
    if extra:
        raise BodyError(
            f"unknown field(s) {', '.join(map(repr, extra))}; allowed: {sorted(allowed)}"
        )
    out: dict[str, Any] = {
        "by": _text(body, "by", MAX_BY_CHARS),
        "reason": _text(body, "reason", MAX_REASON_CHARS),
    }
    for name, kind in required.items():
        if kind == "node":
            out[name] = _text(body, name, MAX_NODE_CHARS, required=True)
        else:
            value = body.get(name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise BodyError(f"{name!r} must be a number of seconds above 0")
            out[name] = float(value)
    return out


def openapi_paths(name_param: Any, outcomes: dict[str, Any], admin: Any) -> dict[str, Any]:
    """The OpenAPI entries of these routes (haagent.openapi merges them)."""

    def body(required: dict[str, dict[str, Any]], must: bool) -> dict[str, Any]:
        props: dict[str, Any] = {
            "by": {"type": "string", "maxLength": MAX_BY_CHARS, "description": "who (audit)"},
            "reason": {
                "type": "string",
                "maxLength": MAX_REASON_CHARS,
                "description": "why (audit)",
            },
            **required,
        }
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": props,
        }
        if required:
            schema["required"] = sorted(required)
        return {"required": must, "content": {"application/json": {"schema": schema}}}

    def verb(summary: str, params: list[Any], request: dict[str, Any]) -> dict[str, Any]:
        op: dict[str, Any] = {"summary": summary, "security": admin, "responses": outcomes}
        if params:
            op["parameters"] = params
        op["requestBody"] = request
        return {"post": op}

    guest = [name_param("guest", "guest name")]
    node = [name_param("node", "node name")]
    target = {"node": {"type": "string", "maxLength": MAX_NODE_CHARS, "minLength": 1}}
    seconds = {"for_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 7 * 24 * 3600}}
    return {
        "/v1/guests/{guest}/cleanup": verb(
            "forget the guest's failure history (count, error) without stopping it",
            guest,
            body({}, False),
        ),
        "/v1/guests/{guest}/move": verb(
            "stop the guest and start it on the given node (placement rules apply)",
            guest,
            body(target, True),
        ),
        "/v1/cluster/disarm": verb(
            "no fencing or recovery, watchdogs released, for for_s seconds (then re-armed)",
            [],
            body(seconds, True),
        ),
        "/v1/cluster/arm": verb("fence and recover again", [], body({}, False)),
        "/v1/nodes/{node}/freeze": verb(
            "the node is neither declared failed nor fenced and its guests stay (agent restart)",
            node,
            body({}, False),
        ),
        "/v1/nodes/{node}/thaw": verb("end a freeze", node, body({}, False)),
    }


def add_routes(
    app: web.Application,
    h: AdminVerbs,
    read_body: Callable[[web.Request], Awaitable[Any]],
    respond: Callable[[Outcome], web.Response],
    error: Callable[[int, str, str], Exception],
) -> None:
    """Register the routes (before the generic /v1/guests/{guest}/{action}, so they win).
    `read_body` reads a bounded JSON body, `respond` turns an Outcome into a response,
    `error(status, message, cause)` is the API's error."""

    async def fields(request: web.Request, required: dict[str, str]) -> dict[str, Any]:
        body = await read_body(request) if request.can_read_body else None
        try:
            return parse_body(body, required)
        except BodyError as exc:
            raise error(400, str(exc), "admin verb body") from None

    async def cleanup(request: web.Request) -> web.Response:
        f = await fields(request, {})
        return respond(await h.cleanup_guest(request.match_info["guest"], f["by"], f["reason"]))

    async def move(request: web.Request) -> web.Response:
        f = await fields(request, {"node": "node"})
        guest = request.match_info["guest"]
        return respond(await h.move_guest(guest, f["node"], f["by"], f["reason"]))

    async def disarm(request: web.Request) -> web.Response:
        f = await fields(request, {"for_s": "seconds"})
        return respond(await h.set_arming(True, f["for_s"], f["by"], f["reason"]))

    async def arm(request: web.Request) -> web.Response:
        f = await fields(request, {})
        return respond(await h.set_arming(False, 0.0, f["by"], f["reason"]))

    def frozen(on: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            f = await fields(request, {})
            node = request.match_info["node"]
            return respond(await h.set_frozen(node, on, f["by"], f["reason"]))

        return handler

    app.router.add_post("/v1/guests/{guest}/cleanup", cleanup)
    app.router.add_post("/v1/guests/{guest}/move", move)
    app.router.add_post("/v1/cluster/disarm", disarm)
    app.router.add_post("/v1/cluster/arm", arm)
    app.router.add_post("/v1/nodes/{node}/freeze", frozen(True))
    app.router.add_post("/v1/nodes/{node}/thaw", frozen(False))
