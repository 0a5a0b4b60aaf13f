"""Replicated commands and their versioned JSON wire format.

Every command is conditional: it names the generation, heartbeat sequence or failure epoch it
was decided on, and `apply` refuses it when the state moved on. pysyncobj may lose completion
callbacks and re-send queued commands to a new leader, so the same command can be applied twice
or late; conditions make that harmless (DESIGN.md rule 7).

Wire format: one JSON object ``{"v": PROTOCOL_VERSION, "type": "<name>", ...fields}``, UTF-8.
An agent refuses to decode a version it does not know rather than guess; see `decode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from haagent.codec import DecodeError, from_json, to_json
from haagent.model import (
    Checkpoint,
    DesiredState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
)

PROTOCOL_VERSION = 1
"""Version of the command format this agent writes and fully understands."""

SUPPORTED_VERSIONS = frozenset({1})


class CommandError(ValueError):
    """A replicated command could not be decoded (bad JSON, unknown type or version)."""


@dataclass(frozen=True)
class Command:
    """Base of all replicated commands. `type_name` is the wire tag."""

    type_name: ClassVar[str] = ""


@dataclass(frozen=True)
class Join(Command):
    """A node's agent (re)joins. `clean` asserts no protected domain runs on it: required to
    rejoin after being declared failed, so a returning node can never resume a guest that may
    have moved.

    `watchdog_timeout_s` is the timeout of the watchdog this incarnation armed, as the device
    reports it (None: no watchdog the cluster may rely on; also what joins written before the
    field decode to). Whoever fences the node waits on this value, never on its own config."""

    type_name: ClassVar[str] = "join"
    node: str
    incarnation: str
    role: NodeRole
    clean: bool
    at: float
    watchdog_timeout_s: float | None = None
    # The sender's applied Raft index when it sent this (None: unknown, as in entries written
    # before this field existed). Lets the leader tell a node that commits but does not apply.
    applied_index: int | None = None
    # The digest of the sender's cluster-wide config (`core.digests.config_digest`; None from
    # agents older than the field, which are not checked). Refused while another up node joined
    # with a different one: the cluster's settings are those its up nodes joined with.
    config_digest: str | None = None


@dataclass(frozen=True)
class Leave(Command):
    """Clean shutdown: accepted only when none of the node's guests is starting or running."""

    type_name: ClassVar[str] = "leave"
    node: str
    incarnation: str
    at: float


@dataclass(frozen=True)
class Heartbeat(Command):
    """Accepted only from the current incarnation of an `up` node; its commit renews the
    sender's lease (the sender measures the lease on its own monotonic clock)."""

    type_name: ClassVar[str] = "heartbeat"
    node: str
    incarnation: str
    # The sender's applied Raft index when it sent this (None: unknown, as in entries written
    # before this field existed): a heartbeat from a replica that stopped advancing commits
    # but proves nothing about the sender being current (issue 8 item 8).
    applied_index: int | None = None
    # The sender's latest state checkpoint (None: none yet, or an agent older than the field):
    # compared with the other replicas' digests at the same index to find a diverged one.
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class DeclareFailed(Command):
    """Leader: `node` sent no heartbeat for too long. Refused if any heartbeat newer than
    `seq` was committed in between, so a slow leader can never declare a live node failed."""

    type_name: ClassVar[str] = "declare_failed"
    node: str
    seq: int
    evidence: FailureEvidence
    # Declared because its replica stopped advancing: still accepted after newer heartbeats
    # as long as the latest one reports an applied index below this (None: plain silence).
    behind_index: int | None = None
    # Declared because its replica's state diverged: still accepted after newer heartbeats as
    # long as its latest reported checkpoint is still this one (None: not for divergence).
    diverged: Checkpoint | None = None


@dataclass(frozen=True)
class FenceStarted(Command):
    """Leader: about to run the fence agents against `node`. Committing this first proves the
    leader is current before it powers anything off.

    `attempt` is the number this attempt gets in failure `epoch` (the node's committed
    `fence.attempts` + 1, decided on): refused when another start took that number, or while
    an earlier attempt has no verdict yet, so at most one fence of a node is in flight and a
    late re-delivery starts nothing. `None` only in commands written by agents before the
    field (replayed as they were applied: the next number, whatever is in flight)."""

    type_name: ClassVar[str] = "fence_started"
    node: str
    epoch: int
    leader: str
    at: float
    attempt: int | None = None


@dataclass(frozen=True)
class FenceResult(Command):
    """Outcome of a fence attempt (or of the watchdog deadline passing) for failure `epoch`.

    `attempt` names the power attempt this verdict is about (`FenceStarted.attempt`): it is
    applied only while that attempt is the one in flight, so the verdict of an attempt already
    decided (or given up by the leader, `ATTEMPT_ABANDONED`) is refused, never counted for a
    later one. `WATCHDOG_VERDICT` (0): the watchdog deadline passed, about no power attempt
    (one in flight stays in flight: it may still switch the node off). `None` only in commands
    written by agents before the field (replayed as they were applied: ends whatever attempt
    is in flight)."""

    type_name: ClassVar[str] = "fence_result"
    node: str
    epoch: int
    ok: bool
    method: FenceMethod
    detail: str
    at: float
    attempt: int | None = None


WATCHDOG_VERDICT = 0
"""`FenceResult.attempt` of a verdict that is about no power attempt (the watchdog deadline)."""

ATTEMPT_ABANDONED = "abandoned"
"""How the detail of a leader's failed verdict for another fencer's silent attempt begins."""


@dataclass(frozen=True)
class DefineGuest(Command):
    """Leader: register a protected guest from the config, or update its spec.

    `expect_version` is the guest's `spec_version` the leader decided on (0 for a new guest):
    a late re-delivery of an older definition is refused instead of undoing a newer one.
    `None` only in commands written by agents before 0.2 (replayed as they were applied)."""

    type_name: ClassVar[str] = "define_guest"
    spec: GuestSpec
    at: float
    expect_version: int | None = None


@dataclass(frozen=True)
class SetDesired(Command):
    """Admin: enable (running) or disable (stopped) a guest."""

    type_name: ClassVar[str] = "set_desired"
    guest: str
    desired: DesiredState
    by: str
    at: float
    expect_version: int | None = None  # the guest's admin_version it was decided on


@dataclass(frozen=True)
class SetMaintenance(Command):
    """Admin: a node in maintenance hosts no guests: its own are stopped and placed elsewhere,
    none are placed on it. It stays a voter and keeps its lease."""

    type_name: ClassVar[str] = "set_maintenance"
    node: str
    on: bool
    by: str
    at: float
    expect_version: int | None = None  # the node's admin_version it was decided on


@dataclass(frozen=True)
class ConfirmFenced(Command):
    """Admin: "I have verified that `node` is powered off" (`haagent node confirm-fenced`).
    Accepted only while the node is declared failed in failure `epoch` and not yet fenced; it
    then counts as fenced (method `manual`, audited with `by`) and its guests may move. The
    admin carries the risk the fence agents could not take away: see the README."""

    type_name: ClassVar[str] = "confirm_fenced"
    node: str
    epoch: int
    by: str
    at: float


@dataclass(frozen=True)
class GuestError(Command):
    """Leader: the guest failed on too many nodes; stop trying until an admin acts."""

    type_name: ClassVar[str] = "guest_error"
    guest: str
    generation: int
    reason: str
    at: float


@dataclass(frozen=True)
class ReplicaOutdated(Command):
    """Owner (the DRBD primary): it lost its peer and is about to write without it, so the
    peer's replica is behind from now on and must never be promoted. What a DRBD fence-peer
    handler does; committed through Raft so that every node knows it before a failover.
    Applies only from the owner at its generation, about the guest's other replica host."""

    type_name: ClassVar[str] = "replica_outdated"
    guest: str
    node: str
    by: str
    generation: int
    at: float


@dataclass(frozen=True)
class ReplicaUpToDate(Command):
    """Owner: the peer replica resynchronised and is UpToDate again."""

    type_name: ClassVar[str] = "replica_up_to_date"
    guest: str
    node: str
    by: str
    generation: int
    at: float


MAX_LEG_TEXT = 500
"""At most this many characters in a `LegStale` reason or a `LegFresh` evidence (`apply`
refuses longer ones): they are for humans, and every node keeps them in its state."""


@dataclass(frozen=True)
class LegStale(Command):
    """Owner of a raid1 guest: the guest is about to start, or runs, without `leg`, so that
    leg misses writes from `generation` on and must never be started from alone. Committed
    before a start without the leg, and as soon as a running guest is seen without it.
    Applies only from the owner at its generation; refused when it would leave the guest
    with no fresh leg (then nothing may start it: an admin must decide)."""

    type_name: ClassVar[str] = "leg_stale"
    guest: str
    leg: str
    by: str
    generation: int
    reason: str
    at: float


@dataclass(frozen=True)
class LegFresh(Command):
    """Owner of a raid1 guest: the guest's RAID1 resynced `leg` and reports it in sync,
    observed from inside the guest after the leg was re-attached (`evidence` says what was
    seen). Never proposed on a timer. Applies only from the owner at its generation."""

    type_name: ClassVar[str] = "leg_fresh"
    guest: str
    leg: str
    by: str
    generation: int
    evidence: str
    at: float


MAX_MISSING_NETWORKS = 64
"""At most this many names in one `NetworkCondition` (64 x 15 characters stays far below the
largest command): a node missing more reports the first 64 in name order, enough to refuse it
every guest that needs any of them is not promised, so `apply` refuses a longer list."""


@dataclass(frozen=True)
class NetworkCondition(Command):
    """A hypervisor: which of the host interfaces its possible guests need are missing, down
    or without carrier here (sorted names; empty: all work). Proposed only when it differs
    from the committed record, so a steady host adds nothing to the log. Accepted only from
    the current incarnation of an up node. It never touches the lease or the heartbeat
    sequence: losing a bridge is a placement fact, not a liveness one."""

    type_name: ClassVar[str] = "network_condition"
    node: str
    incarnation: str
    missing: tuple[str, ...]
    at: float


# -- admin verbs of issue 12 part 5 (applied by haagent.statemachine_admin) -------------------
#
# Each is conditional on the version of the record it was decided on (the guest's or node's
# `admin_version`, the cluster's `arming.version`), so a late re-delivery never undoes a newer
# decision, and each leaves an `AuditEntry` (who: `by`, when: `at`, why: `reason`).

MAX_REASON_CHARS = 200
"""An admin's `--reason` is at most this long (the API refuses longer; `apply` cuts it)."""


@dataclass(frozen=True)
class CleanupGuest(Command):
    """Admin: forget the guest's failure history (count, nodes that gave up, the error state)
    without stopping it (`haagent guest cleanup`)."""

    type_name: ClassVar[str] = "cleanup_guest"
    guest: str
    by: str
    reason: str
    at: float
    expect_version: int


@dataclass(frozen=True)
class MoveGuest(Command):
    """Admin: stop the guest where it runs and start it on `node` (`haagent guest move`).
    Accepted only if `node` may run it now (an up hypervisor out of maintenance, allowed by
    the guest, with its networks); naming the current owner cancels a pending move."""

    type_name: ClassVar[str] = "move_guest"
    guest: str
    node: str
    by: str
    reason: str
    at: float
    expect_version: int


@dataclass(frozen=True)
class SetArming(Command):
    """Admin (`haagent cluster disarm --for D` / `arm`), or the leader's automatic re-arm at
    the planned end. A disarm is refused while a fence or a recovery is in flight (a node
    failed and not yet handled, a guest still owned by a failed or fenced node)."""

    type_name: ClassVar[str] = "set_arming"
    disarm: bool
    for_s: float
    by: str
    reason: str
    at: float
    expect_version: int  # the cluster's arming.version it was decided on


@dataclass(frozen=True)
class SetFrozen(Command):
    """Admin (`haagent node freeze/thaw`): a frozen node is neither declared failed nor
    fenced and its guests do not move, so its agent can be restarted or upgraded. Freezing is
    accepted only for an up node."""

    type_name: ClassVar[str] = "set_frozen"
    node: str
    on: bool
    by: str
    reason: str
    at: float
    expect_version: int  # the node's admin_version it was decided on


@dataclass(frozen=True)
class WatchdogRearmed(Command):
    """A node: it armed its watchdog again after the cluster was re-armed (`arming_version`).
    Until this commits, its watchdog fence level is not trusted (core.fencing)."""

    type_name: ClassVar[str] = "watchdog_rearmed"
    node: str
    incarnation: str
    arming_version: int
    at: float


@dataclass(frozen=True)
class MigrateGuest(Command):
    """Admin (or the leader evacuating a node in maintenance): live-migrate the running guest
    from its owner to `node`. Accepted only while the guest runs at `expect_generation` (so a
    retry or a late copy does nothing once anything moved), on shared storage, towards an up
    hypervisor that may take it. It records the intent with the destination's generation
    (`expect_generation + 1`) and changes nothing else: the source keeps the guest until
    `MigrationDone` commits (README, "Live migration")."""

    type_name: ClassVar[str] = "migrate_guest"
    guest: str
    node: str
    expect_generation: int
    by: str
    at: float


@dataclass(frozen=True)
class MigrationDone(Command):
    """The source: libvirt reported the migration complete (the source's copy is shut off,
    the destination's is paused). Applies only from the owner at `generation` with the
    intent still pending: the destination becomes the owner at the intent's generation, and
    only then resumes its copy."""

    type_name: ClassVar[str] = "migration_done"
    guest: str
    node: str
    generation: int
    at: float


@dataclass(frozen=True)
class MigrationAborted(Command):
    """The source (libvirt refused or failed, the call timed out, the destination left) or the
    leader (the source or the destination left the cluster's trust): give up the pending
    migration at `generation`. The guest stays with its source and its generation grows past
    the intent's, so a leftover incoming copy on the destination is destroyed, never resumed."""

    type_name: ClassVar[str] = "migration_aborted"
    guest: str
    node: str
    generation: int
    reason: str
    at: float


@dataclass(frozen=True)
class MigrationResumed(Command):
    """The destination, now owner at `generation`: it resumed the migrated copy."""

    type_name: ClassVar[str] = "migration_resumed"
    guest: str
    node: str
    generation: int
    at: float


@dataclass(frozen=True)
class Assignment:
    guest: str
    node: str
    expected_generation: int


@dataclass(frozen=True)
class AssignGuests(Command):
    """Leader: give guests new owners. Each item applies only if the guest is still at
    `expected_generation` and is safe to move (no owner, owner fenced or gone, or stopped).
    Batched so that recovering a whole node is one commit."""

    type_name: ClassVar[str] = "assign_guests"
    assignments: tuple[Assignment, ...]
    reason: str
    at: float


@dataclass(frozen=True)
class GuestStarting(Command):
    """Owner: intends to start the stopped guest it owns at `generation`. Applying it moves
    the guest to generation + 1, the generation of this start, written into the domain and
    named by every later report about it. The start happens only after this commits
    (DESIGN.md rule 1: ownership is committed, not assumed)."""

    type_name: ClassVar[str] = "guest_starting"
    guest: str
    node: str
    generation: int
    at: float


@dataclass(frozen=True)
class GuestRunning(Command):
    type_name: ClassVar[str] = "guest_running"
    guest: str
    node: str
    generation: int
    at: float


@dataclass(frozen=True)
class GuestStopped(Command):
    """Owner: the guest is confirmed not running. `failed` counts a crash or failed start;
    `give_up` (decided by the owner from its configured limit) records that this node gave up
    on it, so the leader moves it elsewhere (and to `error` when too many gave up).
    `fresh_count`: the crashed instance had run for `failure_reset_s`, so the failure history
    (count, nodes that gave up) is forgotten and this crash counts as the first (absent in
    older agents' commands: False)."""

    type_name: ClassVar[str] = "guest_stopped"
    guest: str
    node: str
    generation: int
    failed: bool
    give_up: bool
    reason: str
    at: float
    fresh_count: bool = False


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.type_name: cls
    for cls in (
        Join,
        Leave,
        Heartbeat,
        DeclareFailed,
        FenceStarted,
        FenceResult,
        DefineGuest,
        SetDesired,
        AssignGuests,
        GuestStarting,
        GuestRunning,
        GuestStopped,
        SetMaintenance,
        GuestError,
        ReplicaOutdated,
        ReplicaUpToDate,
        ConfirmFenced,
        NetworkCondition,
        MigrateGuest,
        MigrationDone,
        MigrationAborted,
        MigrationResumed,
        LegStale,
        LegFresh,
        CleanupGuest,
        MoveGuest,
        SetArming,
        SetFrozen,
        WatchdogRearmed,
    )
}


def encode(command: Command) -> bytes:
    """Serialise a command for the Raft log."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": command.type_name}
    body.update(to_json(command))
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode(payload: bytes) -> Command:
    """Parse a command from the log. Raises CommandError with a readable reason.

    A command from a newer agent (unknown version or type) is refused, never half-understood:
    applying it differently from the nodes that understand it would split the state.
    """
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandError("not a JSON object")
    version = body.pop("v", None)
    type_name = body.pop("type", None)
    if version not in SUPPORTED_VERSIONS:
        raise CommandError(
            f"command version {version!r} is not supported by this agent "
            f"(supports {sorted(SUPPORTED_VERSIONS)}); upgrade this node"
        )
    cls = COMMAND_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise CommandError(f"unknown command type {type_name!r}; upgrade this node")
    try:
        command: Command = from_json(cls, body)
    except DecodeError as exc:
        raise CommandError(f"bad {type_name} command: {exc}") from None
    return command
