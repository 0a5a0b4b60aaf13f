"""The `haagent` command.

    haagent run --config FILE            run the agent (what systemd starts)
    haagent check-config FILE...         validate config files, exit 2 on the first error
    haagent status [--config FILE | --url URL --token T] [--json]
    haagent events [--since N] [--limit M] [--config FILE | --url URL --token T] [--json]
    haagent guest enable|disable NAME [--config FILE | --url URL --token T]
    haagent guest migrate NAME NODE [--generation G] [...]   live-migrate a running guest
    haagent node maintenance NAME on|off [--config FILE | --url URL --token T]
    haagent node confirm-fenced NAME [--by WHO] [...]   you verified that NAME is powered off
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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp

from haagent import __version__
from haagent.api_access import client_tls_context
from haagent.config import SECRET_RE, Config, ConfigError, load_config
from haagent.localcluster.parser import add_local_parser
from haagent.ports import HypervisorError
from haagent.resources import drbd_fence
from haagent.status import format_status
from haagent.untrusted import UntrustedInputError, escape, loads_json, read_small_text
from haagent.whatif import planned_state, what_if

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a status document of 10,000 guests is ~5 MB
MAX_ANSWER_DEPTH = 32
MAX_SCENARIO_BYTES = 1024 * 1024
# What an agent's document may fail with when it is not the shape this CLI knows (another
# version, or not an agent at all): reported as an operation that failed, not a traceback.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


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


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


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
    _agent_args(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.set_defaults(func=_cmd_status)

    events = sub.add_parser("events", help="recent committed transitions with their reasons")
    events.add_argument("--since", type=int, default=0, help="only events after this index")
    events.add_argument("--limit", type=int, default=100, help="at most this many (<= 1000)")
    _agent_args(events)
    events.add_argument("--json", action="store_true", help="print the raw JSON document")
    events.set_defaults(func=_cmd_events)

    guest = sub.add_parser(
        "guest", help="enable or disable a protected guest, or live-migrate it to a node"
    )
    guest.add_argument("action", choices=["enable", "disable", "migrate"])
    guest.add_argument("name", help="guest name")
    _migrate_args(guest)
    _agent_args(guest)
    guest.set_defaults(func=_cmd_guest)

    node = sub.add_parser(
        "node",
        help="put a node in maintenance (drain it) or take it out; or confirm that a failed "
        "node is powered off (confirm-fenced: only once you verified it, see the README)",
    )
    node.add_argument("action", choices=["maintenance", "confirm-fenced"])
    node.add_argument("name", help="node name")
    node.add_argument("state", nargs="?", choices=["on", "off"], help="maintenance: on|off")
    node.add_argument(
        "--by", help="confirm-fenced: who verified it, for the audit (default: USER@HOST)"
    )
    _agent_args(node)
    node.set_defaults(func=_cmd_node)

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
    sim.set_defaults(func=_cmd_simulate)

    add_local_parser(sub)
    drbd = sub.add_parser("drbd", help="DRBD's fence-peer/unfence-peer handler (drbd.conf)")
    drbd_fence.add_arguments(drbd)
    drbd.set_defaults(func=drbd_fence.run_from_args)
    return p


def _agent_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="read URL, token and CA from this config")
    p.add_argument("--url", help="agent API: http(s)://HOST:PORT or unix:/path")
    p.add_argument("--token", help="API token (default: from --config); see --token-file")
    p.add_argument(
        "--token-file", type=Path, help="read the token from this file (keeps it out of ps)"
    )
    p.add_argument(
        "--cacert", type=Path, help="CA or the agent's certificate that verifies https://"
    )


class Endpoint(NamedTuple):
    url: str
    token: str
    cacert: Path | None = None


def endpoint_from_config(cfg: Config, admin: bool) -> Endpoint:
    """How to reach the agent of this config: admin verbs use the admin token, reads the
    read token when there is one (the least that works)."""
    access = cfg.api_access
    token = cfg.api_token if admin or access.read_token is None else access.read_token
    return Endpoint(api_url(cfg.api_listen, access.tls), token, access.tls_cert_file)


def _agent(args: argparse.Namespace, admin: bool = True) -> Endpoint:
    url, token, cacert = args.url, args.token, args.cacert
    if args.token_file is not None:
        if token is not None:
            raise CliError("give --token or --token-file, not both", EXIT_USAGE)
        try:
            token = read_small_text(args.token_file, 64 * 1024).strip()
        except UntrustedInputError as exc:
            raise CliError(f"--token-file: {exc}", EXIT_USAGE) from None
    if args.config is not None:
        ep = endpoint_from_config(load_config(args.config), admin)
        url, token, cacert = url or ep.url, token or ep.token, cacert or ep.cacert
    if not url or not token:
        raise CliError("give --config FILE, or --url and --token", EXIT_USAGE)
    if not url.startswith(("http://", "https://", "unix:/")):
        raise CliError(
            f"--url: {url!r} is not http://HOST:PORT, https://... or unix:/PATH", EXIT_USAGE
        )
    if not SECRET_RE.fullmatch(token):
        raise CliError("--token: an API token is visible ASCII only (no blanks)", EXIT_USAGE)
    return Endpoint(url, token, cacert)


def _report_outcome(doc: dict[str, Any], what: str) -> int:
    outcome = doc.get("outcome")
    detail = escape(str(doc.get("detail")), 300)
    if outcome == "accepted":
        print(f"{what}: done")
        return 0
    if outcome == "refused":
        raise CliError(f"{what}: refused: {detail}")
    raise CliError(f"{what}: unknown outcome ({detail}); check `haagent status`")


def _printable(text: str) -> str:
    """Text made of an agent's answer, each line escaped: names and reasons come from the
    network and must not drive the terminal (escape sequences, carriage returns)."""
    return "\n".join(escape(line) for line in text.split("\n"))


def _shape_error(url: str, what: str, exc: Exception) -> CliError:
    return CliError(
        f"the agent at {url} answered {what} this haagent cannot read "
        f"({type(exc).__name__}: {escape(str(exc), 80)}); is it the same haagent version?"
    )


def _migrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="NODE", help="migrate: the destination node")
    p.add_argument(
        "--generation",
        type=int,
        help="migrate: only if the guest is still at this generation (`haagent status`); "
        "default: the generation the agent sees",
    )


def _cmd_guest_migrate(args: argparse.Namespace) -> int:
    """`haagent guest migrate NAME NODE`: the hand-over is committed; the answer comes once
    the intent committed (the migration itself then runs; `haagent status` shows it)."""
    if args.target is None:
        raise CliError("migrate takes a guest name and a destination node", EXIT_USAGE)
    if args.generation is not None and args.generation < 0:
        raise CliError("--generation: a non-negative integer", EXIT_USAGE)
    ep = _agent(args)
    path = f"/v1/guests/{quote(args.name, safe='')}/migrate"
    body: dict[str, Any] = {"node": args.target}
    if args.generation is not None:
        body["generation"] = args.generation
    doc = asyncio.run(request_json(ep, "POST", path, body=body))
    return _report_outcome(doc, f"migrate {args.name} to {args.target}")


def _cmd_guest(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _cmd_guest_migrate(args)
    if args.target is not None or args.generation is not None:
        raise CliError(f"{args.action} takes a guest name only", EXIT_USAGE)
    ep = _agent(args)
    path = f"/v1/guests/{quote(args.name, safe='')}/{args.action}"
    doc = asyncio.run(request_json(ep, "POST", path))
    return _report_outcome(doc, f"{args.action} {args.name}")


def _cmd_node(args: argparse.Namespace) -> int:
    if args.action == "confirm-fenced":
        if args.state is not None:
            raise CliError("confirm-fenced takes a node name only", EXIT_USAGE)
        by = args.by if args.by is not None else _who()
        ep = _agent(args)
        path = f"/v1/nodes/{quote(args.name, safe='')}/confirm-fenced"
        doc = asyncio.run(request_json(ep, "POST", path, body={"by": by}))
        return _report_outcome(doc, f"confirm-fenced {args.name}")
    if args.state is None or args.by is not None:
        raise CliError("maintenance takes a node name and on|off", EXIT_USAGE)
    ep = _agent(args)
    path = f"/v1/nodes/{quote(args.name, safe='')}/maintenance"
    doc = asyncio.run(request_json(ep, "POST", path, body={"on": args.state == "on"}))
    return _report_outcome(doc, f"maintenance {args.state} for {args.name}")


def _who() -> str:
    """USER@HOST of whoever runs the CLI, for the audit of a manual fence confirmation."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"[:64]


def _cmd_simulate(args: argparse.Namespace) -> int:
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
        except _SHAPE_ERRORS as exc:
            raise _shape_error(cfg.api_listen, "a what-if document", exc) from None
        print(_printable(text))
    return 0


def format_whatif(doc: dict[str, Any], source: str) -> str:
    lines = [f"what if {', '.join(doc['fail'])} failed now ({source}):"]
    if not doc["quorum_kept"]:
        lines.append("  the survivors would have no Raft majority: no guest would be recovered")
    for guest, move in doc["moves"].items():
        lines.append(f"  {guest}: {move['from']} -> {move['to']}")
    for guest, why in doc["unplaced"].items():
        lines.append(f"  {guest}: would NOT run: {why}")
    if not doc["moves"] and not doc["unplaced"]:
        lines.append("  no guest would have to move")
    lines.append(
        f"the cluster tolerates {doc['tolerated_node_failures']} node failure(s) now: "
        f"{doc['tolerated_detail']}"
    )
    return "\n".join(lines)


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
            f"{len(cfg.guests)} guests)"
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


def _cmd_status(args: argparse.Namespace) -> int:
    ep = _agent(args, admin=False)
    doc = fetch_status(ep)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    else:
        try:
            text = format_status(doc)
        except _SHAPE_ERRORS as exc:
            raise _shape_error(ep.url, "a status document", exc) from None
        print(_printable(text))
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    if not (args.since >= 0 and 0 <= args.limit <= 1000):
        raise CliError("--since must be >= 0 and --limit from 0 to 1000", EXIT_USAGE)
    ep = _agent(args, admin=False)
    path = f"/v1/events?since={args.since}&limit={args.limit}"
    doc = asyncio.run(request_json(ep, "GET", path))
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    try:
        lines = [f"{e['index']:>8}  {e['type']:<16} {e['summary']}" for e in doc["events"]]
    except _SHAPE_ERRORS as exc:
        raise _shape_error(ep.url, "an events document", exc) from None
    if doc.get("truncated"):
        lines.insert(0, "(older events left out: use --since or a larger --limit)")
    print(_printable("\n".join(lines) if lines else "no events"))
    return 0


def api_url(listen: str, tls: bool = False) -> str:
    if listen.startswith("unix:"):
        return listen
    return f"{'https' if tls else 'http'}://{listen}"


def fetch_status(ep: Endpoint, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /v1/status; raises CliError with a readable reason."""
    return asyncio.run(request_json(ep, "GET", "/v1/status", timeout_s=timeout_s))


async def request_json(
    ep: Endpoint,
    method: str,
    path: str,
    body: Any = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One request to an agent; raises CliError with a readable reason. Admin actions answer
    409 (refused) or 503 (unknown outcome) with an `outcome` document: those are returned.
    https:// is verified against `ep.cacert` (else the system's CAs), never skipped."""
    url, token = ep.url, ep.token
    connector: aiohttp.BaseConnector | None = None
    base = url
    if url.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=url[5:])
        base = "http://localhost"
    elif url.startswith("https://"):
        try:
            connector = aiohttp.TCPConnector(ssl=client_tls_context(ep.cacert))
        except (OSError, ValueError) as exc:
            raise CliError(f"--cacert: cannot load {ep.cacert}: {exc}", EXIT_USAGE) from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.request(method, base.rstrip("/") + path, headers=headers, json=body) as resp,
        ):
            status = resp.status
            data = b""
            while len(data) <= MAX_ANSWER_BYTES:
                chunk = await resp.content.read(MAX_ANSWER_BYTES + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        raise CliError(f"cannot reach the agent at {url}: {exc or type(exc).__name__}") from None
    try:
        answer = loads_json(data, max_bytes=MAX_ANSWER_BYTES, max_depth=MAX_ANSWER_DEPTH)
    except UntrustedInputError as exc:
        raise CliError(f"{url}{path}: HTTP {status}, and the answer is not usable: {exc}") from None
    if not isinstance(answer, dict):
        raise CliError(f"{url}{path}: HTTP {status}, and the answer is not a JSON object")
    if status != 200 and "outcome" not in answer:
        error = escape(str(answer.get("error", answer)), 300)
        raise CliError(f"{url}{path}: HTTP {status}: {error}")
    return answer


if __name__ == "__main__":
    sys.exit(main())
