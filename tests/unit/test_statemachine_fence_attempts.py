"""`apply` and fence attempts (issue 8: two fences in flight after a leader change).

Each `FenceStarted` numbers its attempt within the failure epoch; a start is refused while
another attempt is in flight, a verdict counts only for the attempt in flight, and a node does
not rejoin while any power attempt may still switch it off. Commands written before the
attempt field (`attempt=None`) are applied as they were.
"""

from __future__ import annotations

from haagent.commands import (
    ATTEMPT_ABANDONED,
    WATCHDOG_VERDICT,
    AssignGuests,
    Assignment,
    ConfirmFenced,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    FenceStarted,
    GuestRunning,
    GuestStarting,
    Join,
    decode,
    encode,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
    NodeState,
)
from haagent.statemachine import Result
from tests.helpers.core_views import run

AGENT, WATCHDOG = FenceMethod.AGENT, FenceMethod.WATCHDOG


def n3_failed_running_g() -> ClusterState:
    """n1..n3 up, g running on n3, n3 declared failed (epoch 1), no fence started yet."""
    state = ClusterState()
    joins = [Join(n, f"{n}-1", NodeRole.HYPERVISOR, True, 0.0) for n in ("n1", "n2", "n3")]
    state, results = run(
        state,
        *joins,
        DefineGuest(GuestSpec("g", "g", 256), 0.0),
        AssignGuests((Assignment("g", "n3", 0),), "placed", 0.0),
        GuestStarting("g", "n3", 1, 0.0),
        GuestRunning("g", "n3", 2, 0.0),
    )
    assert all(r.accepted for r in results)
    seq = state.node("n3").heartbeat_seq
    evidence = FailureEvidence("n1", seq, 2.0, "silent", 0.0)
    state, (r,) = run(state, DeclareFailed("n3", seq, evidence))
    assert r.accepted and state.node("n3").failure_epoch == 1
    return state


def started(by: str, attempt: int | None) -> FenceStarted:
    return FenceStarted("n3", 1, by, 0.0, attempt)


def verdict(ok: bool, attempt: int | None, method: FenceMethod = AGENT) -> FenceResult:
    return FenceResult("n3", 1, ok, method, "off" if ok else "timed out", 0.0, attempt)


def rejoin(state: ClusterState, incarnation: str = "n3-2") -> tuple[ClusterState, Result]:
    state, (r,) = run(state, Join("n3", incarnation, NodeRole.HYPERVISOR, True, 0.0))
    return state, r


def may_move_g(state: ClusterState) -> bool:
    move = Assignment("g", "n2", state.guests["g"].generation)
    _, (r,) = run(state, AssignGuests((move,), "recover", 0.0))
    return r.accepted


def test_a_second_start_is_refused_while_an_attempt_is_in_flight() -> None:
    state, (r,) = run(n3_failed_running_g(), started("n1", 1))
    assert r.accepted and state.node("n3").fence.in_progress_by == "n1"
    # The new leader n2 may not start a concurrent fence of n3.
    _, (r,) = run(state, started("n2", 2))
    assert not r.accepted and r.detail.startswith("a fence is in progress")
    assert "attempt 1 by n1" in r.detail
    # Nor may a late re-delivery of the first start create another attempt.
    _, (r,) = run(state, started("n1", 1))
    assert not r.accepted and "stale start" in r.detail


def test_a_verdict_counts_only_for_the_attempt_in_flight() -> None:
    state, _ = run(n3_failed_running_g(), started("n1", 1))
    # n2 gave attempt 1 up (its fencer could no longer act) and started attempt 2.
    given_up = FenceResult("n3", 1, False, AGENT, f"{ATTEMPT_ABANDONED}: ...", 0.0, 1)
    state, results = run(state, given_up, started("n2", 2))
    assert all(r.accepted for r in results)
    # A late "ok" of attempt 1 is refused: it is not the attempt in flight (and counting it
    # would end attempt 2's flight while attempt 2 may still switch the node off).
    after, (r,) = run(state, verdict(True, 1))
    assert not r.accepted and "stale verdict of attempt 1" in r.detail
    assert after.node("n3").state is NodeState.FAILED and not may_move_g(after)
    assert after.node("n3").fence.in_progress_by == "n2"
    # Attempt 2's own verdict counts, once.
    state, (r,) = run(state, verdict(True, 2))
    assert r.accepted and state.node("n3").state is NodeState.FENCED and may_move_g(state)
    _, (r,) = run(state, verdict(True, 2))
    assert not r.accepted


def test_a_verdict_of_an_earlier_failure_never_counts_for_a_later_one() -> None:
    state, _ = run(n3_failed_running_g(), started("n1", 1), verdict(False, 1))
    state, r = rejoin(state)
    assert r.accepted
    seq = state.node("n3").heartbeat_seq
    state, (r,) = run(state, DeclareFailed("n3", seq, FailureEvidence("n1", seq, 2, "s", 0)))
    assert r.accepted and state.node("n3").failure_epoch == 2
    state, (r,) = run(state, FenceStarted("n3", 2, "n1", 0.0, 1))
    assert r.accepted  # attempt 1 of failure 2
    _, (r,) = run(state, verdict(True, 1))  # attempt 1 of failure 1: same number, old epoch
    assert not r.accepted and state.node("n3").state is NodeState.FAILED


def test_no_rejoin_while_a_power_attempt_may_still_act() -> None:
    """The closing note's case: another proof fenced the node (the watchdog deadline, an
    admin) while a power attempt was still running: that attempt could switch the node off
    after it rejoined."""
    base, _ = run(n3_failed_running_g(), started("n1", 1))
    for proof in (
        verdict(True, WATCHDOG_VERDICT, WATCHDOG),
        ConfirmFenced("n3", 1, "admin", 0.0),
    ):
        state, (r,) = run(base, proof)
        assert r.accepted and state.node("n3").state is NodeState.FENCED and may_move_g(state)
        assert state.node("n3").fence.in_progress_by == "n1"
        _, r = rejoin(state)
        assert not r.accepted and r.detail.startswith("a fence is in progress")
        # The attempt's late verdict ends it without changing the proof; then it rejoins.
        late, (r,) = run(state, verdict(False, 1))
        assert r.accepted and "late verdict of attempt 1" in r.detail
        assert late.node("n3").state is NodeState.FENCED
        assert late.node("n3").fence.in_progress_by is None
        assert late.node("n3").fence.last_result == "ok"
        late, r = rejoin(late)
        assert r.accepted and late.node("n3").state is NodeState.UP


def test_a_failed_attempt_lets_the_node_rejoin_only_when_nothing_else_is_in_flight() -> None:
    state, results = run(n3_failed_running_g(), started("n1", 1), verdict(False, 1))
    assert all(r.accepted for r in results)
    _, r = rejoin(state)
    assert r.accepted  # nothing can switch it off any more: the normal rejoin applies


def test_commands_without_an_attempt_are_applied_as_before() -> None:
    """Entries written by agents before the field: a start takes the next number whatever is
    in flight, a verdict ends whatever attempt is in flight, a watchdog verdict too."""
    state, results = run(n3_failed_running_g(), started("n1", None), started("n2", None))
    assert all(r.accepted for r in results)
    assert state.node("n3").fence.attempts == 2 and state.node("n3").fence.in_progress_by == "n2"
    failed, (r,) = run(state, verdict(False, None))
    assert r.accepted and failed.node("n3").fence.in_progress_by is None
    fenced, (r,) = run(state, verdict(True, None, WATCHDOG))
    assert r.accepted and fenced.node("n3").state is NodeState.FENCED
    assert fenced.node("n3").fence.in_progress_by is None


def test_the_attempt_field_round_trips_and_old_entries_decode_without_it() -> None:
    for command in (started("n1", 3), verdict(True, 3), verdict(True, WATCHDOG_VERDICT)):
        assert decode(encode(command)) == command
    old_start = b'{"at":0.0,"epoch":1,"leader":"n1","node":"n3","type":"fence_started","v":1}'
    assert decode(old_start) == started("n1", None)
    old_result = (
        b'{"at":0.0,"detail":"off","epoch":1,"method":"agent","node":"n3","ok":true,'
        b'"type":"fence_result","v":1}'
    )
    assert decode(old_result) == verdict(True, None)
