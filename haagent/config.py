"""The per-node TOML config: loading, validation, and what the core and shell derive from it.

Every problem raises `ConfigError` naming the file, the key and what is wrong; the CLI prints it
and exits with status 2. Unknown keys are errors too: a typo such as `lease = 2` must not
silently fall back to a default on a production cluster.

The reference for every key is the README ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from haagent.agent import AgentSettings, NodeSettings
from haagent.api_access import ApiAccess, is_loopback_listen, server_tls_context
from haagent.config_guests import (
    DRBD_RESOURCE_RE,
    MAX_MEMORY_MIB,
    MAX_XML_BYTES,
    GuestConfig,
    parse_guests,
)
from haagent.config_table import (
    NAME_RE,
    ConfigError,
    Table,
    check_name,
    kind,
    path_problem,
)
from haagent.fencing.agent_runner import validate_params
from haagent.model import FenceMethod, NodeRole, StorageKind
from haagent.ports import FenceDevice
from haagent.resources.drbd_fence import DEFAULT_SOCKET as DEFAULT_DRBD_FENCE_SOCKET
from haagent.timing import (
    DEFAULT_LIMITS,
    DEFAULT_TIMING_PROFILE,
    DEFAULT_WATCHDOG_TIMEOUT_S,
    ELECTION_SLACK_S,
    TIMING_PROFILES,
    Timing,
)
from haagent.untrusted import UntrustedInputError, escape, read_small_text, show

# Names other modules and tests read from here (the config's one public face).
__all__ = [
    "DRBD_RESOURCE_RE",
    "NAME_RE",
    "SECRET_RE",
    "Config",
    "ConfigError",
    "GuestConfig",
    "NodeConfig",
    "load_config",
    "parse_config",
]

MIN_SECRET_LEN = 12
MAX_SECRET_LEN = 4096
# Secrets and tokens are visible ASCII: the API compares the token with the bytes of an HTTP
# header, and every node must read the same cluster secret byte for byte (non-ASCII text has
# several encodings and normal forms; a file of random bytes has none).
SECRET_RE = re.compile(r"[!-~]+")
MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024
# Linux: PATH_MAX counts the NUL, NAME_MAX is per component, sun_path holds 108 bytes with NUL.
MAX_SOCKET_PATH_BYTES = 107
MAX_WATCHDOG_TIMEOUT_S = 3600.0
# Cross-field rules compare the decimal numbers the file spells (0.7 + 0.2 is 0.9, not
# 0.8999999999999999), and a strict "greater than" needs this much room: a rule that keeps a
# cut-off node from being declared failed before it stopped its guests must not pass on a
# margin of one float rounding step.
MIN_MARGIN_S = Decimal("0.001")
_HOST_RE = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PORT_RE = re.compile(r"[0-9]{1,5}")
_AGENT_NAME_RE = re.compile(r"fence_[A-Za-z0-9_]{1,100}")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]*")
# A libvirt URI another host can reach: driver[+transport]://[user@]host[:port]/path[?query]
# (a local URI such as qemu:///system names the caller's own libvirtd, never this node's).
MIGRATION_URI_RE = re.compile(r"[a-z][a-z0-9]*(\+[a-z0-9]+)?://[^/@\s]+@?[^/\s]*/[!-~]*")
MAX_URI_CHARS = 512


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str  # host:port of its Raft endpoint
    role: NodeRole
    memory_mib: int
    fence_method: FenceMethod | None
    fence_levels: tuple[tuple[str, ...], ...]  # device names per level
    watchdog_timeout_s: float
    watchdog_level: bool = False  # fence = [[...], "watchdog"]: a final watchdog level
    migration_uri: str = ""  # the libvirt URI other hosts migrate guests to ("": none)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Config:
    path: Path
    cluster: str
    secret: str = field(repr=False)
    node: str
    data_dir: Path
    libvirt_uri: str | None
    api_listen: str
    api_token: str = field(repr=False)
    watchdog_device: str | None
    watchdog_standin: Path
    watchdog_standin_ok: bool
    timing: Timing
    max_concurrent_starts: int
    max_start_failures: int
    failure_reset_s: float
    max_relocations: int
    nodes: Mapping[str, NodeConfig]
    fence_devices: Mapping[str, FenceDevice] = field(repr=False)
    guests: Mapping[str, GuestConfig]
    log_level: str = "info"
    # The unix socket DRBD's fence-peer handler asks (served only where a replica lives).
    drbd_fence_socket: Path = Path(DEFAULT_DRBD_FENCE_SOCKET)
    api: ApiAccess | None = field(default=None, repr=False)
    # The `[timing] profile` the file names; None: it names none and gets the built-in default
    # (DEFAULT_TIMING_PROFILE), which a later version may change (README "Timing profiles").
    timing_profile: str | None = None

    def timing_note(self) -> tuple[bool, str]:
        """(whether an admin should act, a line saying which timing profile is in effect): a
        file that names no profile gets the built-in default, which a version may change;
        agents whose timings differ refuse each other, so naming it keeps an upgrade rolling."""
        if self.timing_profile is not None:
            return False, f"timing profile {self.timing_profile}"
        return True, (
            f"timing profile {DEFAULT_TIMING_PROFILE}, only as the built-in default: write "
            f'[timing] profile = "{DEFAULT_TIMING_PROFILE}" into every node\'s config, so that '
            "an upgrade that changes the default cannot change this cluster's timing "
            '(README "Upgrading")'
        )

    @property
    def api_access(self) -> ApiAccess:
        """Who may do what on the API (`api_token` alone: the admin token, as always)."""
        return self.api if self.api is not None else ApiAccess(self.api_token)

    @property
    def me(self) -> NodeConfig:
        return self.nodes[self.node]

    def agent_settings(self) -> AgentSettings:
        t = self.timing
        return AgentSettings(
            cluster=self.cluster,
            node=self.node,
            nodes={
                n.name: NodeSettings(
                    role=n.role,
                    memory_mib=n.memory_mib,
                    fence_method=n.fence_method,
                    watchdog_timeout_s=n.watchdog_timeout_s,
                    watchdog_level=n.watchdog_level,
                    migration_uri=n.migration_uri,
                )
                for n in self.nodes.values()
            },
            guests=tuple(g.spec for g in self.guests.values()),
            heartbeat_s=t.heartbeat_s,
            lease_s=t.lease_s,
            failure_timeout_s=t.failure_timeout_s,
            stop_grace_s=t.stop_grace_s,
            fence_timeout_s=t.fence_timeout_s,
            fence_retry_initial_s=t.fence_retry_initial_s,
            fence_retry_max_s=t.fence_retry_max_s,
            watchdog_margin_s=t.watchdog_margin_s,
            commit_timeout_s=t.commit_timeout_s,
            start_timeout_s=t.start_timeout_s,
            shutdown_timeout_s=t.shutdown_timeout_s,
            max_concurrent_starts=self.max_concurrent_starts,
            max_start_failures=self.max_start_failures,
            failure_reset_s=self.failure_reset_s,
            max_relocations=self.max_relocations,
            initial_placement_wait_s=t.initial_placement_wait_s,
            network_hold_down_s=t.network_hold_down_s,
            migration_timeout_s=t.migration_timeout_s,
        )

    def drbd_resources(self) -> tuple[str, ...]:
        """The DRBD resources with a replica on this node (sorted): what its watcher and fence
        socket serve. Empty on a witness and on hosts of shared storage only."""
        return tuple(
            sorted(
                g.spec.resource
                for g in self.guests.values()
                if g.spec.storage is StorageKind.DRBD and self.node in g.spec.replica_nodes
            )
        )

    def fence_levels(self, node: str) -> list[list[FenceDevice]]:
        levels = self.nodes[node].fence_levels
        return [[self.fence_devices[d] for d in level] for level in levels]

    def guest_xml(self, guest: str) -> str | None:
        gc = self.guests.get(guest)
        if gc is None or gc.xml_path is None:
            return None
        # Read each time (an admin may update it), with the same limits as at check time:
        # a FIFO or device here must not block the daemon. Raises UntrustedInputError.
        return read_small_text(gc.xml_path, MAX_XML_BYTES)


# --- reading ---------------------------------------------------------------------------------


def _socket_problem(value: str) -> str | None:
    """Why `value` cannot be the path of a unix socket this node listens on, or None."""
    problem = path_problem(value)
    if problem:
        return problem
    if not value.startswith("/"):
        return f"needs an absolute socket path, got {show(value)}"
    if len(value.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH_BYTES:
        return f"a socket path may be at most {MAX_SOCKET_PATH_BYTES} bytes long"
    return None


def _socket_path(t: Table, name: str, default: str) -> str:
    value = t.string(name, default)
    problem = _socket_problem(value)
    if problem:
        raise t.error(name, problem)
    return value


def _secret(t: Table, name: str, base: Path) -> str:
    """Read `name` or `name_file` (relative to the config's folder): 12 to 4096 visible ASCII
    characters; a file's surrounding blanks and final newline do not count."""
    file_key = f"{name}_file"
    if t.has(name) and t.has(file_key):
        raise t.error(name, f"set either {name} or {file_key}, not both")
    if t.has(file_key):
        path = t.path(file_key, base)
        try:
            value = read_small_text(path, MAX_SECRET_FILE_BYTES).strip()
        except UntrustedInputError as exc:
            raise t.error(file_key, str(exc)) from None
        key = file_key
    elif t.has(name):
        value, key = t.string(name), name
    else:
        raise t.error(name, f"missing: set {name} or {file_key} (required, no default)")
    if len(value) < MIN_SECRET_LEN:
        raise t.error(key, f"too short: at least {MIN_SECRET_LEN} characters")
    if len(value) > MAX_SECRET_LEN:
        raise t.error(key, f"too long: at most {MAX_SECRET_LEN} characters")
    if not SECRET_RE.fullmatch(value):
        raise t.error(
            key,
            "may hold only visible ASCII characters (! to ~, no blanks, no control "
            "characters, no other bytes), e.g. the output of `openssl rand -hex 32`",
        )
    return value


def _host_port(t: Table, name: str, value: str) -> tuple[str, int]:
    """Split "host:port" ("[v6]:port" for IPv6); the port is ASCII digits 1..65535 and the
    host an IP address or a DNS name."""
    host, sep, port = value.rpartition(":")
    bad = t.error(name, f"must be host:port with a port 1-65535, got {show(value)}")
    if not sep or not host or not _PORT_RE.fullmatch(port) or not 0 < int(port) < 65536:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad from None
    elif not (_is_ipv4(host) or _HOST_RE.fullmatch(host)):
        raise bad
    return host, int(port)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _address(t: Table, name: str) -> str:
    value = t.string(name, required=True)
    _host_port(t, name, value)
    return value


def _raft_address(t: Table, name: str) -> tuple[str, tuple[str, int]]:
    """A Raft endpoint: an IP address (no DNS name: finding one's peers during a failure
    must not depend on a resolver) and a port. Returns the address as written and its
    canonical form, so one endpoint spelt two ways ("[::1]" and "[0::1]") is one."""
    value = t.string(name, required=True)
    host, port = _host_port(t, name, value)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise t.error(
            name, f"must be an IP address and a port (no DNS names), got {show(value)}"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise t.error(name, f"must be this node's own unicast address, got {show(value)}")
    return value, (str(ip), port)


def load_config(path: str | Path) -> Config:
    """Read and validate one node's config file. Raises ConfigError, and nothing else for
    anything a file can hold."""
    path = Path(path)
    try:
        text = read_small_text(path, MAX_CONFIG_BYTES)
    except UntrustedInputError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        raise ConfigError(path, "", "not valid TOML: nested too deeply") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    base = path.resolve().parent
    root = Table(path, "", dict(data))

    cluster_t = root.table("cluster", required=True)
    cluster = cluster_t.string("name", required=True)
    check_name(cluster_t, "name", cluster, "cluster name")
    secret = _secret(cluster_t, "secret", base)
    cluster_t.done()

    timing, timing_profile = _timing(root.table("timing"))

    placement_t = root.table("placement")
    max_starts = placement_t.integer(
        "max_concurrent_starts", DEFAULT_LIMITS.max_concurrent_starts, minimum=1
    )
    max_failures = placement_t.integer(
        "max_start_failures", DEFAULT_LIMITS.max_start_failures, minimum=1
    )
    failure_reset = placement_t.number("failure_reset_s", DEFAULT_LIMITS.failure_reset_s)
    max_relocations = placement_t.integer(
        "max_relocations", DEFAULT_LIMITS.max_relocations, minimum=0
    )
    placement_t.done()

    devices = _fence_devices(root.table("fence_devices"))
    nodes = _nodes(root.table("nodes", required=True), devices)

    local_t = root.table("local", required=True)
    node = local_t.string("node", required=True)
    if node not in nodes:
        raise local_t.error(
            "node", f"{show(node)} is not one of [nodes]: {', '.join(sorted(nodes))}"
        )
    data_dir = local_t.path("data_dir", base)
    libvirt_uri = local_t.string("libvirt_uri") if local_t.has("libvirt_uri") else None
    if nodes[node].role is NodeRole.HYPERVISOR and not libvirt_uri:
        raise local_t.error("libvirt_uri", "missing (required on a hypervisor)")
    if libvirt_uri is not None and not (
        len(libvirt_uri) <= 1024 and _URI_RE.fullmatch(libvirt_uri)
    ):
        raise local_t.error(
            "libvirt_uri", f"must be a libvirt URI such as qemu:///system, got {show(libvirt_uri)}"
        )
    api_listen = local_t.string("api_listen", required=True)
    if api_listen.startswith("unix:"):
        problem = _socket_problem(api_listen[5:])
        if problem:
            raise local_t.error("api_listen", f"unix: {problem}")
    else:
        _address(local_t, "api_listen")
    api_token = _secret(local_t, "api_token", base)
    api = _api_access(local_t, base, api_listen, api_token)
    watchdog_device: str | None = None
    if local_t.has("watchdog_device"):
        watchdog_device = str(local_t.path("watchdog_device", base))
        # Opening it for writing arms it, and would block forever on a FIFO: anything that
        # exists here must be a character device. (A missing one means the stand-in.)
        try:
            mode = os.stat(watchdog_device).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISCHR(mode):
            raise local_t.error(
                "watchdog_device", f"{show(watchdog_device)} is not a character device"
            )
    standin = local_t.path("watchdog_standin", base, str(data_dir / "watchdog.standin"))
    standin_ok = _flag(local_t, "watchdog_standin_ok", False)
    log_level = local_t.string("log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise local_t.error("log_level", "must be one of debug, info, warning, error")
    fence_socket = _socket_path(local_t, "drbd_fence_socket", DEFAULT_DRBD_FENCE_SOCKET)
    local_t.done()

    hypervisors = [n for n, c in nodes.items() if c.role is NodeRole.HYPERVISOR]
    guests = parse_guests(root.table("guests"), hypervisors, base)
    root.done()

    return Config(
        path=path,
        cluster=cluster,
        secret=secret,
        node=node,
        data_dir=data_dir,
        libvirt_uri=libvirt_uri,
        api_listen=api_listen,
        api_token=api_token,
        watchdog_device=watchdog_device,
        watchdog_standin=standin,
        watchdog_standin_ok=standin_ok,
        timing=timing,
        max_concurrent_starts=max_starts,
        max_start_failures=max_failures,
        failure_reset_s=failure_reset,
        max_relocations=max_relocations,
        nodes=nodes,
        fence_devices=devices,
        guests=guests,
        log_level=log_level,
        drbd_fence_socket=Path(fence_socket),
        api=api,
        timing_profile=timing_profile,
    )


def _flag(t: Table, name: str, default: bool) -> bool:
    value = t.raw(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise t.error(name, "must be true or false")
    return value


def _api_access(t: Table, base: Path, listen: str, admin_token: str) -> ApiAccess:
    """The API's tokens and TLS (haagent.api_access). A non-loopback TCP listener without
    TLS is refused unless `api_plaintext_ok`: tokens would cross the network in clear."""
    read_token = None
    if t.has("api_read_token") or t.has("api_read_token_file"):
        read_token = _secret(t, "api_read_token", base)
        if read_token == admin_token:
            name = "api_read_token_file" if t.has("api_read_token_file") else "api_read_token"
            raise t.error(name, "must differ from api_token (the admin token)")
    cert = t.path("api_tls_cert_file", base) if t.has("api_tls_cert_file") else None
    key = t.path("api_tls_key_file", base) if t.has("api_tls_key_file") else None
    if (cert is None) != (key is None):
        raise t.error(
            "api_tls_key_file" if key is None else "api_tls_cert_file",
            "set both api_tls_cert_file and api_tls_key_file, or neither",
        )
    if cert is not None and key is not None:
        if listen.startswith("unix:"):
            raise t.error("api_tls_cert_file", "TLS needs a TCP api_listen, not a unix socket")
        try:
            server_tls_context(cert, key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            why = escape(str(exc) or type(exc).__name__, 200)
            raise t.error(
                "api_tls_cert_file", f"cannot load the certificate and key: {why}"
            ) from None
    plaintext_ok = _flag(t, "api_plaintext_ok", False)
    if cert is None and not plaintext_ok and not is_loopback_listen(listen):
        raise t.error(
            "api_listen",
            f"{show(listen)} is not a loopback address, and without TLS the API tokens would "
            "cross the network in clear: set api_tls_cert_file and api_tls_key_file (README "
            '"The API"), listen on 127.0.0.1 or a unix: socket, or set api_plaintext_ok = true '
            "if a TLS proxy or a private network protects it",
        )
    return ApiAccess(
        admin_token=admin_token,
        read_token=read_token,
        open_reads=_flag(t, "api_open_reads", False),
        open_metrics=_flag(t, "api_open_metrics", True),
        tls_cert_file=cert,
        tls_key_file=key,
        plaintext_ok=plaintext_ok,
    )


def _exact(seconds: float) -> Decimal:
    """The decimal number a config spells for `seconds` (the shortest repr of the float)."""
    return Decimal(repr(seconds))


def _timing(t: Table) -> tuple[Timing, str | None]:
    """The `[timing]` table, and the profile it names (None: it names none, the default)."""
    named = t.has("profile")
    profile = t.string("profile", DEFAULT_TIMING_PROFILE)
    if profile not in TIMING_PROFILES:
        raise t.error("profile", f"must be one of {', '.join(sorted(TIMING_PROFILES))}")
    d = TIMING_PROFILES[profile]
    timing = Timing(**{name: t.number(name, getattr(d, name)) for name in d.__dataclass_fields__})
    t.done()
    x = {name: _exact(getattr(timing, name)) for name in d.__dataclass_fields__}
    if x["lease_s"] < 3 * x["heartbeat_s"]:
        raise t.error(
            "lease_s",
            f"must be at least 3 x heartbeat_s ({3 * x['heartbeat_s']}s) "
            "so one slow commit does not lose the lease",
        )
    if x["failure_timeout_s"] < x["lease_s"] + x["stop_grace_s"] + MIN_MARGIN_S:
        raise t.error(
            "failure_timeout_s",
            f"must exceed lease_s + stop_grace_s ({x['lease_s'] + x['stop_grace_s']}s) by at "
            f"least {MIN_MARGIN_S}s: a node cut off must have stopped its guests before "
            "anyone may declare it failed",
        )
    if x["election_timeout_max_s"] < x["election_timeout_min_s"] + MIN_MARGIN_S:
        raise t.error(
            "election_timeout_max_s",
            f"must exceed election_timeout_min_s by at least {MIN_MARGIN_S}s",
        )
    slack = Decimal(repr(ELECTION_SLACK_S))
    if x["election_timeout_max_s"] + slack > x["lease_s"] - x["heartbeat_s"]:
        raise t.error(
            "election_timeout_max_s",
            f"must be at most lease_s - heartbeat_s - {slack}s "
            f"({x['lease_s'] - x['heartbeat_s'] - slack}s): when the leader dies a node's "
            "last committed heartbeat may be a period old, and the election plus its next "
            "heartbeat's commit must fit in the rest of its lease",
        )
    if x["fence_retry_max_s"] < x["fence_retry_initial_s"]:
        raise t.error("fence_retry_max_s", "must be at least fence_retry_initial_s")
    return timing, profile if named else None


def _fence_devices(t: Table) -> dict[str, FenceDevice]:
    devices: dict[str, FenceDevice] = {}
    for name in list(t.data):
        check_name(t, name, name, "fence device name")
        dt = t.table(name)
        agent = dt.string("agent", required=True)
        if agent.startswith("/"):
            problem = path_problem(agent)
            if problem:
                raise dt.error("agent", problem)
        elif not _AGENT_NAME_RE.fullmatch(agent):
            raise dt.error(
                "agent", f"must be a fence_* agent name or an absolute path, got {show(agent)}"
            )
        params_t = dt.table("params")
        params: dict[str, str] = {}
        for key in list(params_t.data):
            value = params_t.raw(key)
            if key in ("action", "nodename"):
                raise params_t.error(key, "is set by haagent, do not configure it")
            if isinstance(value, bool):
                params[key] = "1" if value else "0"
            elif isinstance(value, float) and not math.isfinite(value):
                raise params_t.error(key, f"must be a finite number, got {value}")
            elif isinstance(value, (str, int, float)):
                params[key] = str(value)
            else:
                raise params_t.error(key, f"must be a string, number or boolean, got {kind(value)}")
        # The very check the fence runner makes before every call, so a device that passes
        # here is never refused when its node has to be fenced.
        for action in ("off", "status"):
            problem = validate_params(action, params)
            if problem is not None:
                raise dt.error("params", problem)
        dt.done()
        devices[name] = FenceDevice(name=name, agent=agent, params=params)
    return devices


def _nodes(t: Table, devices: Mapping[str, FenceDevice]) -> dict[str, NodeConfig]:
    nodes: dict[str, NodeConfig] = {}
    addresses: dict[tuple[str, int], str] = {}
    for name in list(t.data):
        check_name(t, name, name, "node name")
        nt = t.table(name)
        address, endpoint = _raft_address(nt, "address")
        if endpoint in addresses:
            raise nt.error(
                "address", f"{show(address)} is also the address of {addresses[endpoint]}"
            )
        addresses[endpoint] = name
        role_s = nt.string("role", "hypervisor")
        try:
            role = NodeRole(role_s)
        except ValueError:
            raise nt.error("role", f"must be hypervisor or witness, got {show(role_s)}") from None
        memory = nt.integer("memory_mib", 0, minimum=0, maximum=MAX_MEMORY_MIB)
        method: FenceMethod | None = None
        levels: tuple[tuple[str, ...], ...] = ()
        watchdog_level = False
        # The watchdog resets a host whose agent hangs, in either fencing mode; with
        # fence = "watchdog" it is also what the leader waits for before recovering.
        watchdog_timeout = nt.number(
            "watchdog_timeout_s", DEFAULT_WATCHDOG_TIMEOUT_S, maximum=MAX_WATCHDOG_TIMEOUT_S
        )
        fence = nt.raw("fence")
        if role is NodeRole.WITNESS:
            if fence is not None:
                raise nt.error("fence", "a witness runs no guests and is never fenced")
            if memory:
                raise nt.error("memory_mib", "a witness runs no guests")
        else:
            if memory <= 0:
                raise nt.error("memory_mib", "missing or 0 (required on a hypervisor)")
            if fence == "watchdog":
                method = FenceMethod.WATCHDOG
            elif isinstance(fence, list) and fence:
                method = FenceMethod.AGENT
                parsed: list[tuple[str, ...]] = []
                if len(fence) > 1 and fence[-1] == "watchdog":
                    # Power levels first, then the watchdog deadline once they have failed.
                    watchdog_level = True
                    fence = fence[:-1]
                for i, level in enumerate(fence, 1):
                    if level == "watchdog":
                        raise nt.error(
                            "fence",
                            f'level {i}: "watchdog" can only be the last level, after at '
                            'least one power level (or fence = "watchdog" alone)',
                        )
                    if (
                        not isinstance(level, list)
                        or not level
                        or not all(isinstance(d, str) for d in level)
                    ):
                        raise nt.error(
                            "fence", f"level {i} must be a non-empty list of device names"
                        )
                    for d in level:
                        if d not in devices:
                            raise nt.error(
                                "fence", f"level {i} names unknown fence device {show(d)}"
                            )
                    parsed.append(tuple(level))
                levels = tuple(parsed)
            else:
                raise nt.error(
                    "fence",
                    'missing: a list of levels of [fence_devices] names, e.g. [["bmc-n1"]], '
                    'or "watchdog" (a hypervisor must be fenceable)',
                )
        migration_uri = _migration_uri(nt, role)
        nt.done()
        nodes[name] = NodeConfig(
            name,
            address,
            role,
            memory,
            method,
            levels,
            watchdog_timeout,
            watchdog_level,
            migration_uri,
        )
    if not nodes:
        raise ConfigError(t.file, t.prefix, "no nodes configured")
    if len(nodes) == 2:
        raise ConfigError(
            t.file,
            t.prefix,
            "two nodes cannot keep a majority when one fails: add a witness node "
            '(role = "witness") as the third voter',
        )
    return nodes


def _migration_uri(nt: Table, role: NodeRole) -> str:
    """`migration_uri`: how other hosts' libvirtd reach this node's for live migration."""
    uri = nt.string("migration_uri", "")
    if not uri:
        return ""
    if role is NodeRole.WITNESS:
        raise nt.error("migration_uri", "a witness runs no guests and takes no migration")
    if len(uri) > MAX_URI_CHARS or not MIGRATION_URI_RE.fullmatch(uri):
        raise nt.error(
            "migration_uri",
            f"must be a remote libvirt URI such as qemu+tcp://hv2.example/system (at most "
            f"{MAX_URI_CHARS} characters, a host name, no blanks), got {show(uri, 80)}",
        )
    return uri
