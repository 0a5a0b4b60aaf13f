"""The `haagent` command.

    haagent run --config FILE            run the agent (what systemd starts)
    haagent check-config FILE...         validate config files, exit 2 on the first error
    haagent status [--config FILE | --url URL --token T] [--json]
    haagent events [--since N] [--limit M] [--config FILE | --url URL --token T] [--json]
    haagent guest enable|disable NAME [--config FILE | --url URL --token T]
    haagent guest migrate NAME NODE [--generation G] [...]   live-migrate a running guest
    haagent node maintenance NAME on|off [--config FILE | --url URL --token T]
    haagent node confirm-fenced NAME [--by WHO] [...]   you verified that NAME is powered off
    haagent guest cleanup NAME | guest move NAME NODE    [--reason WHY] [--by WHO] [...]
    haagent node freeze|thaw NAME | cluster disarm --for DURATION | cluster arm   (cli_admin)
    haagent simulate --config FILE --fail NODE[,NODE] [--offline] [--json]   what-if
    haagent simulate --swarm --seeds N [--start S] [--workers W] [--verbose]
    haagent simulate --scenario FILE [--seed N] [--trace]
    haagent local up|down|demo|status    a 3-node cluster on this machine (see README)
    haagent drbd fence-peer|unfence-peer [RESOURCE]   DRBD's handler (exit codes: README)

Reaching an agent: --config FILE takes the URL (https:// when the config has a TLS
certificate), the token (reads: the read token if the config has one, else the admin token;
admin verbs: the admin token) and the CA (the agent's own certificate) from a node's config;
--url, --token or --token-file, and --cacert override each. With https:// and no --cacert the
system's CAs verify the agent.

Exit codes: 0 success, 1 operation failed (e.g. the agent is unreachable, or it answered
something this CLI cannot read), 2 bad usage or an invalid config. Errors are one line on
stderr, never a traceback, with control characters escaped (an agent's answer or a file name
cannot write to the terminal).

This module parses and dispatches; the commands live in `cli_show` (status, events,
simulate), `cli_verbs` (guest, node, cluster) with the audited verbs in `cli_admin`, reaching
an agent and the error type in `cli_agent`, and what is printed of its answers in `cli_output`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from haagent import __version__, cli_admin
from haagent.cli_agent import EXIT_USAGE, CliError, agent_args
from haagent.cli_show import cmd_events, cmd_simulate, cmd_status
from haagent.cli_verbs import cmd_cluster, cmd_guest, cmd_node, migrate_args
from haagent.config import ConfigError, load_config
from haagent.localcluster.parser import add_local_parser
from haagent.ports import HypervisorError
from haagent.resources import drbd_fence
from haagent.untrusted import escape


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"haagent: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"haagent: {escape(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`haagent status | head`): not an error worth a traceback.
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="haagent",
        description="High-availability agent for hypervisor clusters (Raft, fencing, libvirt).",
    )
    p.add_argument("--version", action="version", version=f"haagent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("--config", "-c", required=True, type=Path, help="this node's TOML config")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate config files")
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument(
        "--here",
        action="store_true",
        help="also check that this host has, up and with carrier, every bridge/device the "
        "guests that may run on the config's [local] node need, and each of their file and "
        "block disks (exit 1 if anything is missing)",
    )
    check.set_defaults(func=_cmd_check)

    status = sub.add_parser("status", help="show the cluster as one agent sees it")
    agent_args(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.set_defaults(func=cmd_status)

    events = sub.add_parser("events", help="recent committed transitions with their reasons")
    events.add_argument("--since", type=int, default=0, help="only events after this index")
    events.add_argument("--limit", type=int, default=100, help="at most this many (<= 1000)")
    agent_args(events)
    events.add_argument("--json", action="store_true", help="print the raw JSON document")
    events.set_defaults(func=cmd_events)

    guest = sub.add_parser(
        "guest",
        help="enable or disable a protected guest, forget its failures (cleanup), move it "
        "(stop and start) or live-migrate it to a node",
    )
    guest.add_argument("action", choices=["enable", "disable", "cleanup", "move", "migrate"])
    guest.add_argument("name", help="guest name")
    guest.add_argument("node", nargs="?", help="move, migrate: the node to run it on")
    migrate_args(guest)
    cli_admin.audit_args(guest)
    agent_args(guest)
    guest.set_defaults(func=cmd_guest)

    node = sub.add_parser(
        "node",
        help="put a node in maintenance (drain it) or take it out; or confirm that a failed "
        "node is powered off (confirm-fenced: only once you verified it, see the README)",
    )
    node.add_argument("action", choices=["maintenance", "confirm-fenced", "freeze", "thaw"])
    node.add_argument("name", help="node name")
    node.add_argument("state", nargs="?", choices=["on", "off"], help="maintenance: on|off")
    node.add_argument(
        "--by", help="confirm-fenced, freeze, thaw: who, for the audit (default: USER@HOST)"
    )
    node.add_argument("--reason", default="", help="freeze, thaw: why, for the audit")
    agent_args(node)
    node.set_defaults(func=cmd_node)
    cli_admin.add_parsers(sub, agent_args, cmd_cluster)

    sim = sub.add_parser(
        "simulate",
        help="what-if for a config (--config --fail), or the simulator (--swarm, --scenario)",
    )
    sim.add_argument("--config", "-c", type=Path, help="a node's config (what-if mode)")
    sim.add_argument("--fail", help="what-if: nodes to fail, comma-separated, e.g. node3")
    sim.add_argument(
        "--offline",
        action="store_true",
        help="what-if from the config alone, without asking the running agent",
    )
    sim.add_argument("--json", action="store_true", help="print JSON")
    sim.add_argument(
        "--swarm",
        action="store_true",
        help="simulator: run random fault schedules and check the invariants",
    )
    sim.add_argument("--seeds", type=int, default=100, help="swarm: how many seeds")
    sim.add_argument("--start", type=int, default=0, help="swarm: first seed")
    sim.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="swarm: worker processes"
    )
    sim.add_argument(
        "--verbose",
        action="store_true",
        help="swarm: print each seed's schedule and trace (to replay one)",
    )
    sim.add_argument("--scenario", type=Path, help="simulator: run one scenario file")
    sim.add_argument("--seed", type=int, help="scenario: override its seed")
    sim.add_argument("--trace", action="store_true", help="scenario: print the trace")
    sim.set_defaults(func=cmd_simulate)

    add_local_parser(sub)
    drbd = sub.add_parser("drbd", help="DRBD's fence-peer/unfence-peer handler (drbd.conf)")
    drbd_fence.add_arguments(drbd)
    drbd.set_defaults(func=drbd_fence.run_from_args)
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from haagent.daemon import run_daemon

    try:
        return run_daemon(config)
    except HypervisorError as exc:
        # Start-up could not reach the hypervisor (libvirtd down, a wrong URI): nothing was
        # bound or armed yet.
        raise CliError(f"cannot start: {exc}") from None


def _cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for f in args.files:
        cfg = load_config(f)
        print(
            f"{f}: ok (cluster {cfg.cluster}, node {cfg.node}, {len(cfg.nodes)} nodes, "
            f"{len(cfg.guests)} guests, {cfg.timing_note()[1]})"
        )
        for name, gc in sorted(cfg.guests.items()):
            if gc.spec.networks:
                print(f"  guest {name} needs {', '.join(gc.spec.networks)}")
        if args.here:
            from haagent.doctor import DoctorError, check_here

            try:
                status = max(status, check_here(cfg))
            except DoctorError as exc:
                raise CliError(str(exc)) from None
    return status


if __name__ == "__main__":
    sys.exit(main())
