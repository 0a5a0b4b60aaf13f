"""The `haagent` command.

    haagent run --config FILE            run the agent (what systemd starts)
    haagent check-config FILE...         validate config files, exit 2 on the first error
    haagent status [--config FILE | --url URL --token T] [--json]
    haagent local up|down|demo|status    a 3-node cluster on this machine (see README)

Exit codes: 0 success, 1 operation failed (e.g. the agent is unreachable), 2 bad usage or an
invalid config. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from haagent import __version__
from haagent.config import ConfigError, load_config
from haagent.localcluster.cli import add_local_parser
from haagent.status import format_status

EXIT_FAILED = 1
EXIT_USAGE = 2


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
        print(f"haagent: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


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
    check.set_defaults(func=_cmd_check)

    status = sub.add_parser("status", help="show the cluster as one agent sees it")
    status.add_argument("--config", "-c", type=Path, help="read URL and token from this config")
    status.add_argument("--url", help="agent API, e.g. http://127.0.0.1:8401 or unix:/path")
    status.add_argument("--token", help="API token (default: from --config)")
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.set_defaults(func=_cmd_status)

    add_local_parser(sub)
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from haagent.daemon import run_daemon

    return run_daemon(config)


def _cmd_check(args: argparse.Namespace) -> int:
    for f in args.files:
        cfg = load_config(f)
        print(
            f"{f}: ok (cluster {cfg.cluster}, node {cfg.node}, {len(cfg.nodes)} nodes, "
            f"{len(cfg.guests)} guests)"
        )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    url, token = args.url, args.token
    if args.config is not None:
        cfg = load_config(args.config)
        url = url or api_url(cfg.api_listen)
        token = token or cfg.api_token
    if not url or not token:
        raise CliError("give --config FILE, or --url and --token", EXIT_USAGE)
    doc = fetch_status(url, token)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
    else:
        print(format_status(doc))
    return 0


def api_url(listen: str) -> str:
    return listen if listen.startswith("unix:") else f"http://{listen}"


def fetch_status(url: str, token: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /v1/status; raises CliError with a readable reason."""
    return asyncio.run(fetch_json(url, "/v1/status", token, timeout_s))


async def fetch_json(url: str, path: str, token: str | None, timeout_s: float) -> dict[str, Any]:
    connector: aiohttp.BaseConnector | None = None
    base = url
    if url.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=url[5:])
        base = "http://localhost"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.get(base.rstrip("/") + path, headers=headers) as resp,
        ):
            body = await resp.json(content_type=None)
            if resp.status != 200 and path != "/v1/health":
                raise CliError(f"{url}{path}: HTTP {resp.status}: {body.get('error', body)}")
            if not isinstance(body, dict):
                raise CliError(f"{url}{path}: unexpected answer")
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise CliError(f"cannot reach the agent at {url}: {exc or type(exc).__name__}") from None


if __name__ == "__main__":
    sys.exit(main())
