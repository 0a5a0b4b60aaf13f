"""The per-node TOML config: loading, validation, and what the core and shell derive from it.

Every problem raises `ConfigError` naming the file, the key and what is wrong; the CLI prints it
and exits with status 2. Unknown keys are errors too: a typo such as `lease = 2` must not
silently fall back to a default on a production cluster.

The reference for every key is the README ("Configuration"); keep the two in step.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haagent.agent import AgentSettings, NodeSettings
from haagent.model import FenceMethod, GuestSpec, NodeRole, StorageKind
from haagent.ports import FenceDevice

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_SECRET_LEN = 12


class ConfigError(ValueError):
    """An invalid config file. `str()` reads "FILE: KEY: what is wrong"."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = str(file)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Timing:
    """The defaults are the "robust" profile (see TIMING_PROFILES)."""

    heartbeat_s: float = 0.2
    lease_s: float = 3.0
    failure_timeout_s: float = 4.0
    stop_grace_s: float = 0.5
    fence_timeout_s: float = 30.0
    fence_retry_initial_s: float = 1.0
    fence_retry_max_s: float = 30.0
    watchdog_margin_s: float = 1.0
    commit_timeout_s: float = 3.0
    start_timeout_s: float = 60.0
    shutdown_timeout_s: float = 60.0
    election_timeout_min_s: float = 1.0
    election_timeout_max_s: float = 2.0
    initial_placement_wait_s: float = 5.0


# `[timing] profile` picks the defaults of the other timing keys; keys set explicitly win.
# "robust" (the default) keeps every healthy node's lease with 5 % random frame loss and both
# cores saturated (benchmarks/soak.py): a lease outlives a ~2 s TCP retransmission stall. It
# costs failover speed: a dead node is declared failed after 4 s instead of 1.4 s. "fast" is
# for clean, lightly loaded networks. Measured figures in README.md ("Timing profiles").
TIMING_PROFILES: Mapping[str, Timing] = {
    "robust": Timing(),
    "fast": Timing(
        heartbeat_s=0.1,
        lease_s=1.0,
        failure_timeout_s=1.4,
        stop_grace_s=0.3,
        commit_timeout_s=2.0,
        election_timeout_min_s=0.3,
        election_timeout_max_s=0.6,
    ),
}
DEFAULT_TIMING_PROFILE = "robust"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str  # host:port of its Raft endpoint
    role: NodeRole
    memory_mib: int
    fence_method: FenceMethod | None
    fence_levels: tuple[tuple[str, ...], ...]  # device names per level
    watchdog_timeout_s: float

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class GuestConfig:
    spec: GuestSpec
    xml_path: Path | None


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
        )

    def fence_levels(self, node: str) -> list[list[FenceDevice]]:
        levels = self.nodes[node].fence_levels
        return [[self.fence_devices[d] for d in level] for level in levels]

    def guest_xml(self, guest: str) -> str | None:
        gc = self.guests.get(guest)
        if gc is None or gc.xml_path is None:
            return None
        return gc.xml_path.read_text()


# --- reading ---------------------------------------------------------------------------------


class _Table:
    """A TOML table being read; remembers which keys were used so leftovers are reported."""

    def __init__(self, file: Path, prefix: str, data: Any) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(file, prefix, "must be a table")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def table(self, name: str, required: bool = False) -> _Table:
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required section)")
            return _Table(self.file, self.key(name), {})
        return _Table(self.file, self.key(name), self.raw(name))

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            if required or default is None:
                raise self.error(name, "missing (required)")
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_kind(value)}")
        return value

    def number(self, name: str, default: float, *, positive: bool = True) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"must be a number of seconds, got {_kind(value)}")
        if positive and value <= 0:
            raise self.error(name, f"must be greater than 0, got {value}")
        return float(value)

    def integer(self, name: str, default: int | None = None, *, minimum: int = 0) -> int:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.error(name, "missing (required)")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_kind(value)}")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def names(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of node names")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling; see the README)")


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _secret(t: _Table, name: str, base: Path) -> str:
    """Read `name` or `name_file` (relative to the config's folder)."""
    file_key = f"{name}_file"
    if t.has(name) and t.has(file_key):
        raise t.error(name, f"set either {name} or {file_key}, not both")
    if t.has(file_key):
        path = base / t.string(file_key)
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise t.error(file_key, f"cannot read {path}: {exc.strerror}") from None
        key = file_key
    elif t.has(name):
        value, key = t.string(name), name
    else:
        raise t.error(name, f"missing: set {name} or {file_key} (required, no default)")
    if len(value) < MIN_SECRET_LEN:
        raise t.error(key, f"too short: at least {MIN_SECRET_LEN} characters")
    return value


def _address(t: _Table, name: str) -> str:
    value = t.string(name, required=True)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise t.error(name, f"must be host:port, got {value!r}")
    return value


def _check_name(t: _Table, key: str, value: str, what: str) -> None:
    if not NAME_RE.match(value):
        raise t.error(key, f"{what} {value!r} must match {NAME_RE.pattern}")


def load_config(path: str | Path) -> Config:
    """Read and validate one node's config file. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    base = path.resolve().parent
    root = _Table(path, "", dict(data))

    cluster_t = root.table("cluster", required=True)
    cluster = cluster_t.string("name", required=True)
    _check_name(cluster_t, "name", cluster, "cluster name")
    secret = _secret(cluster_t, "secret", base)
    cluster_t.done()

    timing = _timing(root.table("timing"))

    placement_t = root.table("placement")
    max_starts = placement_t.integer("max_concurrent_starts", 4, minimum=1)
    max_failures = placement_t.integer("max_start_failures", 3, minimum=1)
    failure_reset = placement_t.number("failure_reset_s", 600.0)
    max_relocations = placement_t.integer("max_relocations", 2, minimum=0)
    placement_t.done()

    devices = _fence_devices(root.table("fence_devices"))
    nodes = _nodes(root.table("nodes", required=True), devices)

    local_t = root.table("local", required=True)
    node = local_t.string("node", required=True)
    if node not in nodes:
        raise local_t.error("node", f"{node!r} is not one of [nodes]: {', '.join(sorted(nodes))}")
    data_dir = base / local_t.string("data_dir", required=True)
    libvirt_uri = local_t.string("libvirt_uri") if local_t.has("libvirt_uri") else None
    if nodes[node].role is NodeRole.HYPERVISOR and not libvirt_uri:
        raise local_t.error("libvirt_uri", "missing (required on a hypervisor)")
    api_listen = local_t.string("api_listen", required=True)
    if api_listen.startswith("unix:"):
        if not api_listen[5:].startswith("/"):
            raise local_t.error("api_listen", "unix: needs an absolute socket path")
    else:
        _address(local_t, "api_listen")
    api_token = _secret(local_t, "api_token", base)
    watchdog_device = local_t.string("watchdog_device") if local_t.has("watchdog_device") else None
    standin = base / local_t.string("watchdog_standin", str(data_dir / "watchdog.standin"))
    standin_ok = local_t.raw("watchdog_standin_ok")
    if standin_ok is None:
        standin_ok = False
    elif not isinstance(standin_ok, bool):
        raise local_t.error("watchdog_standin_ok", "must be true or false")
    log_level = local_t.string("log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise local_t.error("log_level", "must be one of debug, info, warning, error")
    local_t.done()

    guests = _guests(root.table("guests"), nodes, base)
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
    )


def _timing(t: _Table) -> Timing:
    profile = t.string("profile", DEFAULT_TIMING_PROFILE)
    if profile not in TIMING_PROFILES:
        raise t.error("profile", f"must be one of {', '.join(sorted(TIMING_PROFILES))}")
    d = TIMING_PROFILES[profile]
    timing = Timing(**{name: t.number(name, getattr(d, name)) for name in d.__dataclass_fields__})
    t.done()
    if timing.lease_s < 3 * timing.heartbeat_s:
        raise t.error(
            "lease_s",
            f"must be at least 3 x heartbeat_s ({3 * timing.heartbeat_s}s) "
            "so one slow commit does not lose the lease",
        )
    if timing.failure_timeout_s <= timing.lease_s + timing.stop_grace_s:
        raise t.error(
            "failure_timeout_s",
            f"must exceed lease_s + stop_grace_s ({timing.lease_s + timing.stop_grace_s}s): "
            "a node cut off must have stopped its guests before anyone may declare it failed",
        )
    if timing.election_timeout_min_s >= timing.election_timeout_max_s:
        raise t.error("election_timeout_max_s", "must exceed election_timeout_min_s")
    if timing.election_timeout_max_s >= timing.lease_s:
        raise t.error(
            "election_timeout_max_s",
            f"must be below lease_s ({timing.lease_s}s): a leader election "
            "must not cost every node its lease",
        )
    if timing.fence_retry_max_s < timing.fence_retry_initial_s:
        raise t.error("fence_retry_max_s", "must be at least fence_retry_initial_s")
    return timing


def _fence_devices(t: _Table) -> dict[str, FenceDevice]:
    devices: dict[str, FenceDevice] = {}
    for name in list(t.data):
        _check_name(t, name, name, "fence device name")
        dt = t.table(name)
        agent = dt.string("agent", required=True)
        if not re.match(r"^(/[^\0]+|fence_[A-Za-z0-9_]+)$", agent):
            raise dt.error(
                "agent", f"must be a fence_* agent name or an absolute path, got {agent!r}"
            )
        params_t = dt.table("params")
        params: dict[str, str] = {}
        for key in list(params_t.data):
            value = params_t.raw(key)
            if key in ("action", "nodename"):
                raise params_t.error(key, "is set by haagent, do not configure it")
            if isinstance(value, bool):
                params[key] = "1" if value else "0"
            elif isinstance(value, (str, int, float)):
                params[key] = str(value)
            else:
                raise params_t.error(
                    key, f"must be a string, number or boolean, got {_kind(value)}"
                )
            if "\n" in params[key]:
                raise params_t.error(key, "must not contain a newline")
        dt.done()
        devices[name] = FenceDevice(name=name, agent=agent, params=params)
    return devices


def _nodes(t: _Table, devices: Mapping[str, FenceDevice]) -> dict[str, NodeConfig]:
    nodes: dict[str, NodeConfig] = {}
    addresses: dict[str, str] = {}
    for name in list(t.data):
        _check_name(t, name, name, "node name")
        nt = t.table(name)
        address = _address(nt, "address")
        if address in addresses:
            raise nt.error("address", f"{address} is also the address of {addresses[address]}")
        addresses[address] = name
        role_s = nt.string("role", "hypervisor")
        try:
            role = NodeRole(role_s)
        except ValueError:
            raise nt.error("role", f"must be hypervisor or witness, got {role_s!r}") from None
        memory = nt.integer("memory_mib", 0, minimum=0)
        method: FenceMethod | None = None
        levels: tuple[tuple[str, ...], ...] = ()
        # The watchdog resets a host whose agent hangs, in either fencing mode; with
        # fence = "watchdog" it is also what the leader waits for before recovering.
        watchdog_timeout = nt.number("watchdog_timeout_s", 10.0)
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
                for i, level in enumerate(fence, 1):
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
                            raise nt.error("fence", f"level {i} names unknown fence device {d!r}")
                    parsed.append(tuple(level))
                levels = tuple(parsed)
            else:
                raise nt.error(
                    "fence",
                    'missing: a list of levels of [fence_devices] names, e.g. [["bmc-n1"]], '
                    'or "watchdog" (a hypervisor must be fenceable)',
                )
        nt.done()
        nodes[name] = NodeConfig(name, address, role, memory, method, levels, watchdog_timeout)
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


def _guests(t: _Table, nodes: Mapping[str, NodeConfig], base: Path) -> dict[str, GuestConfig]:
    guests: dict[str, GuestConfig] = {}
    domains: dict[str, str] = {}
    hypervisors = {n for n, c in nodes.items() if c.role is NodeRole.HYPERVISOR}
    for name in list(t.data):
        _check_name(t, name, name, "guest name")
        gt = t.table(name)
        domain = gt.string("domain", name)
        if domain in domains:
            raise gt.error("domain", f"{domain!r} is also the domain of guest {domains[domain]}")
        domains[domain] = name
        memory = gt.integer("memory_mib", minimum=1)
        priority = gt.integer("priority", 0, minimum=-1000)
        preferred = gt.names("preferred_nodes")
        allowed = gt.names("allowed_nodes")
        for key, listed in (("preferred_nodes", preferred), ("allowed_nodes", allowed)):
            for n in listed:
                if n not in hypervisors:
                    raise gt.error(key, f"{n!r} is not a hypervisor in [nodes]")
        if allowed and not set(preferred) <= set(allowed):
            raise gt.error("preferred_nodes", "every preferred node must also be allowed")
        group = gt.string("anti_affinity", "")
        if group:
            _check_name(gt, "anti_affinity", group, "anti-affinity group")
        storage_s = gt.string("storage", "shared")
        if storage_s != StorageKind.SHARED.value:
            # The core and the simulator handle DRBD (data before compute); the daemon has no
            # DRBD adapter yet, so accepting it here would promise what nothing does.
            raise gt.error(
                "storage",
                f"unsupported storage kind {storage_s!r} (supported: shared; drbd is "
                "implemented in the simulator only so far)",
            )
        storage = StorageKind.SHARED
        xml_path: Path | None = None
        if gt.has("xml"):
            xml_path = base / gt.string("xml")
            if not xml_path.is_file():
                raise gt.error("xml", f"no such file: {xml_path}")
        gt.done()
        spec = GuestSpec(
            name=name,
            domain=domain,
            memory_mib=memory,
            priority=priority,
            preferred_nodes=preferred,
            allowed_nodes=allowed,
            storage=storage,
            anti_affinity=group,
        )
        guests[name] = GuestConfig(spec, xml_path)
    return guests
