"""`apply` for live migration: the hand-over protocol's rules that live in the state machine
(haagent.core.migration has the protocol). Each test breaks one rule's precondition."""

from __future__ import annotations

from haagent.commands import (
    AssignGuests,
    Assignment,
    DeclareFailed,
    FenceResult,
    GuestStopped,
    MigrateGuest,
    MigrationAborted,
    MigrationDone,
    MigrationResumed,
    SetMaintenance,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    GuestState,
    MigrationPhase,
    StorageKind,
)
from haagent.ports import ConsensusView
from haagent.status import build_status, format_status
from tests.helpers.core_views import cluster, run, with_guest_on

SPEC = GuestSpec("g", "g", 256)


def running_on_n1(spec: GuestSpec = SPEC) -> ClusterState:
    """n1, n2, n3 up; g running on n1 at generation 2."""
    return with_guest_on(cluster("n1", "n2", "n3"), "n1", spec=spec)


def test_intent_changes_nothing_but_the_record() -> None:
    state = running_on_n1()
    after, (r,) = run(state, MigrateGuest("g", "n2", 2, "admin", 1.0))
    assert r.accepted, r.detail
    g = after.guests["g"]
    assert (g.owner, g.generation, g.state) == ("n1", 2, GuestState.RUNNING)
    assert g.migration is not None
    assert (g.migration.source, g.migration.dest, g.migration.generation) == ("n1", "n2", 3)
    assert g.migration.phase is MigrationPhase.PENDING


def test_intent_is_conditional_on_the_generation() -> None:
    state = running_on_n1()
    _, (r,) = run(state, MigrateGuest("g", "n2", 1, "admin", 1.0))
    assert not r.accepted and "stale migration" in r.detail


def test_intent_refusals() -> None:
    state = running_on_n1()
    drbd = running_on_n1(
        GuestSpec("g", "g", 256, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"))
    )
    in_maintenance, _ = run(state, SetMaintenance("n2", True, "admin", 1.0))
    cases = [
        (state, MigrateGuest("g", "n1", 2, "a", 1.0), "already runs on n1"),
        (state, MigrateGuest("g", "n9", 2, "a", 1.0), "not an up hypervisor"),
        (in_maintenance, MigrateGuest("g", "n2", 2, "a", 1.0), "in maintenance"),
        (drbd, MigrateGuest("g", "n2", 2, "a", 1.0), "DRBD dual-primary is not supported"),
    ]
    for before, command, why in cases:
        _, (r,) = run(before, command)
        assert not r.accepted and why in r.detail, (command, r.detail)
    pending, _ = run(state, MigrateGuest("g", "n2", 2, "a", 1.0))
    _, (r,) = run(pending, MigrateGuest("g", "n3", 2, "a", 1.0))
    assert not r.accepted and "already migrating" in r.detail


def test_hand_over_makes_the_destination_owner_at_the_new_generation() -> None:
    state, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    after, (r,) = run(state, MigrationDone("g", "n1", 2, 2.0))
    assert r.accepted, r.detail
    g = after.guests["g"]
    assert (g.owner, g.generation, g.state) == ("n2", 3, GuestState.RUNNING)
    assert g.migration is not None and g.migration.phase is MigrationPhase.HANDED_OVER
    done, (r,) = run(after, MigrationResumed("g", "n2", 3, 3.0))
    assert r.accepted and done.guests["g"].migration.phase is MigrationPhase.DONE  # type: ignore[union-attr]


def test_hand_over_only_from_the_source_with_the_intent_pending() -> None:
    state = running_on_n1()
    _, (r,) = run(state, MigrationDone("g", "n1", 2, 2.0))
    assert not r.accepted and "no pending migration" in r.detail
    pending, _ = run(state, MigrateGuest("g", "n2", 2, "admin", 1.0))
    _, (r,) = run(pending, MigrationDone("g", "n2", 2, 2.0))
    assert not r.accepted  # not the owner
    # Twice: the second is about a migration that is no longer pending.
    _, results = run(pending, MigrationDone("g", "n1", 2, 2.0), MigrationDone("g", "n1", 2, 2.0))
    assert [r.accepted for r in results] == [True, False]


def test_no_hand_over_to_a_destination_that_is_not_up() -> None:
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    failed, _ = run(pending, DeclareFailed("n2", 1, FailureEvidence("n1", 1, 2.0, "x", 0.0)))
    _, (r,) = run(failed, MigrationDone("g", "n1", 2, 2.0))
    assert not r.accepted and "destination n2 is failed" in r.detail


def test_abort_spends_the_intents_generation() -> None:
    """After an abort the incoming copy's generation is the committed one but the owner is
    the source: the destination destroys it. A late hand-over or migrate is refused."""
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    after, (r,) = run(pending, MigrationAborted("g", "n1", 2, "libvirt error", 2.0))
    assert r.accepted
    g = after.guests["g"]
    assert (g.owner, g.generation, g.state) == ("n1", 3, GuestState.RUNNING)
    assert g.migration is not None and g.migration.phase is MigrationPhase.ABORTED
    _, results = run(after, MigrationDone("g", "n1", 2, 3.0), MigrationDone("g", "n1", 3, 3.0))
    assert not any(r.accepted for r in results)


def test_resume_report_only_after_a_hand_over_to_that_node() -> None:
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    _, (r,) = run(pending, MigrationResumed("g", "n2", 3, 2.0))
    assert not r.accepted


def test_reassignment_ends_a_pending_migration() -> None:
    """The source was fenced mid-way: the new owner's assignment aborts the migration, so the
    destination no longer recognises its paused copy."""
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    fenced, results = run(
        pending,
        DeclareFailed("n1", 1, FailureEvidence("n2", 1, 2.0, "x", 0.0)),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 2.0),
        AssignGuests((Assignment("g", "n3", 2),), "placed", 3.0),
    )
    assert all(r.accepted for r in results), results
    g = fenced.guests["g"]
    assert g.owner == "n3" and g.migration is not None
    assert g.migration.phase is MigrationPhase.ABORTED


def test_stop_on_the_source_ends_a_pending_migration() -> None:
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "admin", 1.0))
    after, (r,) = run(pending, GuestStopped("g", "n1", 2, True, False, "crashed", 2.0))
    assert r.accepted
    assert after.guests["g"].migration.phase is MigrationPhase.ABORTED  # type: ignore[union-attr]


def test_status_shows_migrations_in_flight_and_their_outcomes() -> None:
    pending, _ = run(running_on_n1(), MigrateGuest("g", "n2", 2, "api@n1", 1.0))
    aborted, _ = run(pending, MigrationAborted("g", "n1", 2, "libvirt: no route", 2.0))
    for state, line in (
        (pending, "MIGRATING g: n1 -> n2 (generation 3), pending"),
        (aborted, "migration of g n1 -> n2 (generation 3): aborted: libvirt: no route"),
    ):
        doc = build_status(
            node="n1",
            cluster="c",
            pid=1,
            incarnation="i",
            view=ConsensusView(state=state),
            now=0.0,
            lease_until=1.0,
            loop_age_s=0.0,
            local={},
        )
        m = doc["guests"]["g"]["migration"]
        assert (m["source"], m["dest"], m["generation"]) == ("n1", "n2", 3)
        assert line in format_status(doc)
