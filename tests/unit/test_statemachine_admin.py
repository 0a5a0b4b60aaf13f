"""`apply` for the admin verbs (issue 12 part 5): each is conditional on the version it was
decided on (a late re-delivery never undoes a newer decision), is audited, and refuses what
would be unsafe (a disarm while a fence or recovery is in flight, a move where the guest may
not run, a watchdog level trusted before its node confirmed the re-arm)."""

from __future__ import annotations

from haagent.commands import (
    AssignGuests,
    Assignment,
    CleanupGuest,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    GuestError,
    GuestStopped,
    Join,
    MoveGuest,
    SetArming,
    SetDesired,
    SetFrozen,
    SetMaintenance,
    WatchdogRearmed,
)
from haagent.model import (
    MAX_AUDIT_ENTRIES,
    DesiredState,
    FenceMethod,
    GuestSpec,
    GuestState,
    NodeRole,
    NodeState,
)
from haagent.ports import ConsensusView
from haagent.statemachine import apply
from haagent.status import build_status, format_status
from tests.helpers.core_views import cluster, evidence, fail, run, with_guest_on

WHO = "alice@laptop via api@n1"


def test_cleanup_forgets_failures_without_stopping_and_clears_an_error() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1")
    state, (r,) = run(state, GuestStopped("g", "n1", 2, True, False, "crashed", 0.0))
    assert r.accepted and state.guests["g"].failures == 1
    g = state.guests["g"]
    state, (r,) = run(state, CleanupGuest("g", WHO, "disk fixed", 5.0, g.admin_version))
    g2 = state.guests["g"]
    assert r.accepted and g2.failures == 0 and g2.failed_nodes == ()
    assert g2.state is g.state and g2.owner == g.owner and g2.generation == g.generation
    assert state.audit[-1].action == "guest cleanup g" and state.audit[-1].by == WHO
    assert state.audit[-1].reason == "disk fixed" and state.audit[-1].at == 5.0
    # An error guest becomes stopped again (placement picks it up).
    state, _ = run(state, GuestStopped("g", "n1", 2, True, True, "gave up", 0.0))
    state, _ = run(state, AssignGuests((Assignment("g", "n2", 2),), "relocate", 0.0))
    state, (r,) = run(state, GuestError("g", 3, "failed everywhere", 0.0))
    assert r.accepted and state.guests["g"].state is GuestState.ERROR
    version = state.guests["g"].admin_version
    state, (r,) = run(state, CleanupGuest("g", WHO, "", 6.0, version))
    assert r.accepted and state.guests["g"].state is GuestState.STOPPED


def test_a_late_cleanup_cannot_undo_a_newer_decision() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1")
    late = CleanupGuest("g", WHO, "", 1.0, 0)
    state, (r,) = run(state, SetDesired("g", DesiredState.STOPPED, "admin", 2.0, 0))
    assert r.accepted
    same, (r,) = run(state, late)
    assert not r.accepted and "stale cleanup" in r.detail
    assert same.guests == state.guests and same.audit == state.audit


def test_move_marks_the_target_and_only_an_assignment_to_it_clears_it() -> None:
    state = with_guest_on(cluster("n1", "n2", "n3"), "n1")
    state, (r,) = run(state, MoveGuest("g", "n2", WHO, "patch n1", 1.0, 0))
    assert r.accepted and state.guests["g"].move_to == "n2"
    # The owner still runs it until it stops it; a move neither changes owner nor generation.
    assert state.guests["g"].owner == "n1" and state.guests["g"].state is GuestState.RUNNING
    state, (r,) = run(state, GuestStopped("g", "n1", 2, False, False, "moving to n2", 2.0))
    state, (r,) = run(state, AssignGuests((Assignment("g", "n2", 2),), "placed", 3.0))
    assert r.accepted
    g = state.guests["g"]
    assert g.owner == "n2" and g.move_to is None and g.generation == 3


def test_move_refuses_a_node_that_may_not_run_the_guest() -> None:
    spec = GuestSpec("g", "g", 256, allowed_nodes=("n1", "n2"))
    state = cluster("n1", "n2", "n3", "w")
    state, _ = run(state, Join("w", "w-2", NodeRole.WITNESS, True, 0.0))
    state, _ = run(state, DefineGuest(spec, 0.0))
    state, _ = run(state, AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0))
    for node, why in (
        ("n3", "may not run g"),
        ("w", "not an up hypervisor"),
        ("n9", "not an up hypervisor"),
    ):
        _, (r,) = run(state, MoveGuest("g", node, WHO, "", 1.0, 0))
        assert not r.accepted and why in r.detail, (node, r.detail)
    state, _ = run(state, SetMaintenance("n2", True, "admin", 0.0, 0))
    _, (r,) = run(state, MoveGuest("g", "n2", WHO, "", 1.0, 0))
    assert not r.accepted and "maintenance" in r.detail


def test_a_late_move_cannot_undo_a_cancelled_one() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1")
    move = MoveGuest("g", "n2", WHO, "", 1.0, 0)
    state, results = run(state, move, MoveGuest("g", "n1", WHO, "changed my mind", 2.0, 1))
    assert all(x.accepted for x in results) and state.guests["g"].move_to is None
    state, (r,) = run(state, move)  # pysyncobj delivers the first one again
    assert not r.accepted and state.guests["g"].move_to is None


def test_disarm_refuses_declarations_and_rearm_restores_them() -> None:
    state = cluster("n1", "n2", "n3")
    state, (r,) = run(state, SetArming(True, 600.0, WHO, "switch upgrade", 10.0, 0))
    assert r.accepted and state.arming.disarmed and state.arming.until_at == 610.0
    assert all(n.watchdog_released for n in state.nodes.values())
    seq = state.node("n3").heartbeat_seq
    _, (r,) = run(state, DeclareFailed("n3", seq, evidence(seq)))
    assert not r.accepted and "disarmed" in r.detail
    state, (r,) = run(state, SetArming(False, 0.0, WHO, "done", 20.0, 1))
    assert r.accepted and not state.arming.disarmed
    # Armed again, but every watchdog stays released until its node confirms it re-armed.
    assert all(n.watchdog_released for n in state.nodes.values())
    state = fail(state, "n3")
    assert state.node("n3").state is NodeState.FAILED
    assert [e.action for e in state.audit] == ["cluster disarm for 600s", "cluster arm"]


def test_disarm_is_refused_while_a_fence_or_a_recovery_is_in_flight() -> None:
    state = with_guest_on(cluster("n1", "n2", "n3"), "n3")
    state = fail(state, "n3")
    _, (r,) = run(state, SetArming(True, 60.0, WHO, "", 1.0, 0))
    assert not r.accepted and "fence is in flight" in r.detail
    state, _ = run(state, FenceResult("n3", 1, True, FenceMethod.AGENT, "off", 2.0))
    _, (r,) = run(state, SetArming(True, 60.0, WHO, "", 1.0, 0))
    assert not r.accepted and "recovery is in flight" in r.detail
    state, _ = run(state, AssignGuests((Assignment("g", "n1", 2),), "recovered", 3.0))
    state, (r,) = run(state, SetArming(True, 60.0, WHO, "", 1.0, 0))
    assert r.accepted


def test_disarm_bounds_its_duration() -> None:
    state = cluster("n1", "n2", "n3")
    for for_s in (0.0, -5.0, 8 * 24 * 3600.0):
        _, (r,) = run(state, SetArming(True, for_s, WHO, "", 1.0, 0))
        assert not r.accepted and "at most a week" in r.detail


def test_a_late_disarm_or_automatic_rearm_cannot_undo_a_newer_decision() -> None:
    state = cluster("n1", "n2", "n3")
    disarm = SetArming(True, 600.0, WHO, "", 1.0, 0)
    auto_rearm = SetArming(False, 0.0, "automatic re-arm", "", 2.0, 1)
    state, (r1, r2) = run(state, disarm, SetArming(False, 0.0, WHO, "early", 1.5, 1))
    assert r1.accepted and r2.accepted and not state.arming.disarmed
    state, (r,) = run(state, disarm)  # a re-delivery of the old disarm
    assert not r.accepted and not state.arming.disarmed
    state, _ = run(state, SetArming(True, 60.0, WHO, "again", 3.0, 2))
    state, (r,) = run(state, auto_rearm)  # the automatic re-arm of the first disarm, late
    assert not r.accepted and state.arming.disarmed and state.arming.version == 3


def test_a_watchdog_counts_again_only_once_its_node_confirmed_the_rearm() -> None:
    state = cluster("n1", "n2", "n3")
    state, _ = run(state, SetArming(True, 600.0, WHO, "", 1.0, 0))
    # Confirmations while disarmed, or for an older arming, are refused.
    _, (r,) = run(state, WatchdogRearmed("n2", "n2-1", 1, 2.0))
    assert not r.accepted
    state, _ = run(state, SetArming(False, 0.0, WHO, "", 3.0, 1))
    _, (r,) = run(state, WatchdogRearmed("n2", "n2-1", 1, 4.0))
    assert not r.accepted
    _, (r,) = run(state, WatchdogRearmed("n2", "n2-0", 2, 4.0))  # an older incarnation
    assert not r.accepted
    state, (r,) = run(state, WatchdogRearmed("n2", "n2-1", 2, 4.0))
    assert r.accepted and not state.node("n2").watchdog_released
    assert state.node("n3").watchdog_released
    # A join while armed: the joining incarnation armed its device; while disarmed: released.
    state, _ = run(state, Join("n3", "n3-2", NodeRole.HYPERVISOR, True, 5.0))
    assert not state.node("n3").watchdog_released
    state, _ = run(state, SetArming(True, 60.0, WHO, "", 6.0, 2))
    state, _ = run(state, Join("n3", "n3-3", NodeRole.HYPERVISOR, True, 7.0))
    assert state.node("n3").watchdog_released


def test_freeze_refuses_declarations_of_that_node_only() -> None:
    state = cluster("n1", "n2", "n3")
    state, (r,) = run(state, SetFrozen("n3", True, WHO, "agent upgrade", 1.0, 0))
    assert r.accepted and state.node("n3").frozen
    seq = state.node("n3").heartbeat_seq
    _, (r,) = run(state, DeclareFailed("n3", seq, evidence(seq)))
    assert not r.accepted and "frozen" in r.detail
    # A new incarnation of its agent joins and stays frozen.
    state, (r,) = run(state, Join("n3", "n3-2", NodeRole.HYPERVISOR, False, 2.0))
    assert r.accepted and state.node("n3").frozen
    fail(state, "n2")  # others are declared as usual
    state, (r,) = run(state, SetFrozen("n3", False, WHO, "", 3.0, 1))
    assert r.accepted and not state.node("n3").frozen
    fail(state, "n3")
    assert [e.action for e in state.audit] == ["node freeze n3", "node thaw n3"]


def test_freeze_only_an_up_node_and_a_late_freeze_cannot_undo_a_thaw() -> None:
    state = cluster("n1", "n2", "n3")
    failed = fail(state, "n3")
    _, (r,) = run(failed, SetFrozen("n3", True, WHO, "", 1.0, 0))
    assert not r.accepted and "only an up node" in r.detail
    freeze = SetFrozen("n2", True, WHO, "", 1.0, 0)
    state, _ = run(state, freeze, SetFrozen("n2", False, WHO, "", 2.0, 1))
    state, (r,) = run(state, freeze)
    assert not r.accepted and not state.node("n2").frozen


def test_the_audit_is_bounded() -> None:
    state = cluster("n1", "n2")
    for version in range(MAX_AUDIT_ENTRIES + 5):
        state, r = apply(state, SetFrozen("n2", version % 2 == 0, WHO, "", 0.0, version))
        assert r.accepted
    assert len(state.audit) == MAX_AUDIT_ENTRIES
    assert state.audit[-1].action == "node freeze n2"


def test_the_status_shows_the_arming_the_freeze_the_move_and_the_audit() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1")
    state, results = run(
        state,
        SetArming(True, 1800.0, WHO, "switch firmware", 1764806400.0, 0),
        SetFrozen("n2", True, WHO, "agent upgrade", 1764806401.0, 0),
        MoveGuest("g", "n2", WHO, "", 1764806402.0, 0),
    )
    assert all(r.accepted for r in results), results
    doc = build_status(
        node="n1",
        cluster="c",
        pid=1,
        incarnation="i",
        view=ConsensusView(state=state, leader="n1"),
        now=1.0,
        lease_until=2.0,
        loop_age_s=0.0,
        local={},
    )
    assert doc["arming"]["disarmed"] and doc["arming"]["for_s"] == 1800.0
    assert doc["nodes"]["n2"]["frozen"] and doc["nodes"]["n2"]["watchdog_released"]
    assert doc["guests"]["g"]["move_to"] == "n2"
    assert [e["action"] for e in doc["audit"]] == [
        "cluster disarm for 1800s",
        "node freeze n2",
        "guest move g n2",
    ]
    text = format_status(doc)
    assert (
        f"DISARMED for 1800s by {WHO} until about 2025-12-04 00:30:00 UTC: switch firmware" in text
    )
    assert "up (FROZEN)" in text and "running (moving to n2)" in text
    assert f"2025-12-04 00:00:01 UTC  node freeze n2 by {WHO}: agent upgrade" in text


def test_the_fast_state_copies_keep_every_field() -> None:
    """`with_node` and `with_applied` build the state through its constructor (a heartbeat's
    hot path): a field they leave out would be reset by every heartbeat (seen when the admin
    verbs' `arming` and `audit` met that optimisation)."""
    import dataclasses

    from haagent.model import Arming, AuditEntry, ClusterState, NodeRecord, NodeRole

    state = ClusterState(
        nodes={"n1": NodeRecord("n1", NodeRole.HYPERVISOR)},
        applied=7,
        arming=Arming(disarmed=True, version=3, for_s=60.0),
        audit=(AuditEntry("disarm", "alice", "maintenance", 1.0),),
    )
    for copy in (state.with_node(state.node("n1")), state.with_applied(8)):
        for f in dataclasses.fields(ClusterState):
            if f.name not in ("nodes", "applied"):
                assert getattr(copy, f.name) == getattr(state, f.name), f.name
