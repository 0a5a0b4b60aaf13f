"""The network-loss policy in the core (haagent.core.networks with core.migration): once the
owner's committed condition has lacked a guest's network for the hold-down, the leader (on
its own clock) commits a live-migration intent and the owner keeps the guest running for it;
a flapping link restarts both hold-downs; a migration that aborted from the owner falls back
to stop-and-restart and is not retried; with no node having the network nothing moves and
the owner says so; the owner never migrates without its lease."""

from __future__ import annotations

from dataclasses import replace

from haagent.agent import AgentCore, LiveMigrate, Step, StopGuest
from haagent.commands import Heartbeat, MigrateGuest, MigrationAborted
from haagent.core.migration import live_evacuable
from haagent.model import ClusterState, DesiredState, GuestState, StorageKind
from haagent.ports import ConsensusView
from haagent.status import build_status, format_status
from tests.helpers.core_views import ACCEPTED, build, commands, core, of, view, with_lease
from tests.unit.test_core_migration import URIS
from tests.unit.test_core_networks import HOLD_S, NET, local_net, lose, running_on_n1

LOST = "br-backend"


def lost_on_n1() -> ClusterState:
    return lose(running_on_n1("n1", "n2", "n3"), "n1", LOST)


def leader_pass(c: AgentCore, state: ClusterState, now: float) -> Step:
    """One pass as the Raft leader, its heartbeat committed (the lease stays valid)."""
    return committed(c, c.tick(now, view(state, leader=True), local_net(now, None, False)), now)


def owner_pass(c: AgentCore, state: ClusterState, now: float) -> Step:
    """One pass of the guest's owner (its domain running), its heartbeat committed."""
    return committed(c, c.tick(now, view(state), local_net(now, None)), now)


def committed(c: AgentCore, step: Step, now: float) -> Step:
    for p in step.proposals:
        if isinstance(p.command, Heartbeat):
            c.proposal_done(p.key, ACCEPTED, now + 0.01)
    return step


def intents(step: Step) -> list[MigrateGuest]:
    return [x for x in commands(step) if isinstance(x, MigrateGuest)]


def test_the_leader_commits_the_intent_only_after_its_own_hold_down() -> None:
    c = core("n2", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    state = lost_on_n1()
    now = 1.0
    leader_pass(c, state, now)  # the lease first
    start = now = 1.5
    while now < start + HOLD_S:
        assert not intents(leader_pass(c, state, now)), now
        now += 0.5
    (intent,) = intents(leader_pass(c, state, now))
    assert (intent.guest, intent.expect_generation, intent.by) == ("g", 2, "n2")
    assert intent.node in ("n2", "n3")


def test_the_owner_keeps_a_guest_that_can_migrate_running_past_the_hold_down() -> None:
    c = core("n1", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    state = lost_on_n1()
    said = []
    for i in range(6 * int(HOLD_S)):
        step = owner_pass(c, state, 1.0 + i * 0.5)
        assert not of(StopGuest, step.actions), i
        said += [e for e in step.events if e.name == "network_lost_migrates"]
    assert len(said) == 1  # once per loss
    # Without migration URIs the same loss stops it (stop-and-restart).
    plain = core("n1", guests=(NET,), network_hold_down_s=HOLD_S)
    stops = [of(StopGuest, owner_pass(plain, state, 1.0 + i * 0.5).actions) for i in range(24)]
    assert any(stops)


def test_a_flapping_link_restarts_the_leaders_hold_down() -> None:
    c = core("n2", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    healthy = running_on_n1("n1", "n2", "n3")
    lost = lose(healthy, "n1", LOST)
    leader_pass(c, healthy, 0.5)
    now = 1.0
    for flap in range(6):  # lost 6 s, back 1 s: never lost for a whole hold-down
        for _ in range(12):
            assert not intents(leader_pass(c, lost, now)), (flap, now)
            now += 0.5
        assert not intents(leader_pass(c, healthy, now))
        now += 1.0


def test_a_leader_that_led_again_counts_the_hold_down_afresh() -> None:
    c = core("n2", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    state = lost_on_n1()
    leader_pass(c, state, 0.5)
    for i in range(16):  # 8 s as the leader
        assert not intents(leader_pass(c, state, 1.0 + i * 0.5))
    with_lease(c, state, 9.5)  # one pass as a follower
    for i in range(12):  # 6 s as the leader again: 14 s of loss in all, 6 s of it seen leading
        assert not intents(leader_pass(c, state, 10.0 + i * 0.5))


def test_an_aborted_migration_falls_back_to_stop_and_restart_and_is_not_retried() -> None:
    state = build(
        MigrateGuest("g", "n2", 2, "n2", 1.0),
        MigrationAborted("g", "n1", 2, "libvirt: error", 2.0),
        state=lost_on_n1(),
    )
    owner = core("n1", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    stops = [of(StopGuest, owner_pass(owner, state, 1.0 + i * 0.5).actions) for i in range(24)]
    assert any(stops) and not any(stops[:20])  # after the hold-down (10 s), not before
    leader = core("n2", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    for i in range(60):
        assert not intents(leader_pass(leader, state, 1.0 + i * 0.5))


def test_with_no_node_having_the_network_nothing_moves_and_the_owner_says_so() -> None:
    state = lose(lose(lost_on_n1(), "n2", LOST), "n3", LOST)
    leader = core("n2", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    owner = core("n1", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    stays = []
    for i in range(60):
        assert not intents(leader_pass(leader, state, 1.0 + i * 0.5))
        step = owner_pass(owner, state, 1.0 + i * 0.5)
        assert not of(StopGuest, step.actions)
        stays += [e for e in step.events if e.name == "network_lost_stays"]
    assert len(stays) == 1


def test_a_network_evacuation_never_migrates_without_the_source_lease() -> None:
    state = build(MigrateGuest("g", "n2", 2, "n2", 1.0), state=lost_on_n1())
    c = core("n1", guests=(NET,), nodes=URIS, network_hold_down_s=HOLD_S)
    with_lease(c, state, 20.0)
    lapsed = 20.0 + c.settings.lease_s + 0.1
    step = c.tick(lapsed, view(state), local_net(lapsed, None))
    assert not of(LiveMigrate, step.actions)
    with_lease(c, state, 40.0)
    step = c.tick(40.0, view(state), local_net(40.0, None))
    (migrate,) = of(LiveMigrate, step.actions)
    assert (migrate.guest, migrate.dest) == ("g", "n2")


def test_live_evacuable_needs_uris_shared_storage_a_running_guest_and_no_abort_from_here() -> None:
    state = lost_on_n1()
    guest = state.guests["g"]
    with_uris = core("n1", nodes=URIS).settings
    assert live_evacuable(with_uris, guest)
    assert not live_evacuable(core("n1").settings, guest)
    drbd_spec = replace(guest.spec, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"))
    assert not live_evacuable(with_uris, replace(guest, spec=drbd_spec))
    assert not live_evacuable(with_uris, replace(guest, state=GuestState.STARTING))
    assert not live_evacuable(with_uris, replace(guest, desired=DesiredState.STOPPED))
    aborted = build(
        MigrateGuest("g", "n2", 2, "n2", 1.0),
        MigrationAborted("g", "n1", 2, "libvirt: error", 2.0),
        state=state,
    ).guests["g"]
    assert not live_evacuable(with_uris, aborted)


def test_the_status_says_what_becomes_of_a_guest_whose_owner_lacks_its_network() -> None:
    def said(state: ClusterState) -> tuple[object, str]:
        doc = build_status(
            node="n2",
            cluster="c",
            pid=1,
            incarnation="n2-inc",
            view=ConsensusView(state=state, leader="n1"),
            now=1.0,
            lease_until=2.0,
            loop_age_s=0.0,
            local={},
        )
        return doc["guests"]["g"]["network_loss"], format_status(doc)

    assert said(running_on_n1("n1", "n2", "n3"))[0] is None
    loss, text = said(lost_on_n1())
    assert loss == "n1 lacks br-backend: leaves after the hold-down (live migration where possible)"
    assert f"NETWORK g: {loss}" in text
    moving = build(MigrateGuest("g", "n2", 2, "n2", 1.0), state=lost_on_n1())
    assert said(moving)[0] == "n1 lacks br-backend: migrating to n2"
    nowhere = lose(lose(lost_on_n1(), "n2", LOST), "n3", LOST)
    assert said(nowhere)[0] == "n1 lacks br-backend: no other node has its networks, it stays"
