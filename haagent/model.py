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
    raid1   two legs (`legs`), each a disk held by one hypervisor, mirrored by a software
            RAID1 inside the guest; the guest starts only from legs known fresh
            (haagent.core.raid1)
    """

    SHARED = "shared"
    DRBD = "drbd"
    RAID1 = "raid1"


class Raid1RunOn(StrEnum):
    """Where a raid1 guest may run: only on a node holding one of its legs (`holders`), or on
    any allowed hypervisor, which then reaches both legs over the network (`any`)."""

    HOLDERS = "holders"
    ANY = "any"


@dataclass(frozen=True)
class Leg:
    """One half of a raid1 guest's mirror: a disk held by hypervisor `holder`.

    `local`: how the holder attaches it (a block device path); `remote`: how every other node
    reaches it (an `nbd://host:port/export` or `iscsi://host:port/iqn/lun` URI)."""

    id: str
    holder: str
    local: str
    remote: str

    def source_for(self, node: str) -> str:
        """How `node` attaches this leg: the local device on its holder, else the URI."""
        return self.local if node == self.holder else self.remote


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
    legs: tuple[Leg, ...] = ()  # raid1: its two legs
    raid1_run_on: Raid1RunOn = Raid1RunOn.HOLDERS  # raid1: where it may run

    def allows(self, node: str) -> bool:
        if self.storage is StorageKind.DRBD and node not in self.replica_nodes:
            return False
        if (
            self.storage is StorageKind.RAID1
            and self.raid1_run_on is Raid1RunOn.HOLDERS
            and node not in self.leg_holders
        ):
            return False
        return not self.allowed_nodes or node in self.allowed_nodes

    @property
    def leg_holders(self) -> tuple[str, ...]:
        """The hypervisors holding a raid1 guest's legs, in leg order."""
        return tuple(leg.holder for leg in self.legs)

    def leg(self, leg_id: str) -> Leg | None:
        return next((leg for leg in self.legs if leg.id == leg_id), None)

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
    # Admin (`haagent node freeze`): its agent may be away (a restart, an upgrade) without it
    # being declared failed or fenced, and its guests stay where they are (`SetFrozen`).
    frozen: bool = False
    # Its watchdog was released by `cluster disarm` and it has not committed `WatchdogRearmed`
    # since the cluster was armed again: nobody may count on it resetting the host, so its
    # watchdog fence level waits (core.fencing). A `Join` while armed clears it (the joining
    # incarnation armed the device or found the predecessor's countdown running).
    watchdog_released: bool = False

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


class MigrationPhase(StrEnum):
    """Where a live migration stands (README, "Live migration").

    pending      the intent committed: the source may migrate; the destination's incoming
                 (paused) domain at the intent's generation is recognised, never adopted
    handed_over  the completion committed: the destination owns it at the new generation and
                 resumes its paused copy
    done         the destination resumed it (a record for status until the next migration)
    aborted      the source keeps it (libvirt error, timeout, a party left); the guest's
                 generation moved past the intent's, so a leftover incoming copy is destroyed
    """

    PENDING = "pending"
    HANDED_OVER = "handed_over"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class Migration:
    """The guest's latest live migration. `generation` is the destination's (the source's
    generation + 1 at the intent): written into the incoming domain's metadata by the source's
    libvirt call, it is what lets the destination tell the migration's copy from a foreign one."""

    source: str
    dest: str
    generation: int
    phase: MigrationPhase = MigrationPhase.PENDING
    by: str = ""
    reason: str = ""
    started_at: float = 0.0  # wall clock, display only
    changed_at: float = 0.0  # wall clock, display only

    @property
    def in_flight(self) -> bool:
        return self.phase in (MigrationPhase.PENDING, MigrationPhase.HANDED_OVER)


@dataclass(frozen=True)
class StaleLeg:
    """A raid1 leg that missed writes: the guest ran without it from `generation` on. Never
    a start from it alone; fresh again only on evidence of a completed resync (`LegFresh`)."""

    leg: str
    generation: int
    by: str  # the owner that committed it
    reason: str


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
    stale_legs: tuple[StaleLeg, ...] = ()  # raid1: legs known to have missed writes (by id)
    admin_version: int = 0  # grows with every accepted enable/disable of this guest
    spec_version: int = 0  # grows with every accepted change of its spec
    reason: str = ""
    changed_at: float = 0.0  # wall clock, display only
    migration: Migration | None = None  # the latest live migration (None: none since moved)
    # Admin (`haagent guest move`): the node it is to be stopped and started on. Its owner
    # stops it; placement then assigns it to this node only; any change of owner clears it.
    move_to: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def storage_kind_blocks_migration(self) -> bool:
        """Only shared storage is live-migrated (DRBD would need dual-primary)."""
        return self.spec.storage is not StorageKind.SHARED

    @property
    def migrating(self) -> Migration | None:
        """The migration in flight (pending or handed over), if any."""
        m = self.migration
        return m if m is not None and m.in_flight else None

    def leg_stale(self, leg_id: str) -> bool:
        return any(s.leg == leg_id for s in self.stale_legs)


@dataclass(frozen=True)
class AuditEntry:
    """One accepted admin decision, for the status: what, who (the CLI's USER@HOST or the
    API client's `by`, and the agent that proposed it: "alice@laptop via api@n1"), when (wall
    clock of the proposing agent, display only) and why (the admin's `--reason`)."""

    action: str
    by: str
    reason: str
    at: float


MAX_AUDIT_ENTRIES = 64
"""The replicated audit keeps the newest 64 admin decisions (the state travels whole in every
snapshot, so it stays bounded); the events log and the agents' logs keep the rest."""


@dataclass(frozen=True)
class Arming:
    """Whether the cluster fences and recovers (`haagent cluster disarm/arm`).

    While disarmed no node is declared failed or fenced, no guest is recovered, a node that
    loses its lease keeps its guests, and watchdogs are released. `for_s` is the planned
    duration: every node counts it on its own monotonic clock from when it first saw this
    `version` disarmed (wall clocks are never compared) and acts armed after it, and the leader
    commits the re-arm then. `until_at` is the proposer's wall-clock guess, for humans."""

    disarmed: bool = False
    version: int = 0  # grows with every accepted disarm or arm
    for_s: float = 0.0
    until_at: float | None = None  # wall clock, display only
    by: str = ""
    reason: str = ""
    changed_at: float = 0.0  # wall clock, display only


@dataclass(frozen=True)
class ClusterState:
    """The whole replicated state. Treat the dicts as read-only: `apply` builds new ones."""

    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    guests: dict[str, GuestRecord] = field(default_factory=dict)
    applied: int = 0  # commands applied (accepted or not); a cheap change counter
    arming: Arming = field(default_factory=Arming)
    audit: tuple[AuditEntry, ...] = ()  # newest last, at most MAX_AUDIT_ENTRIES

    def audited(self, entry: AuditEntry) -> ClusterState:
        """This state with `entry` appended to the bounded audit."""
        audit = (*self.audit, entry)[-MAX_AUDIT_ENTRIES:]
        return self._keeping_indexes(replace(self, audit=audit))

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
        # The constructor, not `replace`: same result, and this runs for every heartbeat. It
        # must pass every field (a new field left out here is silently reset on each copy).
        return self._keeping_indexes(
            ClusterState(nodes, self.guests, self.applied, self.arming, self.audit)
        )

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
        return self._keeping_indexes(
            ClusterState(self.nodes, self.guests, applied, self.arming, self.audit)
        )

    def _keeping_indexes(self, new: ClusterState) -> ClusterState:
        """`new` shares this state's guests: hand over the guest indexes already built, so a
        heartbeat (which changes only nodes) does not cost a rebuild."""
        if new.guests is self.guests:
            for name in ("by_domain", "_by_owner"):
                if name in self.__dict__:
                    new.__dict__[name] = self.__dict__[name]
        return new
