"""`apply` for the admin verbs of issue 12 part 5: cleanup, move, disarm/arm, freeze/thaw, and
the watchdog re-arm confirmation.

Pure and deterministic like `haagent.statemachine` (which dispatches here). Each handler
returns the new state and a refusal ("" when accepted) or a note for an accepted no-op; the
caller turns that into a `Result`. Every admin decision is conditional on the version of the
record it was decided on, so a late re-delivery of an older decision is refused instead of
undoing a newer one, and each accepted decision appends an `AuditEntry`.
"""

from __future__ import annotations

from dataclasses import replace

from haagent.commands import (
    MAX_REASON_CHARS,
    CleanupGuest,
    MoveGuest,
    SetArming,
    SetFrozen,
    WatchdogRearmed,
)
from haagent.model import (
    Arming,
    AuditEntry,
    ClusterState,
    DesiredState,
    GuestState,
    NodeRole,
    NodeState,
)

MAX_DISARM_S = 7 * 24 * 3600.0
"""The longest planned disarm: a week. Longer is refused; a cluster that stays disarmed for
good should be stopped instead (no fencing is no protection)."""

Handled = tuple[ClusterState, str, str]
"""(new state, refusal or "" when accepted, note for an accepted command)."""


def stale(what: str, expected: int, current: int) -> str:
    return (
        f"stale {what}: decided on version {expected}, the record is at version {current} "
        "(a newer decision won)"
    )


def _audit(state: ClusterState, action: str, by: str, reason: str, at: float) -> ClusterState:
    return state.audited(AuditEntry(action, by, reason[:MAX_REASON_CHARS], at))


def cleanup_guest(state: ClusterState, c: CleanupGuest) -> Handled:
    """Forget the failure history; an `error` guest becomes `stopped` (placed again), a
    running one keeps running (only its counts change)."""
    current = state.guests.get(c.guest)
    if current is None:
        return state, f"unknown guest {c.guest!r}", ""
    if c.expect_version != current.admin_version:
        return state, stale("cleanup", c.expect_version, current.admin_version), ""
    new_state = GuestState.STOPPED if current.state is GuestState.ERROR else current.state
    record = replace(
        current,
        admin_version=current.admin_version + 1,
        state=new_state,
        failures=0,
        failed_nodes=(),
        reason=f"failure history cleared by {c.by}",
        changed_at=c.at,
    )
    state = state.with_guest(record)
    return _audit(state, f"guest cleanup {c.guest}", c.by, c.reason, c.at), "", ""


def move_refusal(state: ClusterState, guest: str, node: str) -> str:
    """Why `guest` may not be moved to `node` now ("" if it may). The rules of placement that
    the committed state alone decides; capacity and anti-affinity, which depend on the
    config, are checked by the agent before it proposes (haagent.daemon.admin)."""
    current = state.guests.get(guest)
    if current is None:
        return f"unknown guest {guest!r}"
    target = state.node(node)
    if current.desired is not DesiredState.RUNNING:
        return f"{guest} is disabled: enable it first (a move stops and starts it)"
    if current.state is GuestState.ERROR:
        return f"{guest} is in error: clean it up first (haagent guest cleanup)"
    if target.state is not NodeState.UP or target.role is not NodeRole.HYPERVISOR:
        return f"{node} is not an up hypervisor (it is {target.state}, {target.role})"
    if target.maintenance:
        return f"{node} is in maintenance"
    if not current.spec.allows(node):
        return f"{node} may not run {guest} (allowed nodes or its replicas exclude it)"
    if node in current.outdated_nodes:
        return f"{node} holds an outdated replica of {guest}"
    if target.lacks(current.spec):
        return f"{node} lacks {', '.join(target.lacks(current.spec))}"
    owner = state.node(current.owner) if current.owner else None
    if owner is not None and owner.state is not NodeState.UP:
        return f"its owner {current.owner} is {owner.state}: recovery moves it"
    return ""


def move_guest(state: ClusterState, c: MoveGuest) -> Handled:
    current = state.guests.get(c.guest)
    if current is None:
        return state, f"unknown guest {c.guest!r}", ""
    if c.expect_version != current.admin_version:
        return state, stale("move", c.expect_version, current.admin_version), ""
    if c.node == current.owner:
        if current.move_to is None:
            return state, f"{c.guest} already runs on {c.node}", ""
        record = replace(
            current,
            admin_version=current.admin_version + 1,
            move_to=None,
            reason=f"move cancelled by {c.by}",
            changed_at=c.at,
        )
        state = state.with_guest(record)
        return _audit(state, f"guest move {c.guest} {c.node}", c.by, c.reason, c.at), "", ""
    why = move_refusal(state, c.guest, c.node)
    if why:
        return state, why, ""
    record = replace(
        current,
        admin_version=current.admin_version + 1,
        move_to=c.node,
        reason=f"moving to {c.node} (by {c.by})",
        changed_at=c.at,
    )
    state = state.with_guest(record)
    return _audit(state, f"guest move {c.guest} {c.node}", c.by, c.reason, c.at), "", ""


def disarm_refusal(state: ClusterState) -> str:
    """Why the cluster may not be disarmed now: a fence or a recovery is in flight. Disarming
    then would leave a failed node unfenced or its guests stranded, so the admin retries once
    it is over (refused with the reason, not queued: a queued disarm would take effect at a
    moment nobody chose)."""
    for name, rec in sorted(state.nodes.items()):
        if rec.state is NodeState.FAILED:
            return f"a fence is in flight: {name} is failed and not yet fenced; retry after it"
    for guest in state.guests.values():
        owner = state.node(guest.owner) if guest.owner else None
        if owner is not None and owner.state in (NodeState.FAILED, NodeState.FENCED):
            return (
                f"a recovery is in flight: {guest.name} is still owned by {owner.state} "
                f"{guest.owner}; retry after it"
            )
    return ""


def set_arming(state: ClusterState, c: SetArming) -> Handled:
    arming = state.arming
    if c.expect_version != arming.version:
        return state, stale("arm/disarm", c.expect_version, arming.version), ""
    if not c.disarm:
        if not arming.disarmed:
            return state, "", "already armed"
        new = replace(
            arming,
            disarmed=False,
            version=arming.version + 1,
            for_s=0.0,
            until_at=None,
            by=c.by,
            reason=c.reason[:MAX_REASON_CHARS],
            changed_at=c.at,
        )
        state = replace(state, arming=new)
        return _audit(state, "cluster arm", c.by, c.reason, c.at), "", ""
    if not 0 < c.for_s <= MAX_DISARM_S:
        return state, f"disarm for {c.for_s:g} s: must be more than 0 and at most a week", ""
    why = disarm_refusal(state)
    if why:
        return state, why, ""
    new = Arming(
        disarmed=True,
        version=arming.version + 1,
        for_s=c.for_s,
        until_at=round(c.at + c.for_s, 3),
        by=c.by,
        reason=c.reason[:MAX_REASON_CHARS],
        changed_at=c.at,
    )
    # Every watchdog counts as released from now on, until its node confirms it armed it again.
    nodes = {n: replace(r, watchdog_released=True) for n, r in state.nodes.items()}
    state = replace(state, arming=new, nodes=nodes)
    return _audit(state, f"cluster disarm for {c.for_s:g}s", c.by, c.reason, c.at), "", ""


def set_frozen(state: ClusterState, c: SetFrozen) -> Handled:
    if c.node not in state.nodes:
        return state, f"unknown node {c.node!r} (it never joined)", ""
    rec = state.nodes[c.node]
    if c.expect_version != rec.admin_version:
        return state, stale("freeze/thaw", c.expect_version, rec.admin_version), ""
    if c.on and rec.state is not NodeState.UP:
        return state, f"{c.node} is {rec.state}: only an up node can be frozen", ""
    verb = "frozen" if c.on else "thawed"
    new = replace(
        rec,
        frozen=c.on,
        admin_version=rec.admin_version + 1,
        reason=f"{verb} by {c.by}",
        changed_at=c.at,
    )
    state = state.with_node(new)
    action = f"node {'freeze' if c.on else 'thaw'} {c.node}"
    return _audit(state, action, c.by, c.reason, c.at), "", ""


def watchdog_rearmed(state: ClusterState, c: WatchdogRearmed) -> Handled:
    rec = state.node(c.node)
    if rec.state is not NodeState.UP or rec.incarnation != c.incarnation:
        return state, f"{c.node} is {rec.state} (incarnation {rec.incarnation!r})", ""
    if state.arming.disarmed or state.arming.version != c.arming_version:
        return state, f"not armed at version {c.arming_version} (arming is stale)", ""
    if not rec.watchdog_released:
        return state, "", "unchanged"
    return state.with_node(replace(rec, watchdog_released=False)), "", ""
