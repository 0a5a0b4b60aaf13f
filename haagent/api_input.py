"""What the HTTP API does with a client's input (`haagent.api` states the contracts):
`ApiError` for a request it cannot serve, the bounded JSON body reader, the migrate body, and
`BadInputLog`, which reports bad input without a traceback at a rate no client can raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from haagent.untrusted import UntrustedInputError, escape, loads_json

MAX_BODY_BYTES = 4096  # the largest valid body is {"on": false}
MAX_JSON_DEPTH = 4
BAD_INPUT_LINES_PER_MINUTE = 20
MAX_NAME_CHARS = 63  # a node name (config.py checks configured names against the same bound)


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
