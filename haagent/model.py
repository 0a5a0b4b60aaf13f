"""The replicated cluster model: what every node agrees on through Raft.

Everything here is pure data: frozen dataclasses and string enums, no I/O, no clocks.
The state is small on purpose (node -> liveness/fencing, guest -> owner/generation), because
pysyncobj ships it whole in snapshots and every node applies every command.

Timestamps named ``*_at`` are wall-clock seconds supplied by the proposer of a command. They are
for humans (status output) only; no decision ever compares them, because wall clocks of
different hosts disagree. Decisions use each node's own monotonic clock, held outside this state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property


class NodeRole(StrEnum):
    """A hypervisor runs guests; a witness only votes (two hypervisors + a witness = quorum)."""

    HYPERVISOR = "hypervisor"
    WITNESS = "witness"


class NodeState(StrEnum):
    """Liveness of a node as agreed by the cluster.

    down    configured but not joined (never started, or left cleanly with its guests stopped)
    up      joined; its heartbeats are accepted and extend its lease
    failed  declared failed by the leader; heartbeats are refused; its guests stay put
    fenced  a fence confirmed power-off (or the watchdog deadline passed): its guests may move
    """

    DOWN = "down"
    UP = "up"
    FAILED = "failed"
    FENCED = "fenced"


class GuestState(StrEnum):
    """What the owner last committed about a guest.

    stopped   not running at its owner (or no owner yet); safe to (re)assign
    starting  the owner committed its intent to start (which gave it a new generation)
    running   the owner confirmed the domain runs
    stopping  reserved for a stop in progress (not committed by this version)
    error     it failed on too many nodes; needs an admin (disable/enable clears it)
    """

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


class DesiredState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class StorageKind(StrEnum):
    """How a guest's disks reach its hosts.

    shared  every allowed host sees the same disks (iSCSI, NFS, ...)
    drbd    one DRBD resource replicated between exactly two hosts (`replica_nodes`); the
            guest runs where the replica is promoted (DESIGN rule 5: data before compute)
    """

    SHARED = "shared"
    DRBD = "drbd"


class FenceMethod(StrEnum):
    """How a node's power-off was established: a fence agent confirmed it, its watchdog
    deadline passed, or an admin confirmed it by hand (`haagent node confirm-fenced`)."""

    AGENT = "agent"
    WATCHDOG = "watchdog"
    MANUAL = "manual"


@dataclass(frozen=True)
class GuestSpec:
    """A protected guest as configured by the admin."""

    name: str
    domain: str
    memory_mib: int
    priority: int = 0
    preferred_nodes: tuple[str, ...] = ()
    allowed_nodes: tuple[str, ...] = ()  # empty: every hypervisor
    storage: StorageKind = StorageKind.SHARED
    anti_affinity: str = ""  # guests sharing a non-empty group never share a node
    replica_nodes: tuple[str, ...] = ()  # drbd: the two hosts holding the replicas
    resource: str = ""  # drbd: the DRBD resource name
    # Host interfaces (bridges, macvtap lower devices, VLAN devices) its NICs attach to, read
    # from its domain XML (haagent.core.netneeds): it is placed only where all of them work.
    networks: tuple[str, ...] = ()

    def allows(self, node: str) -> bool:
        if self.storage is StorageKind.DRBD and node not in self.replica_nodes:
            return False
        return not self.allowed_nodes or node in self.allowed_nodes

    def peer_of(self, node: str) -> str | None:
        """The other replica host of a drbd guest."""
        others = [n for n in self.replica_nodes if n != node]
        return others[0] if len(others) == 1 else None


@dataclass(frozen=True)
class FailureEvidence:
    """Why the leader declared a node failed: what it missed and for how long."""

    declared_by: str
    last_heartbeat_seq: int
    silent_s: float  # seconds the declarer had not applied a heartbeat of the node (its clock)
    detail: str
    declared_at: float  # wall clock, display only


@dataclass(frozen=True)
class Checkpoint:
    """A digest of the replicated state right after the command that made
    `ClusterState.applied` equal `index` (every `haagent.core.digests.CHECKPOINT_EVERY`
    commands). Replicas that applied the same commands hold the same digest at the same index;
    comparing at any other index means nothing."""

    index: int
    digest: str


@dataclass(frozen=True)
class FenceRecord:
    """Progress of fencing a failed node, for one failure epoch."""

    attempts: int = 0
    in_progress_by: str | None = None  # leader that committed the start of the current attempt
    last_result: str = ""  # "ok", "failed", or "" while none finished
    last_detail: str = ""
    method: FenceMethod | None = None
    confirmed_at: float | None = None  # wall clock, display only


@dataclass(frozen=True)
class NodeRecord:
    name: str
    role: NodeRole = NodeRole.HYPERVISOR
    state: NodeState = NodeState.DOWN
    incarnation: str = ""  # random id of the agent process that joined last
    heartbeat_seq: int = 0  # grows with every accepted heartbeat
    applied_index: int | None = None  # reported by its latest heartbeat/join (None: unknown)
    failure_epoch: int = 0  # grows with every declaration; fence commands carry it
    evidence: FailureEvidence | None = None
    fence: FenceRecord = field(default_factory=FenceRecord)
    maintenance: bool = False  # admin: host no guests (its guests are stopped and moved)
    admin_version: int = 0  # grows with every accepted admin decision about this node
    reason: str = ""
    changed_at: float = 0.0  # wall clock, display only
    # The watchdog timeout its current incarnation armed, as the device reported it (set by
    # `Join`); None: unknown (no usable watchdog, or an agent older than this field), and
    # then its watchdog cannot stand in for a fence.
    watchdog_timeout_s: float | None = None
    # The digest of the cluster-wide config its current incarnation joined with (None: an agent
    # older than the field); every up node holds the same one (`Join` enforces it).
    config_digest: str | None = None
    # The latest state checkpoint its heartbeats reported (None: none yet, or an older agent).
    checkpoint: Checkpoint | None = None
    # The needed host interfaces this node last reported missing, down or without carrier
    # (`NetworkCondition`); empty also while it never reported (agents older than the field).
    missing_networks: tuple[str, ...] = ()

    def heard(
        self, heartbeat_seq: int, applied_index: int | None, checkpoint: Checkpoint | None
    ) -> NodeRecord:
        """This record after an accepted heartbeat: `replace` with these three fields, without
        its per-field `__init__` call. Every replica applies every heartbeat, so this is the
        hottest copy in the simulator (a NodeRecord has no `__post_init__` and no cached
        property, so copying its attributes is all `replace` would do)."""
        new = object.__new__(NodeRecord)
        attrs = new.__dict__
        attrs.update(self.__dict__)
        attrs["heartbeat_seq"] = heartbeat_seq
        attrs["applied_index"] = applied_index
        attrs["checkpoint"] = checkpoint
        return new

    def lacks(self, spec: GuestSpec) -> tuple[str, ...]:
        """The guest's networks this node reported missing, in the guest's order."""
        if not self.missing_networks or not spec.networks:
            return ()
        return tuple(n for n in spec.networks if n in self.missing_networks)


@dataclass(frozen=True)
class GuestRecord:
    spec: GuestSpec
    owner: str | None = None
    generation: int = 0  # fencing token: grows on every change of owner and every start
    desired: DesiredState = DesiredState.RUNNING
    state: GuestState = GuestState.STOPPED
    failures: int = 0  # failed starts/crashes at the current owner
    failed_nodes: tuple[str, ...] = ()  # owners that gave up on it (it moves on, then errors)
    outdated_nodes: tuple[str, ...] = ()  # drbd: replicas known to be behind (never promoted)
    admin_version: int = 0  # grows with every accepted enable/disable of this guest
    spec_version: int = 0  # grows with every accepted change of its spec
    reason: str = ""
    changed_at: float = 0.0  # wall clock, display only

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ClusterState:
    """The whole replicated state. Treat the dicts as read-only: `apply` builds new ones."""

    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    guests: dict[str, GuestRecord] = field(default_factory=dict)
    applied: int = 0  # commands applied (accepted or not); a cheap change counter

    def node(self, name: str) -> NodeRecord:
        """The node's record; nodes that never joined read as `down`."""
        return self.nodes.get(name) or NodeRecord(name=name)

    def guests_of(self, node: str) -> list[GuestRecord]:
        """The guests `node` owns (any state), in name order."""
        return self._by_owner.get(node, [])

    @cached_property
    def by_domain(self) -> dict[str, GuestRecord]:
        """Guests by libvirt domain name (built once per state, like `guests_of`)."""
        return {g.spec.domain: g for g in self.guests.values()}

    @cached_property
    def _by_owner(self) -> dict[str | None, list[GuestRecord]]:
        # A state never changes once built (apply makes a new one), so the index is built
        # at most once per state: O(guests) instead of O(guests) on every lookup.
        index: dict[str | None, list[GuestRecord]] = {}
        for name in sorted(self.guests):
            g = self.guests[name]
            index.setdefault(g.owner, []).append(g)
        return index

    def with_node(self, record: NodeRecord) -> ClusterState:
        nodes = dict(self.nodes)
        nodes[record.name] = record
        # The constructor, not `replace`: same result, and this runs for every heartbeat.
        return self._keeping_indexes(ClusterState(nodes, self.guests, self.applied))

    def with_guest(self, record: GuestRecord) -> ClusterState:
        return self.with_guests([record])

    def with_guests(self, records: list[GuestRecord]) -> ClusterState:
        """One copy of the guest map for many changes (a batch assignment of 160 guests in a
        10 000-guest cluster is then one copy, not 160)."""
        guests = dict(self.guests)
        for record in records:
            guests[record.name] = record
        return replace(self, guests=guests)

    def with_applied(self, applied: int) -> ClusterState:
        return self._keeping_indexes(ClusterState(self.nodes, self.guests, applied))

    def _keeping_indexes(self, new: ClusterState) -> ClusterState:
        """`new` shares this state's guests: hand over the guest indexes already built, so a
        heartbeat (which changes only nodes) does not cost a rebuild."""
        if new.guests is self.guests:
            for name in ("by_domain", "_by_owner"):
                if name in self.__dict__:
                    new.__dict__[name] = self.__dict__[name]
        return new
