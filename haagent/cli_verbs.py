"""The CLI's verbs that change the cluster through an agent (`haagent.cli` parses them):

    haagent guest enable|disable NAME          haagent guest migrate NAME NODE [--generation G]
    haagent node maintenance NAME on|off       haagent node confirm-fenced NAME [--by WHO]

and the usage checks around the audited verbs of `haagent.cli_admin` (guest cleanup|move,
node freeze|thaw, cluster disarm|arm). Each verb prints "WHAT: done" (exit 0) or fails with
the agent's reason (exit 1); a wrong combination of arguments is exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import quote

from haagent import cli_admin
from haagent.cli_agent import EXIT_USAGE, CliError, agent, post, request_json, who
from haagent.cli_output import report_outcome


def migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--generation",
        type=int,
        help="migrate: only if the guest is still at this generation (`haagent status`); "
        "default: the generation the agent sees",
    )


def cmd_guest_migrate(args: argparse.Namespace) -> int:
    """`haagent guest migrate NAME NODE`: the hand-over is committed; the answer comes once
    the intent committed (the migration itself then runs; `haagent status` shows it)."""
    if args.node is None:
        raise CliError("migrate takes a guest name and a destination node", EXIT_USAGE)
    if args.generation is not None and args.generation < 0:
        raise CliError("--generation: a non-negative integer", EXIT_USAGE)
    if args.reason or args.by is not None:
        raise CliError("migrate: --reason and --by are for cleanup and move", EXIT_USAGE)
    ep = agent(args)
    path = f"/v1/guests/{quote(args.name, safe='')}/migrate"
    body: dict[str, Any] = {"node": args.node}
    if args.generation is not None:
        body["generation"] = args.generation
    doc = asyncio.run(request_json(ep, "POST", path, body=body))
    return report_outcome(doc, f"migrate {args.name} to {args.node}")


def cmd_guest(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return cmd_guest_migrate(args)
    if args.generation is not None:
        raise CliError("--generation is for migrate", EXIT_USAGE)
    if args.action in ("cleanup", "move"):
        if (args.node is None) == (args.action == "move"):
            usage = "move takes a guest and a node" if args.action == "move" else "one guest"
            raise CliError(f"{args.action}: {usage}", EXIT_USAGE)
        doc, what = cli_admin.guest_verb(args, who, post(agent(args)))
        return report_outcome(doc, what)
    if args.node is not None or args.reason or args.by is not None:
        raise CliError(f"{args.action} takes a guest name only", EXIT_USAGE)
    ep = agent(args)
    path = f"/v1/guests/{quote(args.name, safe='')}/{args.action}"
    doc = asyncio.run(request_json(ep, "POST", path))
    return report_outcome(doc, f"{args.action} {args.name}")


def cmd_cluster(args: argparse.Namespace) -> int:
    try:
        doc, what = cli_admin.cluster_verb(args, who, post(agent(args)))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return report_outcome(doc, what)


def cmd_node(args: argparse.Namespace) -> int:
    if args.action in ("freeze", "thaw"):
        if args.state is not None:
            raise CliError(f"{args.action} takes a node name only", EXIT_USAGE)
        doc, what = cli_admin.node_verb(args, who, post(agent(args)))
        return report_outcome(doc, what)
    if args.reason:
        raise CliError(f"{args.action} takes no --reason", EXIT_USAGE)
    if args.action == "confirm-fenced":
        if args.state is not None:
            raise CliError("confirm-fenced takes a node name only", EXIT_USAGE)
        by = args.by if args.by is not None else who()
        ep = agent(args)
        path = f"/v1/nodes/{quote(args.name, safe='')}/confirm-fenced"
        doc = asyncio.run(request_json(ep, "POST", path, body={"by": by}))
        return report_outcome(doc, f"confirm-fenced {args.name}")
    if args.state is None or args.by is not None:
        raise CliError("maintenance takes a node name and on|off", EXIT_USAGE)
    ep = agent(args)
    path = f"/v1/nodes/{quote(args.name, safe='')}/maintenance"
    doc = asyncio.run(request_json(ep, "POST", path, body={"on": args.state == "on"}))
    return report_outcome(doc, f"maintenance {args.state} for {args.name}")
