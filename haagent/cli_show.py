"""The CLI's commands that change nothing (`haagent.cli` parses them):

    haagent status [--json]                        the cluster as one agent sees it
    haagent events [--since N] [--limit M] [--json]   committed transitions with reasons
    haagent simulate --config FILE --fail NODE[,NODE] [--offline] [--json]   what-if
    haagent simulate --swarm ... | --scenario FILE ...   the simulator

What-if asks the running agent first (its live state) and computes from the config alone when
the agent cannot answer (or with --offline); the text says which. An answer of a shape this CLI
does not know is exit 1 with one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from haagent.cli_agent import (
    EXIT_USAGE,
    CliError,
    agent,
    endpoint_from_config,
    fetch_status,
    request_json,
)
from haagent.cli_output import SHAPE_ERRORS, format_whatif, printable, shape_error
from haagent.config import load_config
from haagent.status import format_status
from haagent.untrusted import UntrustedInputError, escape, read_small_text
from haagent.whatif import planned_state, what_if

MAX_SCENARIO_BYTES = 1024 * 1024


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.swarm or args.scenario is not None:
        if args.swarm and args.scenario is not None:
            raise CliError("give --swarm or --scenario, not both", EXIT_USAGE)
        from haagent.sim.scenario import run_scenario_cli
        from haagent.sim.swarm import swarm_cli

        if args.swarm:
            if args.seeds < 0 or args.start < 0 or args.workers < 1:
                raise CliError("--seeds and --start must be >= 0, --workers >= 1", EXIT_USAGE)
            return swarm_cli(args.seeds, args.start, args.workers, args.verbose)
        try:
            # The same limits as config files: no FIFO, no device, no binary, no giant file.
            read_small_text(args.scenario, MAX_SCENARIO_BYTES)
        except UntrustedInputError as exc:
            raise CliError(f"--scenario: {exc}", EXIT_USAGE) from None
        return run_scenario_cli(args.scenario, args.seed, args.trace)
    if args.config is None or not args.fail:
        raise CliError("what-if needs --config FILE and --fail NODE[,NODE]", EXIT_USAGE)
    cfg = load_config(args.config)
    fail = [n.strip() for n in args.fail.split(",") if n.strip()]
    unknown = [n for n in fail if n not in cfg.nodes]
    if unknown:
        raise CliError(
            f"--fail: unknown node(s) {', '.join(unknown)}; nodes: {', '.join(sorted(cfg.nodes))}",
            EXIT_USAGE,
        )
    doc: dict[str, Any] | None = None
    source = "computed from the config (every node up, guests where the leader would put them)"
    if not args.offline:
        try:
            doc = asyncio.run(
                request_json(
                    endpoint_from_config(cfg, admin=False),
                    "GET",
                    f"/v1/whatif?fail={','.join(fail)}",
                    timeout_s=3.0,
                )
            )
            source = f"live state from the agent at {cfg.api_listen}"
            if not doc.get("view_fresh", True):
                source += " (its view may be stale: it holds no lease)"
        except CliError as exc:
            print(
                f"haagent: {escape(str(exc))}; computing from the config instead",
                file=sys.stderr,
            )
    if doc is None:
        settings = cfg.agent_settings()
        state = planned_state(
            {n: c.role for n, c in cfg.nodes.items()}, settings.guests, settings.capacity_mib
        )
        doc = what_if(state, settings.capacity_mib, fail, cfg.nodes).to_json()
    if args.json:
        print(json.dumps({"source": source, **doc}, indent=1, sort_keys=True))
    else:
        try:
            text = format_whatif(doc, source)
        except SHAPE_ERRORS as exc:
            raise shape_error(cfg.api_listen, "a what-if document", exc) from None
        print(printable(text))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ep = agent(args, admin=False)
    doc = fetch_status(ep)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    else:
        try:
            text = format_status(doc)
        except SHAPE_ERRORS as exc:
            raise shape_error(ep.url, "a status document", exc) from None
        print(printable(text))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    if not (args.since >= 0 and 0 <= args.limit <= 1000):
        raise CliError("--since must be >= 0 and --limit from 0 to 1000", EXIT_USAGE)
    ep = agent(args, admin=False)
    path = f"/v1/events?since={args.since}&limit={args.limit}"
    doc = asyncio.run(request_json(ep, "GET", path))
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    try:
        lines = [f"{e['index']:>8}  {e['type']:<16} {e['summary']}" for e in doc["events"]]
    except SHAPE_ERRORS as exc:
        raise shape_error(ep.url, "an events document", exc) from None
    if doc.get("truncated"):
        lines.insert(0, "(older events left out: use --since or a larger --limit)")
    print(printable("\n".join(lines) if lines else "no events"))
    return 0
