"""Lease (haagent.core.lease): committed heartbeats make the lease (rule 2); losing it stops
every protected guest and the watchdog (rule 3); a new agent's startup grace; leave and rejoin.

Each test names the DESIGN.md safety rule it guards."""

from __future__ import annotations

from haagent.agent import (
    ActionKey,
    ActionKind,
    AgentCore,
    DestroyDomain,
    LocalView,
    ProposalKind,
)
from haagent.commands import (
    DeclareFailed,
    FenceResult,
    FenceStarted,
    GuestStopped,
    Heartbeat,
    Join,
)
from haagent.model import (
    FailureEvidence,
    FenceMethod,
    NodeState,
)
from haagent.ports import (
    DomainObservation,
    Outcome,
    OutcomeKind,
)
from tests.helpers.core_views import (
    ACCEPTED,
    build,
    commands,
    core,
    joined,
    local,
    of,
    running_on_n1,
    settings,
    view,
    with_lease,
)


# --- rule 2: leases come from committed heartbeats, measured from the send -------------------
def test_lease_is_extended_only_by_an_accepted_heartbeat_from_its_send_time() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    step = c.tick(10.0, view(state), local(10.0))
    (hb,) = [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    assert not c.lease_valid(10.0)
    c.proposal_done(hb.key, ACCEPTED, 10.5)  # the answer came late...
    assert c.lease_until == 10.0 + c.settings.lease_s  # ...the lease still counts from the send

    c2 = core()
    step = c2.tick(10.0, view(state), local(10.0))
    for p in step.proposals:
        c2.proposal_done(p.key, Outcome(OutcomeKind.UNKNOWN, "timeout"), 10.1)
    assert not c2.lease_valid(10.1)


# --- rule 3: lost lease => self-fence --------------------------------------------------------
def test_a_heartbeat_lost_with_the_leader_is_followed_at_once_not_a_period_later() -> None:
    """Heartbeats forwarded to a leader that died come back unknown ("leader changed") once
    the new leader is known. Waiting a whole period for the next one after the election cost
    the survivors their lease (tests/integration/test_leader_death.py): the next goes at the
    next pass, and the shell's deadline says so. A burst of unknown outcomes brings at most
    one heartbeat forward per quarter period."""
    c = core()
    state = joined("n1", "n2", "n3")
    period = c.settings.heartbeat_s
    step = c.tick(10.0, view(state), local(10.0))
    (first,) = [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    assert c.next_heartbeat_at == 10.0 + period
    lost = Outcome(OutcomeKind.UNKNOWN, "leader changed")
    c.proposal_done(first.key, lost, 10.01)
    assert c.next_heartbeat_at == 10.01  # a pass now, not at 10.0 + period
    step = c.tick(10.01, view(state), local(10.01))
    (second,) = [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    c.proposal_done(second.key, lost, 10.02)
    assert c.next_heartbeat_at == 10.01 + period / 4  # not a burst
    step = c.tick(10.02, view(state), local(10.02))
    assert not [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    step = c.tick(10.01 + period / 4, view(state), local(10.01 + period / 4))
    assert [p for p in step.proposals if isinstance(p.command, Heartbeat)]


def test_lost_lease_destroys_every_protected_domain_and_stops_the_watchdog() -> None:
    c = core()
    state = running_on_n1()
    with_lease(c, state, 10.0)
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    unprotected = DomainObservation("other", True)
    step = c.tick(10.5, view(state), local(10.5, mine, unprotected))
    assert step.lease_valid and step.pet_watchdog and not of(DestroyDomain, step.actions)

    expiry = c.lease_until
    step = c.tick(expiry, view(state), local(expiry, mine, unprotected))
    assert not step.lease_valid
    assert [a.domain for a in of(DestroyDomain, step.actions)] == ["dom-g"]  # type: ignore[attr-defined]
    assert not step.pet_watchdog
    # Once nothing protected runs, petting resumes: no reboot loop for a host that is empty.
    step = c.tick(expiry + 0.1, view(state), local(expiry + 0.1, unprotected))
    assert step.pet_watchdog


def test_a_failed_observation_never_keeps_the_watchdog_quiet() -> None:
    c = core()
    state = running_on_n1()
    step = c.tick(5.0, view(state), LocalView(None, 5.0))
    assert not step.pet_watchdog


def test_a_new_agent_waits_one_lease_for_its_first_commit_before_destroying() -> None:
    c = core()
    state = running_on_n1()
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    step = c.tick(0.5, view(state), local(0.5, mine))
    assert not of(DestroyDomain, step.actions)
    step = c.tick(c.settings.lease_s + 0.01, view(state), local(1.1, mine))
    assert of(DestroyDomain, step.actions)


# --- leave and rejoin ------------------------------------------------------------------------


def test_leaving_stops_guests_then_commits_leave() -> None:
    c = core()
    state = running_on_n1()
    with_lease(c, state, 10.0)
    c.begin_leave()
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    step = c.tick(10.01, view(state), local(10.01, mine))
    assert [a.key for a in step.actions] == [ActionKey(ActionKind.STOP, "g")]
    assert not [p for p in step.proposals if p.key.kind is ProposalKind.LEAVE]
    step = c.tick(10.02, view(state), local(10.02))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed
    state = build(stopped, state=state)
    step = c.tick(10.03, view(state), local(10.03))
    (leave,) = [p for p in step.proposals if p.key.kind is ProposalKind.LEAVE]
    c.proposal_done(leave.key, ACCEPTED, 10.04)
    assert c.tick(10.05, view(state), local(10.05)).left


def test_rejoin_after_being_failed_waits_until_nothing_protected_runs() -> None:
    c = AgentCore(settings(), "n1-new", started_at=0.0)
    state = build(
        DeclareFailed("n1", 1, FailureEvidence("n2", 1, 2.0, "silent", 0.0)),
        state=running_on_n1(),
    )
    assert state.node("n1").state is NodeState.FAILED
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    step = c.tick(5.0, view(state), local(5.0, mine))
    assert not [x for x in commands(step) if isinstance(x, Join)]
    assert of(DestroyDomain, step.actions)
    step = c.tick(5.1, view(state), local(5.1))
    (join,) = [x for x in commands(step) if isinstance(x, Join)]
    assert join.clean


def test_rejoin_waits_for_the_verdict_of_a_fence_in_progress() -> None:
    """A fence agent may be switching this host off: a join before its verdict would be
    refused by `apply` anyway; the agent proposes none until the verdict commits (issue 8)."""
    c = AgentCore(settings(), "n1-new", started_at=0.0)
    state = build(
        DeclareFailed("n1", 1, FailureEvidence("n2", 1, 2.0, "silent", 0.0)),
        FenceStarted("n1", 1, "n2", 0.0),
        state=running_on_n1(),
    )
    assert state.node("n1").fence.in_progress_by == "n2"
    for now in (5.0, 5.1, 5.2):
        step = c.tick(now, view(state), local(now))
        assert not [x for x in commands(step) if isinstance(x, Join)]
    state = build(FenceResult("n1", 1, False, FenceMethod.AGENT, "no answer", 0.0), state=state)
    step = c.tick(5.3, view(state), local(5.3))
    (join,) = [x for x in commands(step) if isinstance(x, Join)]
    assert join.clean
