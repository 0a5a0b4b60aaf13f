"""`apply(state, command)`: the one replicated state machine.

Pure and deterministic: every node applies the same committed commands in the same order and
must reach the same state, so nothing here may read a clock, the environment or a config file.
A refused command leaves the state unchanged except for the `applied` counter; the refusal is
returned to the proposer as a `Result`, never raised.

The safety rules of DESIGN.md that live here:
- ownership changes only when the guest is safe to move (`_movable`): no owner, owner fenced,
  owner left cleanly, or the owner itself confirmed the guest stopped. A merely *failed* owner's
  guests stay put until a fence is committed (rule 4).
- every change of owner and every start bumps the generation (rule 1), and every owner
  report names the generation it is about, so a stale or duplicated report is refused (rule 7).
- heartbeats, declarations and fence results are conditional on sequence numbers and epochs,
  so a declaration can never overtake a heartbeat that was committed before it.

The admin verbs' handlers live in `haagent.statemachine_admin`, live migration's in
`haagent.statemachine_migration`, fencing's in `haagent.statemachine_fencing`, an owner's
reports about its guests in `haagent.statemachine_reports`; `apply` dispatches to them.
Checks several commands make (`owner_check`, `target_refusal`) are in
`haagent.statemachine_checks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import haagent.statemachine_admin as admin
import haagent.statemachine_fencing as fencing
import haagent.statemachine_migration as migration
import haagent.statemachine_reports as reports
from haagent.commands import (
    MAX_MISSING_NETWORKS,
    AssignGuests,
    CleanupGuest,
    Command,
    ConfirmFenced,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    FenceStarted,
    GuestError,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    Heartbeat,
    Join,
    Leave,
    LegFresh,
    LegStale,
    MigrateGuest,
    MigrationAborted,
    MigrationDone,
    MigrationResumed,
    MoveGuest,
    NetworkCondition,
    ReplicaOutdated,
    ReplicaUpToDate,
    SetArming,
    SetDesired,
    SetFrozen,
    SetMaintenance,
    WatchdogRearmed,
)
from haagent.model import (
    ClusterState,
    DesiredState,
    FenceRecord,
    GuestRecord,
    GuestSpec,
    GuestState,
    NodeState,
)
from haagent.statemachine_checks import target_refusal
from haagent.statemachine_migration import ended


@dataclass(frozen=True)
class Result:
    """What applying a command did. `accepted` False means the state did not change."""

    accepted: bool
    detail: str = ""


OK = Result(True)


def apply(state: ClusterState, command: Command) -> tuple[ClusterState, Result]:
    """Apply one committed command. Never raises for a well-typed command."""
    handler = _HANDLERS[type(command)]
    new_state, result = handler(state, command)
    return new_state.with_applied(state.applied + 1), result


def _refuse(state: ClusterState, detail: str) -> tuple[ClusterState, Result]:
    return state, Result(False, detail)


def _join(state: ClusterState, c: Join) -> tuple[ClusterState, Result]:
    rec = state.node(c.node)
    if rec.state in (NodeState.FAILED, NodeState.FENCED) and not c.clean:
        return _refuse(
            state,
            f"{c.node} is {rec.state}: stop every protected guest before rejoining",
        )
    if rec.state in (NodeState.FAILED, NodeState.FENCED) and rec.fence.in_progress_by is not None:
        # A fence agent may be switching this host off right now: a join accepted before its
        # verdict would be powered off as an "up" node and refused as stale (issue 8). It
        # waits: a successful fence makes it FENCED (it rejoins as a fresh, fenced node), a
        # failed one clears the attempt and the normal rejoin applies. A node fenced by
        # another proof (its watchdog deadline, an admin) while a power attempt is in flight
        # waits for that attempt's verdict too, or for the leader to give it up once it can
        # no longer act (core.fencing).
        return _refuse(
            state,
            f"{fencing.FENCE_PENDING}: {c.node} (failure {rec.failure_epoch}, attempt "
            f"{rec.fence.attempts} by {rec.fence.in_progress_by}); rejoin after its verdict",
        )
    drift = _config_drift(state, c)
    if drift is not None:
        return _refuse(state, drift)
    if (
        rec.state is NodeState.UP
        and rec.incarnation == c.incarnation
        and rec.role is c.role
        and rec.watchdog_timeout_s == c.watchdog_timeout_s
    ):
        applied_index = _newest_index(rec.applied_index, c.applied_index)
        if rec.applied_index != applied_index:
            # A repeated join is no heartbeat (the sequence stays), but what it says about the
            # sender's replica counts: a stuck replica stays visible as stuck.
            return state.with_node(replace(rec, applied_index=applied_index)), Result(
                True, "already joined"
            )
        return state, Result(True, "already joined")
    reason = "joined" if rec.state is NodeState.DOWN else f"rejoined (was {rec.state})"
    fence = rec.fence if rec.state is NodeState.UP else FenceRecord()
    evidence = rec.evidence if rec.state is NodeState.UP else None
    # A join counts as a heartbeat: bumping the sequence makes any declaration decided before
    # it (conditional on the old sequence) fail, so a rejoining node is never declared failed
    # on evidence older than its join.
    new = replace(
        rec,
        role=c.role,
        state=NodeState.UP,
        incarnation=c.incarnation,
        heartbeat_seq=rec.heartbeat_seq + 1,
        applied_index=c.applied_index,
        evidence=evidence,
        fence=fence,
        reason=reason,
        changed_at=c.at,
        watchdog_timeout_s=c.watchdog_timeout_s,
        config_digest=c.config_digest,
        checkpoint=None,
        # A joining incarnation armed its watchdog (or found the predecessor's countdown
        # running), unless the cluster is disarmed, when its agent releases it.
        watchdog_released=state.arming.disarmed,
    )
    return state.with_node(new), OK


CONFIG_DRIFT = "config differs from the cluster's"
"""How the refusal of a join for a different config begins: the refused agent reads it as
"my file is not the cluster's" (`haagent.core.lease`)."""


def _config_drift(state: ClusterState, c: Join) -> str | None:
    """Why `c` may not join: another node that has not left cleanly joined with a different
    cluster-wide config.

    The cluster's config is the one its nodes joined with (the first node up sets it). It
    changes only once every other node has left cleanly (`Leave`, e.g. a stop of all agents)
    or rejoined with the new one: a failed or fenced node still holds it, since it comes back
    with its file and must be let in. Counting only up nodes let a node restarted with a
    drifted file, finding every other node away (failed, fenced), make its config the
    cluster's; the nodes with the original config, the majority, were then refused and the
    cluster never had a majority again (swarm seed 1722). A node whose file says otherwise
    gets no lease, so it never runs a guest under settings the others do not share. O(nodes),
    and only for joins. Agents older than the field (None) are not checked.
    """
    if c.config_digest is None:
        return None
    for name, other in state.nodes.items():
        if (
            name != c.node
            and other.state is not NodeState.DOWN
            and other.config_digest is not None
            and other.config_digest != c.config_digest
        ):
            where = (
                "and every up node"
                if other.state is NodeState.UP
                else f"{other.state}: it has not left cleanly"
            )
            return (
                f"{CONFIG_DRIFT}: {c.config_digest} here, {other.config_digest} on {name} ({where})"
            )
    return None


def _leave(state: ClusterState, c: Leave) -> tuple[ClusterState, Result]:
    rec = state.node(c.node)
    if rec.state is not NodeState.UP or rec.incarnation != c.incarnation:
        return _refuse(state, f"{c.node} is {rec.state} (incarnation {rec.incarnation!r})")
    busy = [
        g.name
        for g in state.guests_of(c.node)
        if g.state in (GuestState.STARTING, GuestState.RUNNING, GuestState.STOPPING)
    ]
    if busy:
        return _refuse(state, f"guests still active on {c.node}: {', '.join(sorted(busy))}")
    new = replace(rec, state=NodeState.DOWN, reason="left cleanly", changed_at=c.at)
    return state.with_node(new), OK


def _heartbeat(state: ClusterState, c: Heartbeat) -> tuple[ClusterState, Result]:
    rec = state.node(c.node)
    if rec.state is not NodeState.UP:
        return _refuse(state, f"{c.node} is {rec.state}")
    if rec.incarnation != c.incarnation:
        return _refuse(state, f"stale incarnation {c.incarnation!r} (current {rec.incarnation!r})")
    applied_index = _newest_index(rec.applied_index, c.applied_index)
    checkpoint = rec.checkpoint
    if c.checkpoint is not None and (checkpoint is None or c.checkpoint.index >= checkpoint.index):
        checkpoint = c.checkpoint  # a late or repeated heartbeat never reports an older one
    return state.with_node(rec.heard(rec.heartbeat_seq + 1, applied_index, checkpoint)), OK


def _newest_index(recorded: int | None, reported: int | None) -> int | None:
    """The applied index one incarnation reported last. It only grows within an incarnation,
    so a heartbeat that commits late or twice (pysyncobj re-sends queued commands) never makes
    a replica look further behind than a newer one already said; unknown stays unknown."""
    if recorded is None or reported is None:
        return reported
    return max(recorded, reported)


def _declare_failed(state: ClusterState, c: DeclareFailed) -> tuple[ClusterState, Result]:
    rec = state.node(c.node)
    if rec.state is not NodeState.UP:
        return _refuse(state, f"{c.node} is {rec.state}")
    if state.arming.disarmed:
        return _refuse(state, "the cluster is disarmed: no node is declared failed")
    if rec.frozen:
        return _refuse(state, f"{c.node} is frozen: it is not declared failed")
    still_behind = (
        c.behind_index is not None
        and rec.applied_index is not None
        and rec.applied_index < c.behind_index
    )
    still_diverged = c.diverged is not None and rec.checkpoint == c.diverged
    if rec.heartbeat_seq != c.seq and not still_behind and not still_diverged:
        return _refuse(state, f"{c.node} sent heartbeat {rec.heartbeat_seq} after {c.seq}")
    new = replace(
        rec,
        state=NodeState.FAILED,
        failure_epoch=rec.failure_epoch + 1,
        evidence=c.evidence,
        fence=FenceRecord(),
        reason=c.evidence.detail,
        changed_at=c.evidence.declared_at,
    )
    return state.with_node(new), OK


def _define_guest(state: ClusterState, c: DefineGuest) -> tuple[ClusterState, Result]:
    current = state.guests.get(c.spec.name)
    if current is None:
        if c.expect_version not in (None, 0):
            return _refuse(state, f"guest {c.spec.name!r} is not defined (stale definition)")
        record = GuestRecord(spec=c.spec, reason="defined", changed_at=c.at)
        return state.with_guest(record), OK
    if current.spec == c.spec:
        return state, Result(True, "unchanged")
    if c.expect_version is not None and c.expect_version != current.spec_version:
        return _refuse(state, admin.stale("definition", c.expect_version, current.spec_version))
    why = spec_change_blocked(current, c.spec)
    if why:
        return _refuse(state, why)
    # A leg that left the spec takes its staleness with it; one that stays keeps it (a leg
    # known stale stays stale whatever else changed).
    kept = tuple(s for s in current.stale_legs if c.spec.leg(s.leg) is not None)
    record = replace(current, spec=c.spec, spec_version=current.spec_version + 1, stale_legs=kept)
    return state.with_guest(record), OK


# Fields that name what runs and where its disks are: changing them under a live instance
# would leave that instance unrecognised (a second copy could start under the new name).
_IDENTITY_FIELDS = ("domain", "storage", "replica_nodes", "resource", "legs")


def spec_change_blocked(current: GuestRecord, spec: GuestSpec) -> str:
    """Why `spec` may not replace `current.spec` now ("" if it may). A change of the domain
    name or of the storage layout is applied only while the guest is stopped (disable it,
    let the change commit, enable it): the running instance carries the old identity."""
    changed = [f for f in _IDENTITY_FIELDS if getattr(current.spec, f) != getattr(spec, f)]
    if changed and current.state in (GuestState.STARTING, GuestState.RUNNING):
        return (
            f"guest {spec.name!r} is {current.state}: its {', '.join(changed)} can change only "
            "while it is stopped (disable it first)"
        )
    return ""


def _set_desired(state: ClusterState, c: SetDesired) -> tuple[ClusterState, Result]:
    current = state.guests.get(c.guest)
    if current is None:
        return _refuse(state, f"unknown guest {c.guest!r}")
    if c.expect_version is not None and c.expect_version != current.admin_version:
        return _refuse(
            state, admin.stale("enable/disable", c.expect_version, current.admin_version)
        )
    # Disabling or enabling is also how an admin clears the error state: it resets the count
    # and forgets the nodes that gave up on it.
    new_state = GuestState.STOPPED if current.state is GuestState.ERROR else current.state
    record = replace(
        current,
        admin_version=current.admin_version + 1,
        desired=c.desired,
        state=new_state,
        failures=0,
        failed_nodes=(),
        reason=f"{'enabled' if c.desired is DesiredState.RUNNING else 'disabled'} by {c.by}",
        changed_at=c.at,
    )
    return state.with_guest(record), OK


def movable(state: ClusterState, guest: GuestRecord) -> bool:
    """May this guest get a new owner without risking two running copies?

    Yes when it has no owner, when its owner is fenced or left cleanly (a clean leave requires
    all its guests stopped), or when the owner itself committed that the guest is stopped. A
    failed-but-unfenced owner keeps its guests: it might still be running them (rule 4).
    """
    if guest.owner is None:
        return True
    owner_state = state.node(guest.owner).state
    if owner_state in (NodeState.FENCED, NodeState.DOWN):
        return True
    return owner_state is NodeState.UP and guest.state in (GuestState.STOPPED, GuestState.ERROR)


def _assign(state: ClusterState, c: AssignGuests) -> tuple[ClusterState, Result]:
    refused: list[str] = []
    changed: dict[str, GuestRecord] = {}
    for a in c.assignments:
        guest = changed.get(a.guest) or state.guests.get(a.guest)
        why = ""
        if guest is None:
            why = "unknown guest"
        elif guest.generation != a.expected_generation:
            why = f"generation is {guest.generation}, not {a.expected_generation}"
        elif target_why := target_refusal(state, guest.spec, a.node):
            why = target_why
        elif not movable(state, guest):
            why = (
                f"owner {guest.owner} is {state.node(guest.owner or '').state}, guest {guest.state}"
            )
        if why or guest is None:
            refused.append(f"{a.guest}->{a.node}: {why}")
            continue
        previous = f" from {guest.owner}" if guest.owner else ""
        changed[a.guest] = replace(
            guest,
            owner=a.node,
            generation=guest.generation + 1,
            state=GuestState.STOPPED,
            failures=0,
            move_to=None,
            reason=f"{c.reason}{previous}",
            changed_at=c.at,
            # A new owner ends any migration: a copy the old destination still holds is no
            # longer recognised as incoming (README, "Live migration").
            migration=ended(guest.migration, "the guest was assigned elsewhere", c.at),
        )
    if not changed:
        return _refuse(state, "; ".join(refused))
    return state.with_guests(list(changed.values())), Result(True, "; ".join(refused))


def _set_maintenance(state: ClusterState, c: SetMaintenance) -> tuple[ClusterState, Result]:
    if c.node not in state.nodes:
        return _refuse(state, f"unknown node {c.node!r} (it never joined)")
    rec = state.nodes[c.node]
    if c.expect_version is not None and c.expect_version != rec.admin_version:
        return _refuse(state, admin.stale("maintenance", c.expect_version, rec.admin_version))
    reason = f"maintenance {'on' if c.on else 'off'} by {c.by}"
    new = replace(
        rec, maintenance=c.on, admin_version=rec.admin_version + 1, reason=reason, changed_at=c.at
    )
    return state.with_node(new), OK


def _network_condition(state: ClusterState, c: NetworkCondition) -> tuple[ClusterState, Result]:
    """Record what the node reported missing. Only its current incarnation speaks for it, and
    only the names change: no heartbeat, lease or guest is touched (a guest that needs a lost
    network moves through its owner's own stop, after the owner's hold-down)."""
    rec = state.node(c.node)
    if rec.state is not NodeState.UP or rec.incarnation != c.incarnation:
        return _refuse(state, f"{c.node} is {rec.state} (incarnation {rec.incarnation!r})")
    missing = tuple(sorted(set(c.missing)))
    if len(missing) > MAX_MISSING_NETWORKS:
        return _refuse(state, f"{len(missing)} missing networks (at most {MAX_MISSING_NETWORKS})")
    if missing == rec.missing_networks:
        return state, Result(True, "unchanged")
    return state.with_node(replace(rec, missing_networks=missing)), OK


def _handled(
    handler: Callable[[ClusterState, Any], admin.Handled],
) -> Callable[[ClusterState, Any], tuple[ClusterState, Result]]:
    def handle(state: ClusterState, c: Command) -> tuple[ClusterState, Result]:
        new_state, refusal, note = handler(state, c)
        return (state, Result(False, refusal)) if refusal else (new_state, Result(True, note))

    return handle


_HANDLERS: dict[type[Command], Callable[[ClusterState, Any], tuple[ClusterState, Result]]] = {
    Join: _join,
    Leave: _leave,
    Heartbeat: _heartbeat,
    DeclareFailed: _declare_failed,
    FenceStarted: _handled(fencing.fence_started),
    FenceResult: _handled(fencing.fence_result),
    DefineGuest: _define_guest,
    SetDesired: _set_desired,
    AssignGuests: _assign,
    GuestStarting: _handled(reports.guest_starting),
    GuestRunning: _handled(reports.guest_running),
    GuestStopped: _handled(reports.guest_stopped),
    GuestError: _handled(reports.guest_error),
    SetMaintenance: _set_maintenance,
    ReplicaOutdated: _handled(reports.replica),
    ReplicaUpToDate: _handled(reports.replica),
    ConfirmFenced: _handled(fencing.confirm_fenced),
    NetworkCondition: _network_condition,
    MigrateGuest: _handled(migration.migrate_guest),
    MigrationDone: _handled(migration.migration_done),
    MigrationAborted: _handled(migration.migration_aborted),
    MigrationResumed: _handled(migration.migration_resumed),
    LegStale: _handled(reports.leg),
    LegFresh: _handled(reports.leg),
    CleanupGuest: _handled(admin.cleanup_guest),
    MoveGuest: _handled(admin.move_guest),
    SetArming: _handled(admin.set_arming),
    SetFrozen: _handled(admin.set_frozen),
    WatchdogRearmed: _handled(admin.watchdog_rearmed),
}
