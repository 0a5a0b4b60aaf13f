"""The CLI's admin verbs of issue 12 part 5 (`haagent.cli` parses, this module acts):

    haagent guest cleanup NAME [--reason WHY]         forget its failures, keep it running
    haagent guest move NAME NODE [--reason WHY]       stop it and start it on NODE
    haagent cluster disarm --for DURATION [--reason WHY]   no fencing/recovery for DURATION
    haagent cluster arm [--reason WHY]
    haagent node freeze|thaw NAME [--reason WHY]      an agent restart that moves nothing

Every verb sends the audit's who (`--by`, default USER@HOST of whoever runs it) and why
(`--reason`); the agent adds itself ("alice@laptop via api@n1") and its wall clock. DURATION is
seconds or a sum of parts with units, e.g. `90`, `45s`, `30m`, `1h30m`, `2d` (at most a week).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
MAX_DURATION_S = 7 * 86400


def parse_duration(text: str) -> float:
    """Seconds in `text` ("90", "30m", "1h30m"); ValueError with the accepted forms."""
    raw = text.strip().lower()
    try:
        seconds = float(raw)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _PART.finditer(raw):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(raw) or not raw:
            raise ValueError(
                f"duration {text!r}: give seconds or parts like 45s, 30m, 1h30m, 2d"
            ) from None
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"duration {text!r}: must be more than 0 and at most a week")
    return seconds


def add_parsers(
    sub: Any,
    agent_args: Callable[[argparse.ArgumentParser], None],
    cluster_func: Callable[[argparse.Namespace], int],
) -> None:
    """The `cluster` command (the guest and node verbs join their existing commands)."""
    cluster = sub.add_parser(
        "cluster",
        help="disarm the cluster for a planned network maintenance (no fencing, no recovery, "
        "watchdogs released; re-armed automatically) or arm it again",
    )
    cluster.add_argument("action", choices=["disarm", "arm"])
    cluster.add_argument(
        "--for", dest="for_", metavar="DURATION", help="disarm: how long (e.g. 30m, 1h30m)"
    )
    audit_args(cluster)
    agent_args(cluster)
    cluster.set_defaults(func=cluster_func)


def audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default="", help="why, for the audit in the status")
    p.add_argument("--by", help="who, for the audit (default: USER@HOST)")


def audit_body(args: argparse.Namespace, who: Callable[[], str]) -> dict[str, Any]:
    by = args.by if getattr(args, "by", None) is not None else who()
    return {"by": by, "reason": getattr(args, "reason", "") or ""}


Request = Callable[[str, dict[str, Any]], Any]


def guest_verb(args: argparse.Namespace, who: Callable[[], str], post: Request) -> tuple[Any, str]:
    """cleanup / move: the agent's answer and what to call it."""
    body = audit_body(args, who)
    path = f"/v1/guests/{quote(args.name, safe='')}/{args.action}"
    if args.action == "move":
        body["node"] = args.node
        return asyncio.run(post(path, body)), f"move {args.name} to {args.node}"
    return asyncio.run(post(path, body)), f"cleanup {args.name}"


def node_verb(args: argparse.Namespace, who: Callable[[], str], post: Request) -> tuple[Any, str]:
    """freeze / thaw."""
    path = f"/v1/nodes/{quote(args.name, safe='')}/{args.action}"
    return asyncio.run(post(path, audit_body(args, who))), f"{args.action} {args.name}"


def cluster_verb(
    args: argparse.Namespace, who: Callable[[], str], post: Request
) -> tuple[Any, str]:
    """disarm / arm. Raises ValueError for a missing or bad --for."""
    body = audit_body(args, who)
    if args.action == "disarm":
        if args.for_ is None:
            raise ValueError("disarm needs --for DURATION (e.g. --for 30m)")
        body["for_s"] = parse_duration(args.for_)
        return asyncio.run(post("/v1/cluster/disarm", body)), f"disarm for {args.for_}"
    if args.for_ is not None:
        raise ValueError("arm takes no --for")
    return asyncio.run(post("/v1/cluster/arm", body)), "arm"
