"""Guest reconciliation (haagent.core.guests) and the scheduling it hands guests to: starts
only after a committed intent with a lease (rule 1), destroys what must not run here, counts
only real crashes, gives up, moves and errors; maintenance drains the node."""

from __future__ import annotations

from dataclasses import replace

from haagent.agent import (
    ActionKey,
    ActionKind,
    ActionResult,
    DestroyDomain,
    ProposalKey,
    ProposalKind,
    StartGuest,
    StopGuest,
)
from haagent.commands import (
    AssignGuests,
    Assignment,
    DefineGuest,
    GuestError,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    SetDesired,
    SetMaintenance,
)
from haagent.model import (
    DesiredState,
)
from haagent.ports import (
    DomainObservation,
)
from tests.helpers.core_views import (
    ACCEPTED,
    SPEC,
    STOPPED_G,
    build,
    commands,
    core,
    joined,
    local,
    of,
    running_on_n1,
    view,
    with_lease,
)


# --- rule 1: a start only after the committed intent at the current generation ---------------
def test_start_needs_a_committed_intent_at_the_current_generation() -> None:
    c = core()
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0), state=joined("n1", "n2", "n3")
    )
    with_lease(c, state, 10.0)
    step = c.tick(10.05, view(state), local(10.05))
    assert not of(StartGuest, step.actions)
    (intent,) = [x for x in commands(step) if isinstance(x, GuestStarting)]
    assert intent.generation == 1  # the assignment's; the start gets 2
    c.proposal_done(ProposalKey(ProposalKind.GUEST_STARTING, SPEC.name), ACCEPTED, 10.06)

    state = build(intent, state=state)
    step = c.tick(10.07, view(state), local(10.07))
    (start,) = of(StartGuest, step.actions)
    assert start == StartGuest("g", "dom-g", 2)  # the generation of this start


def test_no_start_without_a_valid_lease() -> None:
    c = core()
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )
    step = c.tick(5.0, view(state), local(5.0))
    assert not of(StartGuest, step.actions)
    assert not [x for x in commands(step) if isinstance(x, GuestStarting)]


def test_a_guest_owned_elsewhere_is_destroyed_here() -> None:
    c = core("n2")
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0), state=joined("n1", "n2", "n3")
    )
    with_lease(c, state, 10.0)
    stale = DomainObservation("dom-g", True, owner="n2", generation=0)
    step = c.tick(10.05, view(state), local(10.05, stale))
    (destroy,) = of(DestroyDomain, step.actions)
    assert destroy.domain == "dom-g" and "owned by n1" in destroy.reason


def test_an_instance_newer_than_our_view_is_left_alone() -> None:
    c = core("n2")
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0), state=joined("n1", "n2", "n3")
    )
    with_lease(c, state, 10.0)
    newer = DomainObservation("dom-g", True, owner="n2", generation=5)
    step = c.tick(10.05, view(state), local(10.05, newer))
    assert not of(DestroyDomain, step.actions)


# --- crash handling, give-up, error, maintenance ---------------------------------------------
def test_a_crashed_guest_is_restarted_then_given_up_then_moved_then_in_error() -> None:
    c = core(max_start_failures=2, max_relocations=1)
    state = running_on_n1()  # generation 2
    with_lease(c, state, 10.0)
    seen = DomainObservation("dom-g", True, owner="n1", generation=2)
    assert not commands(c.tick(10.005, view(state), local(10.005, seen)))
    step = c.tick(10.01, view(state), local(10.01))  # it was running; now it is gone
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.failed and not stopped.give_up
    c.proposal_done(STOPPED_G, ACCEPTED, 10.02)
    state = build(stopped, state=state)
    assert state.guests["g"].failures == 1
    # Restarted locally first, as a new start with its own generation.
    step = c.tick(10.03, view(state), local(10.03))
    (starting,) = [x for x in commands(step) if isinstance(x, GuestStarting)]
    c.proposal_done(ProposalKey(ProposalKind.GUEST_STARTING, "g"), ACCEPTED, 10.04)
    state = build(starting, GuestRunning("g", "n1", 3, 0.0), state=state)
    seen = DomainObservation("dom-g", True, owner="n1", generation=3)
    c.tick(10.045, view(state), local(10.045, seen))
    step = c.tick(10.05, view(state), local(10.05))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.give_up  # the second failure here: this node gives up
    c.proposal_done(STOPPED_G, ACCEPTED, 10.06)
    state = build(stopped, state=state)
    # It does not start it again; as leader it moves it to another node.
    step = c.tick(10.07, view(state, leader=True, seen={"n2": 10.0, "n3": 10.0}), local(10.07))
    assert not [x for x in commands(step) if isinstance(x, GuestStarting)]
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    assert assign.assignments[0].node != "n1"
    c.proposal_done(ProposalKey(ProposalKind.ASSIGN), ACCEPTED, 10.08)
    moved = build(assign, state=state)
    owner = moved.guests["g"].owner
    assert owner is not None and moved.guests["g"].generation == 4
    # The new owner gives up too: more than max_relocations nodes failed -> error.
    moved = build(
        GuestStarting("g", owner, 4, 0.0),
        GuestStopped("g", owner, 5, True, True, "start failed", 0.0),
        state=moved,
    )
    with_lease(c, moved, 10.1)
    step = c.tick(10.11, view(moved, leader=True, seen={"n2": 10.1, "n3": 10.1}), local(10.11))
    (error,) = [x for x in commands(step) if isinstance(x, GuestError)]
    assert error.generation == 5 and "n1" in error.reason


def test_a_crash_after_a_stable_run_starts_a_fresh_count_and_does_not_give_up() -> None:
    c = core(max_start_failures=2, failure_reset_s=600.0)
    state = build(
        GuestStopped("g", "n1", 2, True, False, "crashed", 0.0),  # one failure already
        GuestStarting("g", "n1", 2, 0.0),
        GuestRunning("g", "n1", 3, 0.0),
        state=running_on_n1(),
    )
    assert state.guests["g"].failures == 1
    with_lease(c, state, 10.0)
    seen = DomainObservation("dom-g", True, owner="n1", generation=3)
    c.tick(10.005, view(state), local(10.005, seen))  # first seen running here
    with_lease(c, state, 609.0)
    c.tick(609.001, view(state), local(609.001, seen))
    # Gone before failure_reset_s of running: the second failure in a row, give up.
    early = c.tick(609.004, view(state), local(609.004))
    (stopped,) = [x for x in commands(early) if isinstance(x, GuestStopped)]
    assert stopped.failed and stopped.give_up and not stopped.fresh_count

    c = core(max_start_failures=2, failure_reset_s=600.0)
    with_lease(c, state, 10.0)
    c.tick(10.005, view(state), local(10.005, seen))
    with_lease(c, state, 610.0)
    c.tick(610.001, view(state), local(610.001, seen))
    late = c.tick(610.01, view(state), local(610.01))  # ran for 600 s: a fresh count
    (stopped,) = [x for x in commands(late) if isinstance(x, GuestStopped)]
    assert stopped.failed and stopped.fresh_count and not stopped.give_up
    assert "after running 600 s" in stopped.reason
    assert build(stopped, state=state).guests["g"].failures == 1


def test_own_stops_and_restarts_of_the_agent_are_not_counted_as_crashes() -> None:
    """Found by the simulator: an admin's disable reverted before the stop finished, and a
    self-fencing destroy, were counted as crashes of a healthy guest."""
    state = running_on_n1()
    c = core()
    with_lease(c, state, 10.0)
    step = c.tick(10.01, view(state), local(10.01))  # never saw it running: an agent restart
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed and "when this agent started" in stopped.reason

    c = core()
    with_lease(c, state, 10.0)
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    disabled = build(SetDesired("g", DesiredState.STOPPED, "admin", 0.0), state=state)
    (stop,) = of(StopGuest, c.tick(10.01, view(disabled), local(10.01, mine)).actions)
    assert stop == StopGuest("g", "dom-g", 2, c.settings.shutdown_timeout_s)
    c.action_done(stop.key, ActionResult(True), 10.02)  # enabled again before the stop ended
    step = c.tick(10.03, view(state), local(10.03))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed and "stopped by this node" in stopped.reason


def test_a_failed_start_is_reported_with_its_count_and_not_retried_before() -> None:
    """Found by the simulator: failed starts never made the node give up."""
    c = core(max_start_failures=2)
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )
    state = build(
        GuestStopped("g", "n1", 2, True, False, "start failed", 0.0),
        GuestStarting("g", "n1", 2, 0.0),
        state=state,
    )  # one failure before
    with_lease(c, state, 10.0)
    assert of(StartGuest, c.tick(10.01, view(state), local(10.01)).actions)
    c.action_done(ActionKey(ActionKind.START, "g"), ActionResult(False, "qemu says no"), 10.02)
    step = c.tick(10.03, view(state), local(10.03))
    assert not of(StartGuest, step.actions)
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.failed and stopped.give_up and "qemu says no" in stopped.reason


def test_maintenance_drains_the_node() -> None:
    c = core()
    state = build(SetMaintenance("n1", True, "admin", 0.0), state=running_on_n1())
    with_lease(c, state, 10.0)
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    step = c.tick(10.01, view(state), local(10.01, mine))
    assert [a.key for a in step.actions] == [ActionKey(ActionKind.STOP, "g")]
    step = c.tick(10.02, view(state), local(10.02))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed and "maintenance" in stopped.reason
    state = build(stopped, state=state)
    step = c.tick(10.03, view(state, leader=True, seen={"n2": 10.0, "n3": 10.0}), local(10.03))
    assert not [x for x in commands(step) if isinstance(x, GuestStarting)]
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    assert assign.assignments[0].node in ("n2", "n3")


def test_a_renamed_domain_waits_for_the_guest_to_stop_and_definitions_are_conditional() -> None:
    """The leader never proposes a new domain name under a running instance (it would go
    unrecognised and a second copy could start), and every definition it proposes carries
    the spec version it was decided on."""
    renamed = replace(SPEC, domain="dom-g2")
    leader = core("n1", guests=(renamed,))
    now = 1.0
    state = running_on_n1()
    with_lease(leader, state, now)
    step = leader.tick(now, view(state, leader=True), local(now))
    assert not of(DefineGuest, commands(step))
    assert any(e.name == "spec_change_waits" for e in step.events)
    stopped = build(GuestStopped("g", "n1", 2, False, False, "disabled", 0.0), state=state)
    step = leader.tick(now + 0.1, view(stopped, leader=True), local(now + 0.1))
    (define,) = of(DefineGuest, commands(step))
    assert define == DefineGuest(renamed, define.at, expect_version=0)  # type: ignore[union-attr]


# --- issue 8 item 4: no trust in unknown instances ----------------------------------------------
def test_an_instance_ahead_of_a_view_proven_fresh_is_foreign_and_destroyed() -> None:
    """A generation higher than the committed one is waited for only until this node's view is
    proven fresh (a heartbeat sent after the sighting committed): then it has no committed
    start, on the owner as on any other node, and is destroyed with an alert."""
    for me, owner in (("n2", "n1"), ("n1", "n1")):
        c = core(me)
        state = build(
            AssignGuests((Assignment("g", owner, 0),), "placed", 0.0),
            state=joined("n1", "n2", "n3"),
        )
        with_lease(c, state, 10.0)
        ahead = DomainObservation("dom-g", True, owner=me, generation=5, cluster="c")
        step = c.tick(10.05, view(state), local(10.05, ahead))
        assert not of(DestroyDomain, step.actions)  # the view may lag: wait
        with_lease(c, state, 10.1)  # sent after the sighting, committed: the view is fresh
        step = c.tick(10.15, view(state), local(10.15, ahead))
        (destroy,) = of(DestroyDomain, step.actions)
        assert destroy.reason == "foreign: generation 5 is ahead of the committed 1", me
        assert [e.name for e in step.events].count("foreign_domain") == 1
        assert not [x for x in commands(step) if isinstance(x, GuestRunning)]


def test_an_instance_of_another_cluster_is_never_adopted() -> None:
    c = core()
    state = running_on_n1()
    with_lease(c, state, 10.0)
    ours = DomainObservation("dom-g", True, owner="n1", generation=2, cluster="c")
    assert not of(DestroyDomain, c.tick(10.05, view(state), local(10.05, ours)).actions)
    theirs = DomainObservation("dom-g", True, owner="n1", generation=2, cluster="other")
    step = c.tick(10.1, view(state), local(10.1, theirs))
    (destroy,) = of(DestroyDomain, step.actions)
    assert destroy.reason == "foreign: its metadata names cluster 'other'"


def test_a_start_with_an_unknown_outcome_is_never_reported_stopped_while_it_may_complete() -> None:
    """A start that timed out may still complete (libvirt finishes a create() the agent gave
    up on). Reporting it stopped would let the leader place the guest elsewhere: two copies.
    It stays unknown until seen; long after, this node destroys it and only then reports."""
    c = core(start_timeout_s=5.0)
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )
    with_lease(c, state, 10.0)
    assert of(StartGuest, c.tick(10.01, view(state), local(10.01)).actions)
    timeout = ActionResult(False, "timed out after 60 s", unknown=True)
    c.action_done(ActionKey(ActionKind.START, "g"), timeout, 10.02)
    t = 10.2
    while t < 14.9:  # not seen, within start_timeout_s: neither restarted nor reported
        with_lease(c, state, t)
        step = c.tick(t + 0.01, view(state), local(t + 0.01))
        assert not of(StartGuest, step.actions) and not of(DestroyDomain, step.actions), t
        assert not [x for x in commands(step) if isinstance(x, GuestStopped)], t
        t += 0.5
    step = c.tick(15.05, view(state), local(15.05))  # start_timeout_s after the unknown
    (destroy,) = of(DestroyDomain, step.actions)
    assert destroy.generation == 2 and "unknown" in destroy.reason
    assert not [x for x in commands(step) if isinstance(x, GuestStopped)]
    c.action_done(destroy.key, ActionResult(True), 15.2)
    step = c.tick(15.21, view(state), local(15.21))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.failed and "start outcome unknown" in stopped.reason


def test_a_start_with_an_unknown_outcome_that_completes_late_is_reported_running() -> None:
    c = core(start_timeout_s=5.0)
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )
    with_lease(c, state, 10.0)
    assert of(StartGuest, c.tick(10.01, view(state), local(10.01)).actions)
    c.action_done(ActionKey(ActionKind.START, "g"), ActionResult(False, "lost", unknown=True), 10.1)
    with_lease(c, state, 10.5)
    late = DomainObservation("dom-g", True, owner="n1", generation=2, cluster="c")
    step = c.tick(10.6, view(state), local(10.6, late))
    assert [x for x in commands(step) if isinstance(x, GuestRunning)]
    assert not [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not of(DestroyDomain, step.actions)


def test_a_clean_shutdown_does_not_wait_start_timeout_on_an_unknown_start() -> None:
    """The guest is to be stopped anyway when the node leaves: waiting for a late create()
    gains nothing, and a leave must not hang for start_timeout_s. It is destroyed at once (the
    adapter's destroy waits for a create() still running) and reported stopped, not failed."""
    c = core(start_timeout_s=60.0)
    state = build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )
    with_lease(c, state, 10.0)
    assert of(StartGuest, c.tick(10.01, view(state), local(10.01)).actions)
    c.action_done(ActionKey(ActionKind.START, "g"), ActionResult(False, "lost", unknown=True), 10.1)
    c.begin_leave()
    step = c.tick(10.2, view(state), local(10.2))  # still leased (heartbeat at 10.0)
    (destroy,) = of(DestroyDomain, step.actions)
    assert destroy.generation == 2
    c.action_done(destroy.key, ActionResult(True), 10.3)
    step = c.tick(10.4, view(state), local(10.4))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed and "start outcome unknown" in stopped.reason
