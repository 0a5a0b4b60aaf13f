"""Ports: the small interfaces between the pure core and the outside world.

The daemon plugs real adapters into them (pysyncobj, libvirt-python, fence-agents, the
watchdog device); the simulator plugs in fakes. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from haagent.commands import Command
from haagent.model import Checkpoint, ClusterState

# --- consensus -------------------------------------------------------------------------------


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"  # committed and applied; the state machine accepted it
    REFUSED = "refused"  # committed and applied; the state machine refused it (state moved on)
    UNKNOWN = "unknown"  # timeout, leader change, queue full...: it may still apply later


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.kind is OutcomeKind.ACCEPTED


@dataclass(frozen=True)
class HeartbeatSeen:
    """When this node saw the latest heartbeat (or join) of another node.

    `at` is this node's own monotonic clock when it appended the entry to its log as leader,
    else when it applied it (`RaftConsensus._on_apply`). Both happen after the sender sent it,
    so measuring silence from here is conservative: it can only overestimate the sender's
    remaining lease, never underestimate it. (A quiet leader applies heartbeats an append
    period after appending them: counted from the apply, every silence would start that much
    later.)
    """

    seq: int
    at: float


@dataclass(frozen=True)
class ConsensusView:
    """What the local replica knows right now. `state` may be stale; only a commit proves
    freshness (see the lease)."""

    state: ClusterState
    leader: str | None = None
    is_leader: bool = False  # a hint: an isolated leader believes it leads for a while
    term: int = 0
    has_quorum: bool = False  # a hint: counts TCP connections, not recent answers
    heartbeats: Mapping[str, HeartbeatSeen] = field(default_factory=dict)
    commit_index: int = 0
    incompatible: str | None = None  # a committed command this agent cannot decode
    # Replica progress: what this replica applied, and the leader's commit index as it last
    # heard it. The difference is its lag; a lagging replica's view is stale.
    last_applied: int = 0
    leader_commit_index: int = 0
    # Raft elections as this replica saw them (counters since it started): pre-votes it
    # started, real elections it started (a pre-vote won, or a leadership transfer), and
    # pre-vote requests of others it refused because a leader was alive.
    pre_votes: int = 0
    elections: int = 0
    pre_votes_refused: int = 0

    # Why the Raft journal cannot be written now (disk full, I/O error): this replica then
    # acknowledges nothing, so it stops counting toward any majority.
    storage_error: str | None = None

    # This replica's recent state checkpoints (index -> digest, `haagent.core.digests`), newest
    # last; heartbeats report the newest, `haagent.core.divergence` compares them with others'.
    checkpoints: Mapping[int, str] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint this replica digested (None: none yet)."""
        if not self.checkpoints:
            return None
        index = max(self.checkpoints)
        return Checkpoint(index, self.checkpoints[index])

    @property
    def replica_lag(self) -> int:
        """Committed entries (as far as this replica knows) it has not applied yet."""
        return max(0, max(self.leader_commit_index, self.commit_index) - self.last_applied)


class Consensus(Protocol):
    def view(self) -> ConsensusView: ...

    async def propose(self, command: Command, timeout_s: float) -> Outcome:
        """Submit a command; wait at most `timeout_s`. Never raises for operating errors."""
        ...


# --- hypervisor ------------------------------------------------------------------------------


class HypervisorError(RuntimeError):
    """An expected failure of a hypervisor operation (libvirt error, timeout)."""


class UnknownOutcomeError(HypervisorError):
    """The operation may still take effect: no answer in time, or the connection to the
    hypervisor was lost while it ran. A start that ends so is "unknown", never "failed"."""


class RefusedError(HypervisorError):
    """The call was not made: checked right before it, this node's lease had lapsed or the
    committed generation had moved on (haagent.core.authority). Nothing was tried."""


# Called by an adapter in the thread that makes the hypervisor call, right before it: entering
# the context raises `RefusedError` if the call must not be made; the call is made inside the
# context, whose exit records that it returned (see haagent.daemon.authority).
Authorise = Callable[[], AbstractContextManager[None]]


@dataclass(frozen=True)
class DomainObservation:
    """One domain as the local hypervisor reports it.

    `running` is True for every active state (running, paused, blocked...): for safety, a
    paused domain still holds its disks. `paused`: active but paused (a migration's incoming
    copy is paused until the hand-over commits). `owner`/`generation`/`cluster` come from the
    haagent metadata written into the domain at start (or by a migration); None when absent.
    """

    name: str
    running: bool
    owner: str | None = None
    generation: int | None = None
    cluster: str | None = None
    paused: bool = False


class Hypervisor(Protocol):
    async def domains(self) -> Mapping[str, DomainObservation]:
        """All domains defined or running on this host, by domain name."""
        ...

    async def start(
        self,
        domain: str,
        xml: str | None,
        cluster: str,
        node: str,
        generation: int,
        authorise: Authorise | None = None,
    ) -> None:
        """Define the domain from `xml` if it is not defined, write the ownership metadata
        (cluster, node, generation) and start it. Raises HypervisorError. With `xml` given,
        the domain started has `xml`'s disks, whatever definition the host kept (a stale raid1
        leg of an earlier start must never come back with an old definition).

        `authorise`: entered right before the call that starts the domain, in the thread that
        makes it, and held until that call returns; it raises `RefusedError` when the start
        must not be made any more (the lease lapsed or the generation moved on)."""
        ...

    async def stop(self, domain: str, timeout_s: float) -> None:
        """Graceful shutdown; destroy if it is still running after `timeout_s`."""
        ...

    async def destroy(self, domain: str) -> None:
        """Hard power-off. Succeeds if the domain is not running."""
        ...

    async def migrate(
        self,
        domain: str,
        dest_uri: str,
        cluster: str,
        dest_node: str,
        generation: int,
        timeout_s: float,
        authorise: Authorise | None = None,
    ) -> None:
        """Live-migrate the running `domain` peer-to-peer to the libvirt at `dest_uri`:
        persistent there, the source's definition kept, the destination left PAUSED, its
        definition carrying the ownership metadata (cluster, dest_node, generation). Returns
        when libvirt reports the migration complete (the source is then shut off, reason
        'migrated'). Raises HypervisorError if libvirt refused or failed (the guest is then
        still on the source, running or paused) or after `timeout_s` (the job aborted first).
        `authorise` as for start, entered right before the migrate call and held until it
        returns."""
        ...

    async def resume(self, domain: str, authorise: Authorise | None = None) -> None:
        """Resume a paused domain (the destination, once the hand-over is committed). Raises
        HypervisorError. `authorise` as for start, entered right before the resume call and
        held until it returns."""
        ...

    async def clear_autostart(self, domains: Collection[str]) -> list[str]:
        """Turn libvirt's autostart off for those of `domains` defined here; return the names
        it was on for. A protected guest must start only where the cluster decides: a fenced
        host that boots must not start it on its own before its agent runs."""
        ...

    def set_listener(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from the event loop) on any lifecycle event."""
        ...


# --- replicated disks (DRBD) ----------------------------------------------------------------


class ReplicaRole(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


class DiskState(StrEnum):
    """DRBD's disk states that matter for a promotion decision."""

    UP_TO_DATE = "uptodate"
    CONSISTENT = "consistent"  # maybe current, maybe not: never promoted
    OUTDATED = "outdated"
    INCONSISTENT = "inconsistent"  # resync target
    DISKLESS = "diskless"


@dataclass(frozen=True)
class ReplicaObservation:
    """This host's side of one DRBD resource, as `drbdsetup events2` reports it."""

    resource: str
    role: ReplicaRole
    disk: DiskState
    connected: bool
    peer_role: ReplicaRole | None = None  # known only while connected
    peer_disk: DiskState | None = None
    split_brain: bool = False
    suspended: bool = False  # I/O suspended (frozen): DRBD holds every write, for any reason
    # Suspended by resource-and-stonith fencing alone (no admin's suspend-io, no quorum loss):
    # the only freeze the agent may lift itself (`resume-io`, see haagent.core.drbd).
    fence_frozen: bool = False
    fence_pending: bool = False  # a fence-peer handler runs now (its verdict is still to come)


class ReplicaError(RuntimeError):
    """An expected failure of a replica operation: DRBD refused it, or it timed out."""


class Replicas(Protocol):
    async def observe(self) -> Mapping[str, ReplicaObservation]:
        """Every DRBD resource on this host, by resource name."""
        ...

    async def promote(self, resource: str) -> None:
        """Make this side Primary. DRBD itself refuses while the peer is Primary.
        Raises ReplicaError (as do `demote` and `resume_io`)."""
        ...

    async def demote(self, resource: str) -> None: ...

    async def resume_io(self, resource: str) -> None:
        """Unfreeze I/O that fencing froze (after a failed fence-peer handler)."""
        ...


# --- guest RAID1 legs -----------------------------------------------------------------------

# A member's state as the guest's md array reports it (`MirrorObservation.members`).
MEMBER_IN_SYNC = "in_sync"
MEMBER_RESYNCING = "resyncing"
MEMBER_FAULTY = "faulty"
MEMBER_MISSING = "missing"
MEMBER_STATES = frozenset({MEMBER_IN_SYNC, MEMBER_RESYNCING, MEMBER_FAULTY, MEMBER_MISSING})


@dataclass(frozen=True)
class MirrorObservation:
    """The guest's md array, seen from inside the guest (qemu-guest-agent reading
    /proc/mdstat, or an equivalent)."""

    guest: str
    members: Mapping[str, str]  # leg id -> "in_sync" | "resyncing" | "faulty" | "missing"
    resync_progress: float | None  # 0.0-1.0 while resyncing, else None


class Mirrors(Protocol):
    """The raid1 guests' mirrors on this host. Each call raises HypervisorError on failure."""

    async def observe(self, guest: str) -> MirrorObservation | None:
        """The guest's array now; None: unknown (no guest agent answer, not running here)."""
        ...

    async def attach_leg(self, guest: str, leg_id: str, source: str) -> None:
        """Attach the leg's disk (`source`: a local device or an nbd:// / iscsi:// URI) to
        the running guest, where its RAID1 adds and resyncs it."""
        ...

    async def detach_leg(self, guest: str, leg_id: str) -> None:
        """Detach the leg's disk from the running guest (a leg not attached: done); the core
        detaches a leg only after committing it stale. A guest paused on a write error of
        that leg (`error_policy='stop'`) cannot acknowledge the unplug (measured by the real
        adapter, resources/mirrors.py): then this raises, and the core restarts the guest
        from its fresh leg instead (haagent.core.raid1)."""
        ...


# --- fencing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FenceDevice:
    """One stock fence agent invocation: `agent` (e.g. fence_ipmilan) and its stdin params."""

    name: str
    agent: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class FenceOutcome:
    ok: bool
    detail: str
    level: int | None = None  # 1-based level that succeeded
    duration_s: float = 0.0


class Fencer(Protocol):
    async def fence(
        self,
        node: str,
        levels: Sequence[Sequence[FenceDevice]],
        timeout_s: float,
        *,
        may_act: Callable[[], str | None] | None = None,
    ) -> FenceOutcome:
        """Power `node` off through the levels in order (all devices of a level must succeed,
        each confirmed by `status`). Never raises for operating errors. `may_act` is asked
        right before every power-off call: a reason (not None) ends the attempt there, failed,
        with nothing more switched off."""
        ...


# --- watchdog --------------------------------------------------------------------------------


class Watchdog(Protocol):
    timeout_s: float

    def pet(self) -> None: ...

    def close(self) -> None:
        """Disarm cleanly (only on a clean shutdown with no guest running)."""
        ...


# --- clock -----------------------------------------------------------------------------------


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...
