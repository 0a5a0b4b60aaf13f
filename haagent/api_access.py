"""Who may do what on the HTTP API, and the listener's TLS.

Access levels, lowest first (`required_level` maps a request to one):

* ``open``: `GET /v1/health`, always without a token (load balancers, systemd checks).
* ``metrics``: `GET /metrics`; without a token only while `open_metrics` (the default, so
  existing scrapers keep working); otherwise the read or the admin token.
* ``read``: every other `GET`/`HEAD` (status, events, what-if, the OpenAPI document); the read
  or the admin token, or nothing at all when `open_reads` was configured explicitly.
* ``admin``: everything else (the `POST` verbs that change the cluster): the admin token only.
  The read token gets a 403 that says so, not a 401, so a misconfigured client learns why.

The admin token is the single `api_token` of configs written before read tokens existed: its
meaning did not change (it guarded everything but health and metrics, it still does), so old
configs keep working unchanged (README "The API").

Tokens are compared as bytes, in constant time, after hashing both sides (not even the
length leaks); the header may hold any bytes.

TLS: a listener on anything but a loopback address or a unix socket must have a certificate
and key (`api_tls_cert_file`, `api_tls_key_file`), unless `api_plaintext_ok` says the
operator knows (a TLS-terminating proxy in front, say); the config loader refuses otherwise,
so `haagent check-config` catches it before a node starts.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a client that never finishes its handshake frees its slot


class Level(enum.IntEnum):
    OPEN = 0
    METRICS = 1
    READ = 2
    ADMIN = 3


@dataclass(frozen=True)
class ApiAccess:
    """The API's access settings from `[local]` (see the module docstring)."""

    admin_token: str = field(repr=False)
    read_token: str | None = field(default=None, repr=False)
    open_reads: bool = False
    open_metrics: bool = True
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    plaintext_ok: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def required_level(method: str, path: str) -> Level:
    """The level a request needs. Unknown paths need `read` (GET) or `admin` (anything else),
    so a stranger learns nothing about which routes exist."""
    if path == "/v1/health":
        return Level.OPEN
    if method in ("GET", "HEAD"):
        return Level.METRICS if path == "/metrics" else Level.READ
    return Level.ADMIN


def bearer_token(raw_headers: tuple[tuple[bytes, bytes], ...]) -> bytes | None:
    """The token of exactly one `Authorization: Bearer <token>` header, as bytes, else None."""
    values = [v for k, v in raw_headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, given = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return given.strip()


class Gate:
    """Decides one request: None (serve it) or (status, message) to refuse it with."""

    def __init__(self, access: ApiAccess) -> None:
        self.access = access
        self._admin = hashlib.sha256(access.admin_token.encode()).digest()
        self._read = (
            hashlib.sha256(access.read_token.encode()).digest()
            if access.read_token is not None
            else None
        )

    def granted(self, token: bytes | None) -> Level:
        """The highest level a token grants (no token or a wrong one: only the open ones)."""
        a = self.access
        base = Level.READ if a.open_reads else Level.METRICS if a.open_metrics else Level.OPEN
        if token is None:
            return base
        given = hashlib.sha256(token).digest()
        # Both comparisons always run: which one matched must not show in the timing.
        is_admin = hmac.compare_digest(given, self._admin)
        is_read = self._read is not None and hmac.compare_digest(given, self._read)
        if is_admin:
            return Level.ADMIN
        return max(base, Level.READ) if is_read else base

    def check(self, method: str, path: str, token: bytes | None) -> tuple[int, str] | None:
        need = required_level(method, path)
        have = self.granted(token)
        if have >= need:
            return None
        if token is not None and have >= Level.READ and self._matches_read(token):
            return 403, "the read token cannot change anything: use the admin token"
        what = "admin" if need is Level.ADMIN else "read or admin"
        return 401, f"missing or wrong API token (Authorization: Bearer <{what} token>)"

    def _matches_read(self, token: bytes) -> bool:
        return self._read is not None and hmac.compare_digest(
            hashlib.sha256(token).digest(), self._read
        )


def is_loopback_listen(listen: str) -> bool:
    """Is `api_listen` a unix socket or a loopback IP (only this host can connect)?"""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with the certificate chain and key loaded, TLS 1.2 or newer.
    Raises ssl.SSLError or OSError when they do not load (wrong files, key does not match)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The CLI's context: verifies the agent's certificate against `ca_file` (a private CA or
    the agent's self-signed certificate itself), or the system's CAs when None."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
