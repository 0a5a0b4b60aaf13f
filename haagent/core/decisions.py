"""What a pass takes in besides the replicated state, and what it hands back to the shell.

In: `LocalView` (this host's hypervisor and replicas as last observed). Out: a `Step` with the
`Proposal`s to commit, the actions to run (each idempotent, run with a timeout, its result
reported back with `ActionResult`), structured `Event`s for logs and traces, and whether to pet
the watchdog. Every proposal and action carries a typed key (`haagent.core.keys`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from haagent.commands import Command
from haagent.core.keys import ActionKey, ActionKind, ProposalKey
from haagent.ports import (
    DomainObservation,
    FenceOutcome,
    MirrorObservation,
    ReplicaObservation,
)

# --- what the core asks the shell to do ------------------------------------------------------


@dataclass(frozen=True)
class StartLeg:
    """A raid1 leg a start attaches: its id and how this host reaches it (local device or
    nbd:// / iscsi:// URI)."""

    leg: str
    source: str


@dataclass(frozen=True)
class StartGuest:
    """`legs`: for a raid1 guest, the fresh legs it starts from (never a stale one); empty
    for other storage kinds."""

    guest: str
    domain: str
    generation: int
    legs: tuple[StartLeg, ...] = ()

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.START, self.guest)


@dataclass(frozen=True)
class StopGuest:
    """Graceful stop (admin disable): shutdown, destroy after `timeout_s`."""

    guest: str
    domain: str
    generation: int
    timeout_s: float

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.STOP, self.guest)


@dataclass(frozen=True)
class DestroyDomain:
    """Hard power-off of a protected domain that must not run here."""

    domain: str
    reason: str
    generation: int | None = None  # of the instance destroyed, when its metadata says

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.DESTROY, self.domain)


@dataclass(frozen=True)
class PromoteReplica:
    """Make this host's side of the guest's DRBD resource Primary (before starting it)."""

    guest: str
    resource: str
    generation: int

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.PROMOTE, self.resource)


@dataclass(frozen=True)
class DemoteReplica:
    """Make this host's side Secondary again (the guest is not running here any more)."""

    resource: str
    reason: str

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.DEMOTE, self.resource)


@dataclass(frozen=True)
class ResumeReplicaIo:
    """Unfreeze this host's Primary replica whose fence-peer handler failed, now that the
    peer is committed as outdated (what the handler's exit 4 would have told DRBD)."""

    guest: str
    resource: str
    generation: int

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.RESUME_IO, self.resource)


@dataclass(frozen=True)
class LiveMigrate:
    """The source: live-migrate the running guest to `dest` (reached at `dest_uri`), leaving
    it paused there with ownership metadata at `dest_generation`. Authorised, like a start,
    against the source's lease and its committed generation `generation`."""

    guest: str
    domain: str
    dest: str
    dest_uri: str
    generation: int
    dest_generation: int
    timeout_s: float

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.MIGRATE, self.guest)


@dataclass(frozen=True)
class ResumeGuest:
    """The destination, owner since the hand-over committed: resume the paused copy."""

    guest: str
    domain: str
    generation: int

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.RESUME, self.guest)


@dataclass(frozen=True)
class AttachLeg:
    """Attach a raid1 leg to the guest running here (its RAID1 then resyncs it). Checked
    against the lease and the committed generation right before the call, like a start."""

    guest: str
    leg: str
    source: str
    generation: int

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.ATTACH_LEG, f"{self.guest}/{self.leg}")


@dataclass(frozen=True)
class DetachLeg:
    """Detach a raid1 leg from the guest running here (a faulty one before re-attaching it,
    or one whose resync this agent never saw, to prove it by a resync)."""

    guest: str
    leg: str
    generation: int
    reason: str

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.DETACH_LEG, f"{self.guest}/{self.leg}")


@dataclass(frozen=True)
class RunFence:
    """Run the fence agents against `node` for attempt `attempt` of failure `epoch` (the
    committed `FenceStarted`); its verdict names both."""

    node: str
    epoch: int
    attempt: int

    @property
    def key(self) -> ActionKey:
        return ActionKey(ActionKind.FENCE, self.node)


Action = (
    StartGuest
    | StopGuest
    | DestroyDomain
    | RunFence
    | PromoteReplica
    | DemoteReplica
    | ResumeReplicaIo
    | LiveMigrate
    | ResumeGuest
    | AttachLeg
    | DetachLeg
)


@dataclass(frozen=True)
class ActionResult:
    """How an action went. `unknown`: the call timed out or its connection was lost, so it
    may still complete later (a `create()` libvirt finishes after the agent gave up). The
    executor must then return `ActionResult(ok=False, detail=..., unknown=True)`, never a plain
    failure: the core keeps such a start "unknown" until it observes the domain.

    `refused`: the call was not made because, checked right before it, the lease had lapsed or
    the committed generation had moved on (haagent.core.authority). Nothing was tried, so it
    is never counted as a failure: the next pass decides again on the current state."""

    ok: bool
    detail: str = ""
    fence: FenceOutcome | None = None
    unknown: bool = False
    refused: bool = False


@dataclass(frozen=True)
class Proposal:
    key: ProposalKey
    command: Command
    timeout_s: float


@dataclass(frozen=True)
class Event:
    """A structured record of a decision, for logs, metrics and simulator traces."""

    name: str
    data: tuple[tuple[str, str | int | float | bool | None], ...] = ()

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v}" for k, v in self.data)
        return f"{self.name} {fields}".strip()


def event(name: str, **data: str | int | float | bool | None) -> Event:
    return Event(name, tuple(sorted(data.items())))


# --- what the core is given and what it returns ----------------------------------------------


@dataclass(frozen=True)
class LocalView:
    """This host's hypervisor as last observed. `domains` None: the observation failed.

    `replicas`: this host's DRBD replicas whose state is current, by resource.
    `replicas_unknown`: resources this host holds whose state is not known now (events2 not
    running, restarting, or its initial dump not complete): the DRBD gate waits on them and
    never acts on them. A resource in neither does not exist on this host."""

    domains: Mapping[str, DomainObservation] | None
    observed_at: float
    replicas: Mapping[str, ReplicaObservation] = field(default_factory=dict)  # by resource
    replicas_unknown: frozenset[str] = frozenset()
    # The needed host interfaces found missing, down or without carrier (sorted); None: not
    # checked (no network adapter, or its check failed), and then nothing is reported.
    missing_networks: tuple[str, ...] | None = None
    # The md arrays of raid1 guests running here, by guest, each observed from inside the
    # guest no earlier than `observed_at`; a guest absent: its array is not known now.
    mirrors: Mapping[str, MirrorObservation] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    proposals: tuple[Proposal, ...]
    actions: tuple[Action, ...]
    events: tuple[Event, ...]
    pet_watchdog: bool
    lease_valid: bool
    left: bool = False  # a requested leave has committed; the agent may exit
    # Why this replica or its config cannot be trusted (issue 8 item 6): the shell stops its
    # Raft replica; the core holds no lease and runs nothing from then on.
    diverged: str | None = None
    # The cluster is disarmed (as this node counts it): the shell releases the watchdog (magic
    # close, or keeps petting a device that cannot be closed safely) and opens it again once
    # this turns False; also True for the clean exit of a frozen node's agent.
    release_watchdog: bool = False

    @property
    def reason(self) -> str:
        """One line saying why this pass did what it did (empty when it did nothing)."""
        return "; ".join(str(e) for e in self.events)
