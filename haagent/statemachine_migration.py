"""`apply` for live migration: the intent, the hand-over, the abort and the resume.

Pure and deterministic like `haagent.statemachine` (which dispatches here; the checks
both share are in `haagent.statemachine_checks`). Each handler returns the new state and a
refusal ("" when accepted) or a note for an accepted no-op, as the admin handlers do
(`haagent.statemachine_admin.Handled`); the caller turns that into a `Result`.

A migration is conditional twice over (DESIGN rules 1 and 7): the intent on the generation
it was decided on, every later report on the intent's generation, so a late or repeated
report is refused instead of moving the guest again. Why a hand-over changes the owner only
while the source still owns the guest and the destination is up: README, "Live migration".
"""

from __future__ import annotations

from dataclasses import replace

from haagent.commands import MigrateGuest, MigrationAborted, MigrationDone, MigrationResumed
from haagent.model import (
    ClusterState,
    DesiredState,
    GuestRecord,
    GuestState,
    Migration,
    MigrationPhase,
    NodeState,
)
from haagent.statemachine_admin import Handled, stale
from haagent.statemachine_checks import owner_check, target_refusal

Found = tuple[GuestRecord, Migration]
"""A guest record and its migration, as a check found them."""

MIGRATION_STORAGE_REFUSAL = (
    "live migration needs shared storage ({storage} is not: DRBD dual-primary is not "
    "supported); stop it and let it start elsewhere instead"
)


def migration_refusal(state: ClusterState, guest: GuestRecord, node: str) -> str:
    """Why `guest` may not be live-migrated to `node` now ("" if it may). The same checks as
    `apply` makes, so the API and the leader can refuse early with the same words."""
    if guest.storage_kind_blocks_migration:
        return MIGRATION_STORAGE_REFUSAL.format(storage=guest.spec.storage)
    if guest.desired is not DesiredState.RUNNING or guest.state is not GuestState.RUNNING:
        return f"{guest.name} is {guest.state} (desired {guest.desired}), not running"
    if guest.migrating is not None:
        m = guest.migrating
        return f"{guest.name} is already migrating ({m.source} -> {m.dest}, {m.phase})"
    if guest.owner is None or state.node(guest.owner).state is not NodeState.UP:
        return f"its owner {guest.owner} is not up"
    if node == guest.owner:
        return f"{guest.name} already runs on {node}"
    return target_refusal(state, guest.spec, node)


def ended(migration: Migration | None, why: str, at: float) -> Migration | None:
    """A migration record once the guest stopped or changed owner: one still in flight is
    aborted (a pending one's incoming copy is then destroyed; a handed-over one was never
    resumed), a finished one is kept for status."""
    if migration is None or not migration.in_flight:
        return migration
    return replace(migration, phase=MigrationPhase.ABORTED, reason=why, changed_at=at)


def migrate_guest(state: ClusterState, c: MigrateGuest) -> Handled:
    """Record the intent to move the running guest to `c.node`, at the generation the
    hand-over will give it."""
    guest = state.guests.get(c.guest)
    if guest is None:
        return state, f"unknown guest {c.guest!r}", ""
    if guest.generation != c.expect_generation:
        return state, stale("migration", c.expect_generation, guest.generation), ""
    why = migration_refusal(state, guest, c.node)
    if why:
        return state, why, ""
    assert guest.owner is not None
    intent = Migration(
        source=guest.owner,
        dest=c.node,
        generation=guest.generation + 1,
        by=c.by,
        started_at=c.at,
        changed_at=c.at,
    )
    record = replace(
        guest, migration=intent, reason=f"migrating to {c.node} (by {c.by})", changed_at=c.at
    )
    return state.with_guest(record), "", ""


def _pending(state: ClusterState, guest_name: str, generation: int) -> Found | str:
    """The guest and its pending migration, or why there is none at `generation` (the
    intent's, which every report of the source names)."""
    guest = state.guests.get(guest_name)
    if guest is None:
        return f"unknown guest {guest_name!r}"
    m = guest.migration
    if m is None or m.phase is not MigrationPhase.PENDING:
        return f"{guest_name} has no pending migration"
    if guest.generation != generation:
        return f"{guest_name} is at generation {guest.generation}, not {generation}"
    return guest, m


def migration_done(state: ClusterState, c: MigrationDone) -> Handled:
    """The source reports libvirt's migration complete: the hand-over. The destination
    becomes the owner at the intent's generation; its copy stays paused until it resumes."""
    found = _pending(state, c.guest, c.generation)
    if isinstance(found, str):
        return state, found, ""
    why = owner_check(state, c.guest, c.node, c.generation)
    if why:
        return state, why, ""
    guest, m = found
    if guest.state is not GuestState.RUNNING:
        return state, f"{c.guest} is {guest.state}, not running", ""
    if state.node(m.dest).state is not NodeState.UP:
        return state, f"the destination {m.dest} is {state.node(m.dest).state}", ""
    record = replace(
        guest,
        owner=m.dest,
        generation=m.generation,
        failures=0,
        migration=replace(m, phase=MigrationPhase.HANDED_OVER, changed_at=c.at),
        reason=f"migrated from {m.source}",
        changed_at=c.at,
    )
    return state.with_guest(record), "", ""


def migration_aborted(state: ClusterState, c: MigrationAborted) -> Handled:
    """A pending migration ends without a hand-over; the guest stays with its owner."""
    found = _pending(state, c.guest, c.generation)
    if isinstance(found, str):
        return state, found, ""
    guest, m = found
    # The intent's generation is spent: the guest moves past it, so the incoming copy (which
    # carries it) is never mistaken for a later start, and a late migrate call is refused.
    record = replace(
        guest,
        generation=m.generation,
        migration=replace(m, phase=MigrationPhase.ABORTED, reason=c.reason, changed_at=c.at),
        reason=f"migration to {m.dest} aborted: {c.reason}",
        changed_at=c.at,
    )
    return state.with_guest(record), "", ""


def migration_resumed(state: ClusterState, c: MigrationResumed) -> Handled:
    """The new owner resumed its copy: the migration is done."""
    why = owner_check(state, c.guest, c.node, c.generation)
    if why:
        return state, why, ""
    guest = state.guests[c.guest]
    m = guest.migration
    if m is None or m.phase is not MigrationPhase.HANDED_OVER or m.dest != c.node:
        return state, f"{c.guest} has no migration handed over to {c.node}", ""
    record = replace(guest, migration=replace(m, phase=MigrationPhase.DONE, changed_at=c.at))
    return state.with_guest(record), "", ""
