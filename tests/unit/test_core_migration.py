"""The live-migration protocol in the core (haagent.core.migration, driven through AgentCore):
the destination keeps the incoming copy paused and never resumes it before the hand-over
commits, destroys it once the migration ended any other way; the source migrates only with
the intent committed and a lease, and commits what libvirt answered; maintenance waits for
an evacuation intent instead of stopping a guest that can migrate."""

from __future__ import annotations

from haagent.agent import (
    ActionResult,
    DestroyDomain,
    LiveMigrate,
    ResumeGuest,
    StopGuest,
)
from haagent.commands import (
    Heartbeat,
    MigrateGuest,
    MigrationAborted,
    MigrationDone,
    MigrationResumed,
    SetMaintenance,
)
from haagent.core.settings import NodeSettings
from haagent.model import FenceMethod, NodeRole
from haagent.ports import DomainObservation
from tests.helpers.core_views import ACCEPTED, build, commands, core, local, of, running_on_n1, view
from tests.helpers.core_views import with_lease as lease

URIS = {
    n: NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, 5.0, migration_uri=f"x://{n}/s")
    for n in ("n1", "n2", "n3")
}
SOURCE_COPY = DomainObservation("dom-g", True, owner="n1", generation=2, cluster="c")
INCOMING = DomainObservation("dom-g", True, owner="n2", generation=3, cluster="c", paused=True)
RESUMED = DomainObservation("dom-g", True, owner="n2", generation=3, cluster="c")


def pending():  # type: ignore[no-untyped-def]
    return build(MigrateGuest("g", "n2", 2, "admin", 1.0), state=running_on_n1())


def test_destination_keeps_the_incoming_copy_paused_while_pending() -> None:
    c = core("n2", nodes=URIS)
    state = pending()
    lease(c, state, 10.0)
    # Over several seconds, so also once its view is proven fresh (no "foreign" either).
    for i in range(40):
        now = 10.1 + i * 0.1
        step = c.tick(now, view(state), local(now, INCOMING))
        for p in step.proposals:
            if isinstance(p.command, Heartbeat):
                c.proposal_done(p.key, ACCEPTED, now + 0.01)
        assert c.lease_valid(now)
        assert not of(DestroyDomain, step.actions), step
        assert not of(ResumeGuest, step.actions), step


def test_destination_resumes_only_after_the_hand_over() -> None:
    c = core("n2", nodes=URIS)
    state = build(MigrationDone("g", "n1", 2, 2.0), state=pending())
    lease(c, state, 10.0)
    step = c.tick(10.1, view(state), local(10.1, INCOMING))
    assert of(ResumeGuest, step.actions) == [ResumeGuest("g", "dom-g", 3)]
    c.action_done(ResumeGuest("g", "dom-g", 3).key, ActionResult(True), 10.2)
    step = c.tick(10.3, view(state), local(10.3, RESUMED))
    assert [x for x in commands(step) if isinstance(x, MigrationResumed)]


def test_no_resume_without_a_lease() -> None:
    c = core("n2", nodes=URIS)
    state = build(MigrationDone("g", "n1", 2, 2.0), state=pending())
    step = c.tick(10.1, view(state), local(10.1, INCOMING))
    assert not of(ResumeGuest, step.actions)


def test_destination_destroys_the_copy_once_the_migration_was_aborted() -> None:
    c = core("n2", nodes=URIS)
    state = build(MigrationAborted("g", "n1", 2, "libvirt error", 2.0), state=pending())
    lease(c, state, 10.0)
    step = c.tick(10.1, view(state), local(10.1, INCOMING))
    (destroy,) = of(DestroyDomain, step.actions)
    assert destroy.domain == "dom-g"  # type: ignore[attr-defined]
    assert not of(ResumeGuest, step.actions)


def test_source_migrates_only_with_the_intent_and_a_lease() -> None:
    c = core("n1", nodes=URIS)
    assert not of(LiveMigrate, c.tick(10.0, view(pending()), local(10.0, SOURCE_COPY)).actions)
    c = core("n1", nodes=URIS)
    lease(c, running_on_n1(), 10.0)
    step = c.tick(10.1, view(running_on_n1()), local(10.1, SOURCE_COPY))
    assert not of(LiveMigrate, step.actions)  # no intent
    step = c.tick(10.2, view(pending()), local(10.2, SOURCE_COPY))
    (migrate,) = of(LiveMigrate, step.actions)
    assert (migrate.dest, migrate.dest_uri, migrate.generation, migrate.dest_generation) == (  # type: ignore[attr-defined]
        "n2",
        "x://n2/s",
        2,
        3,
    )


def test_source_commits_the_hand_over_or_the_abort_libvirt_answered() -> None:
    for ok, expected in ((True, MigrationDone), (False, MigrationAborted)):
        c = core("n1", nodes=URIS)
        state = pending()
        lease(c, state, 10.0)
        (migrate,) = of(LiveMigrate, c.tick(10.1, view(state), local(10.1, SOURCE_COPY)).actions)
        c.action_done(migrate.key, ActionResult(ok, "" if ok else "refused by libvirt"), 10.3)  # type: ignore[attr-defined]
        after = DomainObservation("dom-g", False) if ok else SOURCE_COPY
        step = c.tick(10.4, view(state), local(10.4, after))
        (command,) = [x for x in commands(step) if isinstance(x, MigrationDone | MigrationAborted)]
        assert isinstance(command, expected)
        # The source's copy, off after a completed migration, is not reported as a crash.
        assert not [x for x in commands(step) if type(x).__name__ == "GuestStopped"]


def test_maintenance_waits_for_the_evacuation_intent_instead_of_stopping() -> None:
    state = build(SetMaintenance("n1", True, "admin", 1.0), state=running_on_n1())
    with_uris, without = core("n1", nodes=URIS), core("n1")
    for c in (with_uris, without):
        lease(c, state, 10.0)
    assert not of(StopGuest, with_uris.tick(10.1, view(state), local(10.1, SOURCE_COPY)).actions)
    assert of(StopGuest, without.tick(10.1, view(state), local(10.1, SOURCE_COPY)).actions)


def test_the_leader_evacuates_a_node_in_maintenance_by_live_migration() -> None:
    state = build(SetMaintenance("n1", True, "admin", 1.0), state=running_on_n1())
    c = core("n2", nodes=URIS)
    lease(c, state, 10.0)
    step = c.tick(10.1, view(state, leader=True), local(10.1))
    (intent,) = [x for x in commands(step) if isinstance(x, MigrateGuest)]
    assert (intent.guest, intent.expect_generation) == ("g", 2)
    assert intent.node in ("n2", "n3")
