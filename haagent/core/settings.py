"""What the core decides with: the config's nodes, guests, timing and limits (no secrets, no
paths). The defaults come from `haagent.timing`, the one place that holds them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from haagent.model import FenceMethod, GuestSpec, NodeRole
from haagent.timing import DEFAULT_LIMITS, DEFAULT_TIMING, Timing


@dataclass(frozen=True)
class NodeSettings:
    """What every agent knows about one configured node."""

    role: NodeRole
    memory_mib: int = 0
    fence_method: FenceMethod | None = None  # None: nothing to fence (a witness)
    watchdog_timeout_s: float = 0.0
    # fence = [[...], "watchdog"]: after a failed pass through the power levels, the watchdog
    # deadline (lease + the timeout the node committed + margin) counts as a fence.
    watchdog_level: bool = False
    # The libvirt URI other hosts reach this node's libvirtd at for live migration
    # (`migration_uri` in its [nodes] table); "": this node takes no live migration.
    migration_uri: str = ""

    @property
    def relies_on_watchdog(self) -> bool:
        """Others may recover this node's guests on its watchdog's word alone."""
        return self.fence_method is FenceMethod.WATCHDOG or self.watchdog_level


@dataclass(frozen=True)
class AgentSettings:
    """The parts of the config the core decides with (no secrets, no paths).

    Flat on purpose: the simulator's scenario language sets these fields by name
    (`set lease_s=2`).
    """

    cluster: str
    node: str
    nodes: Mapping[str, NodeSettings]
    guests: tuple[GuestSpec, ...] = ()
    heartbeat_s: float = DEFAULT_TIMING.heartbeat_s
    lease_s: float = DEFAULT_TIMING.lease_s
    failure_timeout_s: float = DEFAULT_TIMING.failure_timeout_s
    stop_grace_s: float = DEFAULT_TIMING.stop_grace_s
    fence_timeout_s: float = DEFAULT_TIMING.fence_timeout_s
    fence_retry_initial_s: float = DEFAULT_TIMING.fence_retry_initial_s
    fence_retry_max_s: float = DEFAULT_TIMING.fence_retry_max_s
    watchdog_margin_s: float = DEFAULT_TIMING.watchdog_margin_s
    commit_timeout_s: float = DEFAULT_TIMING.commit_timeout_s
    start_timeout_s: float = DEFAULT_TIMING.start_timeout_s
    shutdown_timeout_s: float = DEFAULT_TIMING.shutdown_timeout_s
    max_concurrent_starts: int = DEFAULT_LIMITS.max_concurrent_starts
    max_start_failures: int = DEFAULT_LIMITS.max_start_failures
    failure_reset_s: float = DEFAULT_LIMITS.failure_reset_s
    max_relocations: int = DEFAULT_LIMITS.max_relocations
    initial_placement_wait_s: float = DEFAULT_TIMING.initial_placement_wait_s
    # How long this node's committed condition must lack a running guest's network before the
    # guest is stopped here to move (a link that flaps faster never bounces a guest).
    network_hold_down_s: float = DEFAULT_TIMING.network_hold_down_s
    migration_timeout_s: float = DEFAULT_TIMING.migration_timeout_s

    @property
    def role(self) -> NodeRole:
        return self.nodes[self.node].role

    @property
    def live_evacuation(self) -> bool:
        """Maintenance evacuates shared-storage guests by live migration: every hypervisor
        has a `migration_uri` (else it stops and restarts them, as without migration)."""
        hypervisors = [ns for ns in self.nodes.values() if ns.role is NodeRole.HYPERVISOR]
        return bool(hypervisors) and all(ns.migration_uri for ns in hypervisors)

    @property
    def capacity_mib(self) -> dict[str, int]:
        return {name: ns.memory_mib for name, ns in self.nodes.items()}


def timing_overrides(timing: Timing) -> dict[str, float]:
    """The fields of `timing` that `AgentSettings` has, as keyword arguments: how the simulator
    and the unit tests run the core under a named profile instead of the default one."""
    names = {f.name for f in fields(AgentSettings)}
    return {k: v for k, v in asdict(timing).items() if k in names}
