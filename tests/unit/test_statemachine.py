"""`apply`: each safety rule that lives in the state machine, and what it must refuse."""

from __future__ import annotations

from dataclasses import replace

from haagent.commands import (
    AssignGuests,
    Assignment,
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
    SetDesired,
    SetMaintenance,
)
from haagent.model import (
    ClusterState,
    DesiredState,
    FenceMethod,
    GuestState,
    NodeRole,
    NodeState,
)
from tests.helpers.core_views import GUEST, cluster, evidence, fail, run, with_guest_on

SPEC = GUEST


# --- rule 1: ownership is committed; generation is a fencing token ----------------------------


def test_assignment_and_every_start_bump_the_generation() -> None:
    state, _ = run(
        cluster("n1", "n2"),
        DefineGuest(SPEC, 0.0),
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
    )
    assert state.guests["g"].generation == 1
    state, _ = run(state, GuestStarting("g", "n1", 1, 0.0))
    assert state.guests["g"].generation == 2  # the generation of this start
    # A stale plan (made at generation 1, before the start) cannot move it.
    state2, (r,) = run(state, AssignGuests((Assignment("g", "n2", 1),), "x", 0.0))
    assert not r.accepted and "generation is 2" in r.detail
    assert state2.guests["g"].owner == "n1"


def test_owner_reports_must_name_the_current_owner_and_generation() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1", running=False)
    for c in (
        GuestStarting("g", "n2", 2, 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        GuestRunning("g", "n2", 2, 0.0),
        GuestRunning("g", "n1", 1, 0.0),
        GuestStopped("g", "n1", 3, False, False, "x", 0.0),
    ):
        _, (r,) = run(state, c)
        assert not r.accepted, c


def test_starting_requires_the_guest_wanted_and_stopped_or_starting() -> None:
    state = with_guest_on(cluster("n1"), "n1")  # running
    _, (r,) = run(state, GuestStarting("g", "n1", 2, 0.0))
    assert not r.accepted
    state, _ = run(state, SetDesired("g", DesiredState.STOPPED, "admin", 0.0))
    state, _ = run(state, GuestStopped("g", "n1", 2, False, False, "stopped", 0.0))
    _, (r,) = run(state, GuestStarting("g", "n1", 2, 0.0))
    assert not r.accepted and "disabled" in r.detail


def test_a_late_report_about_an_earlier_start_is_refused() -> None:
    """pysyncobj may deliver a command again later (rule 7). Found by the simulator: a late
    'stopped' from an earlier start made a running guest movable without a fence."""
    state = with_guest_on(cluster("n1", "n2"), "n1")  # running, generation 2
    old_stop = GuestStopped("g", "n1", 2, True, True, "gave up", 0.0)
    old_running = GuestRunning("g", "n1", 2, 0.0)
    state, results = run(state, old_stop, SetDesired("g", DesiredState.RUNNING, "admin", 0.0))
    assert all(r.accepted for r in results)
    _, (r,) = run(state, old_running)  # stopped now: a late 'running' must not undo that
    assert not r.accepted and "not starting" in r.detail
    state, (r,) = run(state, GuestStarting("g", "n1", 2, 0.0))
    assert r.accepted and state.guests["g"].generation == 3
    state, _ = run(state, GuestRunning("g", "n1", 3, 0.0))
    for late in (old_stop, old_running):
        _, (r,) = run(state, late)
        assert not r.accepted, late
    assert state.guests["g"].state is GuestState.RUNNING


# --- rule 4: fence before recover ----------------------------------------------------------


def test_guests_of_a_failed_node_do_not_move_until_it_is_fenced() -> None:
    state = fail(with_guest_on(cluster("n1", "n2", "n3"), "n1"), "n1")
    move = AssignGuests((Assignment("g", "n2", 2),), "recover", 0.0)
    _, (r,) = run(state, move)
    assert not r.accepted and "n1 is failed" in r.detail

    # A failed fence changes nothing.
    epoch = state.node("n1").failure_epoch
    state, _ = run(
        state,
        FenceStarted("n1", epoch, "n2", 0.0),
        FenceResult("n1", epoch, False, FenceMethod.AGENT, "timeout", 0.0),
    )
    assert state.node("n1").state is NodeState.FAILED
    _, (r,) = run(state, move)
    assert not r.accepted

    state, (r,) = run(state, FenceResult("n1", epoch, True, FenceMethod.AGENT, "off", 0.0))
    assert r.accepted and state.node("n1").state is NodeState.FENCED
    state, (r,) = run(state, move)
    assert r.accepted
    assert state.guests["g"].owner == "n2" and state.guests["g"].generation == 3


def test_even_a_stopped_guest_of_a_failed_node_waits_for_the_fence() -> None:
    state = with_guest_on(cluster("n1", "n2", "n3"), "n1", running=False)
    state, (r,) = run(state, GuestStopped("g", "n1", 2, False, False, "x", 0.0))
    assert r.accepted
    state = fail(state, "n1")
    _, (r,) = run(state, AssignGuests((Assignment("g", "n2", 2),), "recover", 0.0))
    assert not r.accepted


def test_fence_results_are_bound_to_the_failure_epoch() -> None:
    state = fail(cluster("n1", "n2", "n3"), "n1")
    old_epoch = state.node("n1").failure_epoch
    state, (r,) = run(state, Join("n1", "n1-2", NodeRole.HYPERVISOR, True, 0.0))
    assert r.accepted
    state = fail(state, "n1")
    # The result of fencing the earlier failure must not count for the new one.
    state, (r,) = run(state, FenceResult("n1", old_epoch, True, FenceMethod.AGENT, "off", 0.0))
    assert not r.accepted and state.node("n1").state is NodeState.FAILED


def test_a_failed_node_cannot_report_its_guests_stopped() -> None:
    state = fail(with_guest_on(cluster("n1", "n2", "n3"), "n1"), "n1")
    _, (r,) = run(state, GuestStopped("g", "n1", 2, False, False, "stopped", 0.0))
    assert not r.accepted


# --- failure detection ------------------------------------------------------------------


def test_declaration_loses_against_a_newer_heartbeat() -> None:
    state = cluster("n1", "n2", "n3")
    seq = state.node("n2").heartbeat_seq
    state, results = run(state, Heartbeat("n2", "n2-1"), DeclareFailed("n2", seq, evidence(seq)))
    assert results[0].accepted and not results[1].accepted
    assert state.node("n2").state is NodeState.UP


def test_a_declaration_decided_before_a_rejoin_cannot_take_effect_after_it() -> None:
    state = cluster("n1", "n2", "n3")
    seq = state.node("n2").heartbeat_seq
    state, results = run(
        state,
        Join("n2", "n2-restarted", NodeRole.HYPERVISOR, False, 0.0),
        DeclareFailed("n2", seq, evidence(seq)),
    )
    assert results[0].accepted and not results[1].accepted


def test_heartbeats_of_a_failed_node_or_an_old_incarnation_are_refused() -> None:
    state = cluster("n1", "n2", "n3")
    _, (r,) = run(state, Heartbeat("n2", "not-the-current-one"))
    assert not r.accepted
    state = fail(state, "n2")
    _, (r,) = run(state, Heartbeat("n2", "n2-1"))
    assert not r.accepted and "failed" in r.detail


def test_a_failed_node_rejoins_only_clean() -> None:
    state = fail(cluster("n1", "n2", "n3"), "n2")
    _, (r,) = run(state, Join("n2", "n2-2", NodeRole.HYPERVISOR, False, 0.0))
    assert not r.accepted and "stop every protected guest" in r.detail
    state, (r,) = run(state, Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 0.0))
    assert r.accepted and state.node("n2").state is NodeState.UP
    assert state.node("n2").evidence is None


def test_a_failed_node_waits_for_the_verdict_of_a_fence_in_progress() -> None:
    """Issue 8 (nemesis): a join accepted while a fence agent runs was switched off as an "up"
    node, the verdict was refused as stale, and the node was declared and fenced again."""
    state = fail(cluster("n1", "n2", "n3"), "n2")
    epoch = state.node("n2").failure_epoch
    # Declared but not being fenced yet: the join wins, and the fence start loses.
    joined, (r,) = run(state, Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 0.0))
    assert r.accepted and joined.node("n2").state is NodeState.UP
    _, (r,) = run(joined, FenceStarted("n2", epoch, "n1", 0.0))
    assert not r.accepted
    # A fence in progress: the join waits for its verdict.
    state, (r,) = run(state, FenceStarted("n2", epoch, "n1", 0.0))
    assert r.accepted
    _, (r,) = run(state, Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 0.0))
    assert not r.accepted and r.detail.startswith("a fence is in progress")
    # A failed fence keeps the normal path: the node may rejoin.
    failed, (r,) = run(state, FenceResult("n2", epoch, False, FenceMethod.AGENT, "no", 0.0))
    assert r.accepted
    failed, (r,) = run(failed, Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 0.0))
    assert r.accepted and failed.node("n2").state is NodeState.UP
    # A successful one counts, and the node rejoins later as a fenced one (after power-on).
    fenced, (r,) = run(state, FenceResult("n2", epoch, True, FenceMethod.AGENT, "off", 0.0))
    assert r.accepted and fenced.node("n2").state is NodeState.FENCED
    fenced, (r,) = run(fenced, Join("n2", "n2-3", NodeRole.HYPERVISOR, True, 0.0))
    assert r.accepted and fenced.node("n2").state is NodeState.UP
    assert fenced.node("n2").fence.in_progress_by is None


# --- leave, admin, spec -----------------------------------------------------------------


def test_leave_needs_every_guest_stopped_and_then_frees_them() -> None:
    state = with_guest_on(cluster("n1", "n2", "n3"), "n1")
    _, (r,) = run(state, Leave("n1", "n1-1", 0.0))
    assert not r.accepted and "g" in r.detail
    state, _ = run(state, GuestStopped("g", "n1", 2, False, False, "leaving", 0.0))
    state, (r,) = run(state, Leave("n1", "n1-1", 0.0))
    assert r.accepted and state.node("n1").state is NodeState.DOWN
    state, (r,) = run(state, AssignGuests((Assignment("g", "n2", 2),), "placed", 0.0))
    assert r.accepted


def test_giving_up_frees_the_guest_to_move_and_an_error_waits_for_an_admin() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1", running=False)
    state, (r,) = run(state, GuestStopped("g", "n1", 2, True, True, "start failed", 0.0))
    assert r.accepted
    g = state.guests["g"]
    assert g.state is GuestState.STOPPED and g.failed_nodes == ("n1",) and g.failures == 0
    state, (r,) = run(state, AssignGuests((Assignment("g", "n2", 2),), "relocate", 0.0))
    assert r.accepted
    # An error is only declared on a guest that is not running, at its generation.
    _, (r,) = run(state, GuestError("g", 2, "failed everywhere", 0.0))
    assert not r.accepted
    state, (r,) = run(state, GuestError("g", 3, "failed everywhere", 0.0))
    assert r.accepted and state.guests["g"].state is GuestState.ERROR
    _, (r,) = run(state, GuestStarting("g", "n2", 3, 0.0))
    assert not r.accepted
    state, _ = run(state, SetDesired("g", DesiredState.RUNNING, "admin", 0.0))
    g = state.guests["g"]
    assert g.state is GuestState.STOPPED and g.failures == 0 and g.failed_nodes == ()


def test_crashes_add_up_unless_the_owner_reports_a_fresh_count() -> None:
    state = with_guest_on(cluster("n1", "n2"), "n1")
    state, (r,) = run(state, GuestStopped("g", "n1", 2, True, False, "crashed", 0.0))
    assert r.accepted and state.guests["g"].failures == 1
    state, _ = run(state, GuestStarting("g", "n1", 2, 0.0), GuestRunning("g", "n1", 3, 0.0))
    state, _ = run(state, GuestStopped("g", "n1", 3, True, False, "crashed", 0.0))
    assert state.guests["g"].failures == 2
    state, _ = run(state, GuestStarting("g", "n1", 3, 0.0), GuestRunning("g", "n1", 4, 0.0))
    # After a long stable run the owner says so: the history is forgotten.
    state = state.with_guest(replace(state.guests["g"], failed_nodes=("n2",)))
    state, _ = run(state, GuestStopped("g", "n1", 4, True, False, "crashed", 0.0, True))
    assert state.guests["g"].failures == 1 and state.guests["g"].failed_nodes == ()
    # A clean stop never counts, whatever the flag says.
    state, _ = run(state, GuestStarting("g", "n1", 4, 0.0), GuestRunning("g", "n1", 5, 0.0))
    state, _ = run(state, GuestStopped("g", "n1", 5, False, False, "stopped", 0.0, True))
    assert state.guests["g"].failures == 1


def test_maintenance_refuses_new_guests_and_survives_a_rejoin() -> None:
    state = cluster("n1", "n2")
    _, (r,) = run(state, SetMaintenance("n9", True, "admin", 0.0))
    assert not r.accepted and "never joined" in r.detail
    state, (r,) = run(state, SetMaintenance("n2", True, "admin", 0.0))
    assert r.accepted
    state, _ = run(state, DefineGuest(SPEC, 0.0))
    _, (r,) = run(state, AssignGuests((Assignment("g", "n2", 0),), "x", 0.0))
    assert not r.accepted and "maintenance" in r.detail
    state, _ = run(state, Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 0.0))
    assert state.node("n2").maintenance


def test_assignment_respects_allowed_nodes_and_roles() -> None:
    state = cluster("n1", "n2")
    state, _ = run(state, Join("w", "w-1", NodeRole.WITNESS, True, 0.0))
    state, _ = run(state, DefineGuest(replace(SPEC, allowed_nodes=("n1",)), 0.0))
    for node in ("n2", "w", "nowhere"):
        _, (r,) = run(state, AssignGuests((Assignment("g", node, 0),), "x", 0.0))
        assert not r.accepted, node


def test_refused_commands_leave_the_state_unchanged_but_count() -> None:
    state = cluster("n1")
    new, (r,) = run(state, Heartbeat("n9", "x"))
    assert not r.accepted
    assert replace(new, applied=state.applied) == state
    assert new.applied == state.applied + 1


def failed_node(state: ClusterState, node: str = "n2") -> ClusterState:
    seq = state.node(node).heartbeat_seq
    state, (r,) = run(state, DeclareFailed(node, seq, evidence(seq)))
    assert r.accepted and state.node(node).state is NodeState.FAILED
    return state


def test_confirm_fenced_moves_only_a_failed_node_of_that_failure_to_fenced() -> None:
    state = cluster("n1", "n2", "n3")
    _, (r,) = run(state, ConfirmFenced("n2", 0, "admin", 1.0))
    assert not r.accepted and "not failed" in r.detail  # a live node cannot be "confirmed off"
    state = failed_node(state)
    epoch = state.node("n2").failure_epoch
    _, (r,) = run(state, ConfirmFenced("n2", epoch - 1, "admin", 1.0))
    assert not r.accepted and "failed again" in r.detail  # the admin looked at another failure
    state, (r,) = run(state, ConfirmFenced("n2", epoch, "alice", 1.0))
    assert r.accepted
    rec = state.node("n2")
    assert rec.state is NodeState.FENCED
    assert rec.fence.method is FenceMethod.MANUAL and "alice" in rec.fence.last_detail
    _, (r,) = run(state, ConfirmFenced("n2", epoch, "alice", 1.0))
    assert not r.accepted  # once is enough; a re-delivery changes nothing


def test_a_confirmed_node_gives_up_its_guests_like_a_fenced_one() -> None:
    state = cluster("n1", "n2", "n3")
    state, _ = run(state, DefineGuest(SPEC, 0.0), AssignGuests((Assignment("g", "n2", 0),), "", 0))
    g = state.guests["g"].generation
    state, _ = run(state, GuestStarting("g", "n2", g, 0.0))
    state, _ = run(state, GuestRunning("g", "n2", g + 1, 0.0))
    state = failed_node(state)
    move = AssignGuests((Assignment("g", "n3", state.guests["g"].generation),), "", 0)
    _, (r,) = run(state, move)
    assert not r.accepted  # failed but not fenced: it may still run there
    state, _ = run(state, ConfirmFenced("n2", state.node("n2").failure_epoch, "admin", 0.0))
    _, (r,) = run(state, move)
    assert r.accepted


def test_a_late_enable_disable_cannot_undo_a_newer_decision() -> None:
    state = cluster("n1")
    state, _ = run(state, DefineGuest(SPEC, 0.0))
    v = state.guests["g"].admin_version
    disable = SetDesired("g", DesiredState.STOPPED, "admin", 1.0, expect_version=v)
    enable = SetDesired("g", DesiredState.RUNNING, "admin", 2.0, expect_version=v + 1)
    state, results = run(state, disable, enable, disable)  # the disable is re-delivered late
    assert [r.accepted for r in results] == [True, True, False]
    assert "stale" in results[2].detail
    assert state.guests["g"].desired is DesiredState.RUNNING


def test_a_late_maintenance_switch_cannot_undo_a_newer_one() -> None:
    state = cluster("n1", "n2")
    on = SetMaintenance("n2", True, "admin", 1.0, expect_version=0)
    off = SetMaintenance("n2", False, "admin", 2.0, expect_version=1)
    state, results = run(state, on, off, on)
    assert [r.accepted for r in results] == [True, True, False]
    assert not state.node("n2").maintenance


def test_a_late_definition_cannot_undo_a_newer_one() -> None:
    state = cluster("n1")
    state, _ = run(state, DefineGuest(SPEC, 0.0, expect_version=0))
    bigger = DefineGuest(replace(SPEC, memory_mib=512), 1.0, expect_version=0)
    biggest = DefineGuest(replace(SPEC, memory_mib=1024), 2.0, expect_version=1)
    state, results = run(state, bigger, biggest, bigger)
    assert [r.accepted for r in results] == [True, True, False]
    assert state.guests["g"].spec.memory_mib == 1024
    _, (r,) = run(state, DefineGuest(SPEC, 3.0, expect_version=5))
    assert not r.accepted and "stale" in r.detail


def test_a_running_guest_keeps_its_domain_name_and_storage_until_stopped() -> None:
    state = cluster("n1", "n2")
    state, _ = run(state, DefineGuest(SPEC, 0.0), AssignGuests((Assignment("g", "n1", 0),), "", 0))
    g = state.guests["g"].generation
    state, _ = run(state, GuestStarting("g", "n1", g, 0.0), GuestRunning("g", "n1", g + 1, 0.0))
    v = state.guests["g"].spec_version
    renamed = DefineGuest(replace(SPEC, domain="g-new"), 1.0, expect_version=v)
    _, (r,) = run(state, renamed)
    assert not r.accepted and "domain" in r.detail and "stopped" in r.detail
    state, (r,) = run(state, DefineGuest(replace(SPEC, memory_mib=300), 1.0, expect_version=v))
    assert r.accepted  # harmless fields change at once
    state, _ = run(state, GuestStopped("g", "n1", g + 1, False, False, "disabled", 2.0))
    state, (r,) = run(state, replace(renamed, expect_version=v + 1))
    assert r.accepted and state.guests["g"].spec.domain == "g-new"
