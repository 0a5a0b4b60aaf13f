"""`apply` for what an owner reports about its guest: starting, running, stopped, error, and
its storage (DRBD replica state, guest-RAID1 leg freshness).

Pure and deterministic like `haagent.statemachine`, which dispatches here. Every report names
the owner and the generation it is about (`owner_check`, DESIGN rules 1 and 7), so a late or
repeated report about an earlier start is refused instead of undoing what happened since.
Each handler returns the new state and a refusal ("" when accepted) or a note for an accepted
no-op (`haagent.statemachine_admin.Handled`); the caller turns that into a `Result`.
"""

from __future__ import annotations

from dataclasses import replace

from haagent.commands import (
    MAX_LEG_TEXT,
    GuestError,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    LegFresh,
    LegStale,
    ReplicaOutdated,
    ReplicaUpToDate,
)
from haagent.model import ClusterState, DesiredState, GuestState, StaleLeg, StorageKind
from haagent.statemachine_admin import Handled
from haagent.statemachine_checks import owner_check
from haagent.statemachine_migration import ended


def guest_starting(state: ClusterState, c: GuestStarting) -> Handled:
    why = owner_check(state, c.guest, c.node, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    if guest.desired is not DesiredState.RUNNING:
        return state, f"{c.guest} is disabled", ""
    if guest.state is not GuestState.STOPPED:
        return state, f"{c.guest} is {guest.state}", ""
    lacks = state.node(c.node).lacks(guest.spec)
    if lacks:
        return state, f"{c.node} lacks {', '.join(lacks)}", ""
    # Every start gets its own generation, not only every change of owner: the reports about
    # one start (running, stopped) name it, so a report about an earlier start that pysyncobj
    # delivers again later is refused instead of undoing what happened since.
    record = replace(
        guest,
        state=GuestState.STARTING,
        generation=guest.generation + 1,
        reason=f"starting on {c.node}",
        changed_at=c.at,
    )
    return state.with_guest(record), "", ""


def guest_running(state: ClusterState, c: GuestRunning) -> Handled:
    why = owner_check(state, c.guest, c.node, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    if guest.state is GuestState.RUNNING:
        return state, "", "already running"
    if guest.state is not GuestState.STARTING:
        # Only a committed start can be running: a late copy of a report about an earlier
        # start (same generation, before the next start) must not undo a stop.
        return state, f"{c.guest} is {guest.state}, not starting", ""
    record = replace(
        guest, state=GuestState.RUNNING, reason=f"running on {c.node}", changed_at=c.at
    )
    return state.with_guest(record), "", ""


def guest_stopped(state: ClusterState, c: GuestStopped) -> Handled:
    why = owner_check(state, c.guest, c.node, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    failures = guest.failures
    failed_nodes = guest.failed_nodes
    if c.failed and c.fresh_count:
        # A crash after a long stable run is a new problem, not the next step of an old one:
        # the history (count, nodes that gave up) is forgotten.
        failures, failed_nodes = 1, ()
    elif c.failed:
        failures = guest.failures + 1
    if c.give_up:
        # This owner gave up: the leader moves it on (or puts it in error).
        failures = 0
        if c.node not in failed_nodes:
            failed_nodes = (*failed_nodes, c.node)
    record = replace(
        guest,
        state=GuestState.STOPPED,
        failures=failures,
        failed_nodes=failed_nodes,
        reason=c.reason,
        changed_at=c.at,
        migration=ended(guest.migration, f"stopped on {c.node}", c.at),
    )
    return state.with_guest(record), "", ""


def guest_error(state: ClusterState, c: GuestError) -> Handled:
    guest = state.guests.get(c.guest)
    if guest is None:
        return state, f"unknown guest {c.guest!r}", ""
    if guest.generation != c.generation or guest.state is not GuestState.STOPPED:
        return state, f"{c.guest} is {guest.state} at generation {guest.generation}", ""
    record = replace(guest, state=GuestState.ERROR, reason=c.reason, changed_at=c.at)
    return state.with_guest(record), "", ""


def replica(state: ClusterState, c: ReplicaOutdated | ReplicaUpToDate) -> Handled:
    why = owner_check(state, c.guest, c.by, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    if guest.spec.peer_of(c.by) != c.node:
        return state, f"{c.node} holds no replica of {c.guest} next to {c.by}", ""
    outdated = tuple(n for n in guest.outdated_nodes if n != c.node)
    if isinstance(c, ReplicaOutdated):
        outdated = (*outdated, c.node)
    if outdated == guest.outdated_nodes:
        return state, "", "unchanged"
    return state.with_guest(replace(guest, outdated_nodes=outdated)), "", ""


def leg(state: ClusterState, c: LegStale | LegFresh) -> Handled:
    """Leg freshness of a raid1 guest, from its owner at its generation. The one rule kept
    here whatever the proposer believes: at least one leg stays fresh, since a guest is
    never started from stale legs alone (a stale-only guest would wait for an admin)."""
    why = owner_check(state, c.guest, c.by, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    if guest.spec.storage is not StorageKind.RAID1 or guest.spec.leg(c.leg) is None:
        return state, f"{c.guest} has no raid1 leg {c.leg!r}", ""
    text = c.reason if isinstance(c, LegStale) else c.evidence
    if len(text) > MAX_LEG_TEXT:
        return state, f"{c.type_name} text longer than {MAX_LEG_TEXT} characters", ""
    others = tuple(s for s in guest.stale_legs if s.leg != c.leg)
    if isinstance(c, LegFresh):
        if len(others) == len(guest.stale_legs):
            return state, "", "unchanged"
        record = replace(guest, stale_legs=others, reason=f"leg {c.leg} fresh: {c.evidence}")
        return state.with_guest(record), "", ""
    if guest.leg_stale(c.leg):
        return state, "", "unchanged"
    fresh = [leg.id for leg in guest.spec.legs if leg.id != c.leg and not guest.leg_stale(leg.id)]
    if not fresh:
        return state, f"{c.guest}: leg {c.leg} is its last fresh leg", ""
    stale = (*others, StaleLeg(c.leg, c.generation, c.by, c.reason))
    record = replace(guest, stale_legs=stale, reason=f"leg {c.leg} stale: {c.reason}")
    return state.with_guest(record), "", ""
