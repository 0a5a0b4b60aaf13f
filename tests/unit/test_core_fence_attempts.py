"""Fence attempts in the core (haagent.core.fencing), issue 8: two fences in flight after a
leader change.

A leader runs only an attempt it proposed itself, soon after proposing it; a new leader does
not start a second fence while another fencer's attempt may still act, and gives that attempt
up once its fencer was fenced or can no longer act (`may_act_s`), so a dead fencer never
blocks recovery for longer than that. The executor's last check before every power-off call
(`fence_refusal`) and the fence levels' `may_act` hook are tested here too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from haagent.agent import ActionResult, AgentCore, ProposalKey, ProposalKind, RunFence, Step
from haagent.commands import (
    ATTEMPT_ABANDONED,
    AssignGuests,
    Assignment,
    DeclareFailed,
    FenceResult,
    FenceStarted,
    GuestRunning,
    GuestStarting,
    Heartbeat,
)
from haagent.core.authority import fence_refusal
from haagent.core.fencing import may_act_s
from haagent.fencing.levels import AgentFencer
from haagent.model import ClusterState, FailureEvidence, FenceMethod, NodeState
from haagent.ports import FenceDevice, FenceOutcome, Outcome, OutcomeKind
from tests.helpers.core_views import (
    ACCEPTED,
    build,
    commands,
    core,
    failed_n2,
    joined,
    local,
    of,
    view,
    with_lease,
)

T0 = 10.0


def n2_failed_fenced_by(fencer: str | None) -> ClusterState:
    """n2 ran g and was declared failed; `fencer` (if any) committed attempt 1 against it."""
    state = failed_n2(
        build(
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
            state=joined("n1", "n2", "n3"),
        )
    )
    if fencer is not None:
        state = build(FenceStarted("n2", 1, fencer, 0.0, 1), state=state)
    return state


def lead(c: AgentCore, state: ClusterState, now: float) -> Step:
    """One pass of `c` as the leader holding a lease (a heartbeat commits whenever one is
    due), n3 heard just now."""
    before = now - 0.01
    for p in c.tick(before, view(state), local(before)).proposals:
        if isinstance(p.command, Heartbeat):
            c.proposal_done(p.key, ACCEPTED, before)
    assert c.lease_valid(now)
    return c.tick(now, view(state, leader=True, seen={"n3": now - 0.01}), local(now))


def fence_commands(step: Step) -> list[FenceStarted | FenceResult]:
    return [x for x in commands(step) if isinstance(x, FenceStarted | FenceResult)]


def given_up(step: Step) -> FenceResult:
    (verdict,) = [x for x in commands(step) if isinstance(x, FenceResult)]
    assert not verdict.ok and verdict.detail.startswith(ATTEMPT_ABANDONED), verdict
    return verdict


def test_a_new_leader_does_not_start_a_second_fence_while_the_first_may_act() -> None:
    """Before attempt identities the new leader started attempt 2 at once (scenario
    two_fences_after_leader_change shows what that second fence then did)."""
    c = core()
    state = n2_failed_fenced_by("n3")  # n3 led, started attempt 1, and was deposed
    bound_s = may_act_s(c.settings)
    for now in (T0, T0 + 1.0, T0 + bound_s - 0.05):
        step = lead(c, state, now)
        assert not fence_commands(step) and not of(RunFence, step.actions), now
        assert not of(AssignGuests, commands(step))
    # Past the bound n3's fence agents have stopped: the attempt is given up, failed ...
    verdict = given_up(lead(c, state, T0 + bound_s + 0.05))
    assert verdict.attempt == 1 and "no verdict from n3" in verdict.detail
    c.proposal_done(ProposalKey(ProposalKind.FENCE_RESULT, "n2"), ACCEPTED, T0 + bound_s + 0.06)
    state = build(verdict, state=state)
    assert state.node("n2").state is NodeState.FAILED  # ... which is no fence
    # ... and this leader fences with attempt 2, which it runs itself.
    (started,) = fence_commands(lead(c, state, T0 + bound_s + 0.1))
    assert isinstance(started, FenceStarted) and started.attempt == 2
    c.proposal_done(ProposalKey(ProposalKind.FENCE_STARTED, "n2"), ACCEPTED, T0 + bound_s + 0.11)
    state = build(started, state=state)
    (run,) = of(RunFence, lead(c, state, T0 + bound_s + 0.15).actions)
    assert (run.node, run.epoch, run.attempt) == ("n2", 1, 2)


def test_the_attempt_of_a_fencer_that_was_fenced_is_given_up_at_once() -> None:
    """Its host was switched off after it was declared failed, so after it launched
    anything: its fence agents are gone (scenario leader_lost_while_fence_pending)."""
    c = core()
    state = n2_failed_fenced_by("n3")
    seq = state.node("n3").heartbeat_seq
    state = build(
        DeclareFailed("n3", seq, FailureEvidence("n1", seq, 2.0, "silent", 0.0)),
        FenceStarted("n3", 1, "n1", 0.0, 1),
        FenceResult("n3", 1, True, FenceMethod.AGENT, "off", 0.0, 1),
        state=state,
    )
    verdict = given_up(lead(c, state, T0))
    assert verdict.node == "n2" and "n3 was fenced since" in verdict.detail


def test_a_follower_that_becomes_leader_counts_from_when_it_first_saw_the_attempt() -> None:
    c = core()
    state = n2_failed_fenced_by("n3")
    with_lease(c, state, T0)
    c.tick(T0 + 0.01, view(state, seen={"n3": T0}), local(T0 + 0.01))  # a follower's pass
    given_up(lead(c, state, T0 + 0.01 + may_act_s(c.settings) + 0.05))
    # One entry per node with an attempt in flight, dropped once none is.
    assert set(c.fencing.in_flight_seen) == {"n2"}
    done = build(FenceResult("n2", 1, False, FenceMethod.AGENT, "no", 0.0, 1), state=state)
    c.tick(T0 + 100, view(done, seen={"n3": T0 + 100}), local(T0 + 100))
    assert c.fencing.in_flight_seen == {}


def test_a_leader_runs_only_an_attempt_it_proposed_and_only_soon_after() -> None:
    c = core()
    # An attempt in n1's name that this core never proposed (its agent's previous process):
    # not run, given up only once that process's fence agents can no longer act.
    state = n2_failed_fenced_by("n1")
    step = lead(c, state, T0)
    assert not of(RunFence, step.actions) and not fence_commands(step)
    given_up(lead(c, state, T0 + may_act_s(c.settings) + 0.05))

    # Its own start, committed after commit_timeout_s: a new leader may already count it as
    # never run, so it is not run now; it is given up at once instead.
    c = core()
    state = n2_failed_fenced_by(None)
    (started,) = fence_commands(lead(c, state, T0))
    assert isinstance(started, FenceStarted) and started.attempt == 1
    late = T0 + c.settings.commit_timeout_s + 0.1
    c.proposal_done(ProposalKey(ProposalKind.FENCE_STARTED, "n2"), ACCEPTED, late)
    state = build(started, state=state)
    step = lead(c, state, late + 0.01)
    assert not of(RunFence, step.actions)
    assert "not run: its start committed" in given_up(step).detail


def test_a_verdict_whose_commit_was_lost_ends_the_attempt() -> None:
    """pysyncobj may lose the outcome of the verdict: this core ran the attempt and its fence
    agents have returned, so it gives the attempt up at once and fences again."""
    c = core()
    state = n2_failed_fenced_by(None)
    (started,) = fence_commands(lead(c, state, T0))
    c.proposal_done(ProposalKey(ProposalKind.FENCE_STARTED, "n2"), ACCEPTED, T0 + 0.01)
    state = build(started, state=state)
    (run,) = of(RunFence, lead(c, state, T0 + 0.05).actions)
    c.action_done(run.key, ActionResult(True, "off", FenceOutcome(True, "off")), T0 + 0.5)
    now = T0 + 0.55  # the lease of the last pass still holds
    step = c.tick(now, view(state, leader=True, seen={"n3": now}), local(now))
    (verdict,) = fence_commands(step)
    assert isinstance(verdict, FenceResult) and verdict.ok and verdict.attempt == 1
    key = ProposalKey(ProposalKind.FENCE_RESULT, "n2")
    c.proposal_done(key, Outcome(OutcomeKind.UNKNOWN, "timeout"), T0 + 2.6)
    assert "the verdict was lost" in given_up(lead(c, state, T0 + 2.7)).detail


def test_an_attempt_in_flight_against_a_fenced_node_is_given_up_after_the_bound() -> None:
    """The watchdog deadline (or an admin) fenced n2 while n3's power attempt ran: n2 may not
    rejoin before that attempt ends, and a silent fencer must not keep it out for ever."""
    c = core()
    state = build(
        FenceResult("n2", 1, True, FenceMethod.MANUAL, "confirmed", 0.0, 0),
        state=n2_failed_fenced_by("n3"),
    )
    assert state.node("n2").state is NodeState.FENCED
    assert state.node("n2").fence.in_progress_by == "n3"
    assert not fence_commands(lead(c, state, T0))
    verdict = given_up(lead(c, state, T0 + may_act_s(c.settings) + 0.05))
    state = build(verdict, state=state)
    assert state.node("n2").state is NodeState.FENCED
    assert state.node("n2").fence.in_progress_by is None


def test_the_last_check_before_a_power_off_call() -> None:
    state = n2_failed_fenced_by("n1")
    ok = {"now": 5.0, "lease_until": 6.0}
    assert fence_refusal(state, "n1", "n2", 1, 1, **ok) is None
    assert "lease lapsed" in str(fence_refusal(state, "n1", "n2", 1, 1, now=6.0, lease_until=6.0))
    assert "no longer in flight" in str(fence_refusal(state, "n3", "n2", 1, 1, **ok))
    assert "no longer in flight" in str(fence_refusal(state, "n1", "n2", 1, 2, **ok))
    gave_up = build(FenceResult("n2", 1, False, FenceMethod.AGENT, "no", 0.0, 1), state=state)
    assert "no longer in flight" in str(fence_refusal(gave_up, "n1", "n2", 1, 1, **ok))
    assert "not in the committed state" in str(fence_refusal(state, "n1", "n9", 1, 1, **ok))


def test_fence_levels_stop_before_a_power_off_the_core_no_longer_wants(tmp_path: Path) -> None:
    """Against the stock fence_dummy: level 1 fails; by the time level 2 would switch the
    node off, the attempt is no longer in flight, so level 2 is not tried."""
    second = tmp_path / "second"
    second.write_text("on")  # fence_dummy wants no trailing newline
    levels = [
        [FenceDevice("pdu", "fence_dummy", {"type": "fail", "power_timeout": "1"})],
        [FenceDevice("bmc", "fence_dummy", {"type": "file", "status_file": str(second)})],
    ]
    asked: list[int] = []

    def may_act() -> str | None:
        asked.append(1)
        return None if len(asked) == 1 else "attempt 1 is no longer in flight"

    outcome = asyncio.run(AgentFencer().fence("n2", levels, timeout_s=20, may_act=may_act))
    assert not outcome.ok and len(asked) == 2
    assert "level 2: stopped before bmc (fence_dummy) off" in outcome.detail, outcome.detail
    assert second.read_text() == "on"  # never switched off


def test_a_leader_without_a_lease_gives_up_a_dead_attempt_against_itself_and_nothing_else() -> None:
    """Swarm seed 6554: n2 was declared failed and fenced by n3, whose agent then restarted and
    was lost; n2 came back and led Raft, but its rejoin waits for that attempt's verdict, so it
    never got a lease, and only a leader with a lease gave attempts up: nobody ever could. A
    failed verdict moves no guest, so the lease-less leader may give up a dead attempt."""
    c = core("n2")
    state = n2_failed_fenced_by("n3")
    as_leader = view(state, leader=True, seen={"n1": T0, "n3": T0})
    bound_s = may_act_s(c.settings)
    for now in (T0, T0 + bound_s - 0.05):
        step = c.tick(now, as_leader, local(now))
        assert not c.lease_valid(now) and not fence_commands(step), now
    step = c.tick(T0 + bound_s + 0.05, as_leader, local(T0 + bound_s + 0.05))
    verdict = given_up(step)
    assert verdict.node == "n2" and verdict.attempt == 1 and "no verdict from n3" in verdict.detail
    # Nothing that needs the lease: no declaration, no new attempt, no placement.
    assert [type(x) for x in commands(step) if not isinstance(x, Heartbeat)] == [FenceResult]
    assert not of(RunFence, step.actions)
