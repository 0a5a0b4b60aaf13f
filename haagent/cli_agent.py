"""How the CLI reaches an agent: the endpoint (--config, --url, --token[-file], --cacert), one
JSON request with bounded answers, and the CLI's error type and exit codes (`haagent.cli`
documents them; every command module raises `CliError`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from haagent import cli_admin
from haagent.api_access import client_tls_context
from haagent.config import SECRET_RE, Config, load_config
from haagent.untrusted import UntrustedInputError, escape, loads_json, read_small_text

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a status document of 10,000 guests is ~5 MB
MAX_ANSWER_DEPTH = 32


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def agent_args(p: argparse.ArgumentParser) -> None:
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


def agent(args: argparse.Namespace, admin: bool = True) -> Endpoint:
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


def post(ep: Endpoint) -> cli_admin.Request:
    return lambda path, body: request_json(ep, "POST", path, body=body)


def who() -> str:
    """USER@HOST of whoever runs the CLI, for the audit of a manual fence confirmation."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}"[:64]


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
