"""AgentCore.tick: the decisions of one node, driven with handcrafted views.

Each test names the DESIGN.md safety rule it guards. The state in each view is built by
applying real commands, so it is a state the cluster can actually reach.
"""

from __future__ import annotations

from collections.abc import Iterable

from haagent.agent import (
    ActionResult,
    AgentCore,
    AgentSettings,
    DestroyDomain,
    LocalView,
    NodeSettings,
    RunFence,
    StartGuest,
    Step,
    StopGuest,
)
from haagent.commands import (
    AssignGuests,
    Assignment,
    Command,
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
    SetMaintenance,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
    NodeState,
)
from haagent.ports import (
    ConsensusView,
    DomainObservation,
    FenceOutcome,
    HeartbeatSeen,
    Outcome,
    OutcomeKind,
)
from haagent.statemachine import apply

SPEC = GuestSpec("g", "dom-g", 256)
ACCEPTED = Outcome(OutcomeKind.ACCEPTED)
NODES = {
    n: NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, 5.0) for n in ("n1", "n2", "n3")
}


def settings(node: str = "n1", **kw: object) -> AgentSettings:
    base: dict[str, object] = {
        "cluster": "c",
        "node": node,
        "nodes": NODES,
        "guests": (SPEC,),
        "initial_placement_wait_s": 0.0,
    }
    base.update(kw)
    return AgentSettings(**base)  # type: ignore[arg-type]


def build(*commands: Command, state: ClusterState | None = None) -> ClusterState:
    state = state or ClusterState()
    for c in commands:
        state, result = apply(state, c)
        assert result.accepted, (c, result)
    return state


def joined(*nodes: str) -> ClusterState:
    return build(
        *(Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0) for n in nodes),
        DefineGuest(SPEC, 0.0),
    )


def view(
    state: ClusterState, leader: bool = False, seen: dict[str, float] | None = None
) -> ConsensusView:
    heartbeats = {
        n: HeartbeatSeen(state.node(n).heartbeat_seq, at) for n, at in (seen or {}).items()
    }
    return ConsensusView(
        state=state, is_leader=leader, leader="n1" if leader else None, heartbeats=heartbeats
    )


def local(now: float, *running: DomainObservation) -> LocalView:
    return LocalView({d.name: d for d in running}, now)


def core(node: str = "n1", **kw: object) -> AgentCore:
    return AgentCore(settings(node, **kw), f"{node}-inc", started_at=0.0)


def with_lease(c: AgentCore, state: ClusterState, now: float) -> None:
    """Make `c` hold a lease until now + lease_s by committing a heartbeat sent now."""
    step = c.tick(now, view(state), local(now))
    hb = [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    assert hb, step
    c.proposal_done(hb[0].key, ACCEPTED, now + 0.01)


def commands(step: Step) -> list[Command]:
    return [p.command for p in step.proposals]


def of(kind: type, items: Iterable[object]) -> list[object]:
    return [x for x in items if isinstance(x, kind)]


# --- rule 2: leases come from committed heartbeats, measured from the send -----------------


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
    c.proposal_done(f"starting:{SPEC.name}", ACCEPTED, 10.06)

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


# --- rule 3: lost lease => self-fence -------------------------------------------------------


def running_on_n1() -> ClusterState:
    return build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        GuestRunning("g", "n1", 2, 0.0),
        state=joined("n1", "n2", "n3"),
    )


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


# --- failure detection ----------------------------------------------------------------------


def test_leader_declares_failure_only_after_the_timeout_conditional_on_the_sequence() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    with_lease(c, state, 10.0)
    seen = {"n2": 9.0, "n3": 10.0}
    t = 9.0 + c.settings.failure_timeout_s - 0.001
    step = c.tick(t, view(state, leader=True, seen=seen), local(t))
    assert not [x for x in commands(step) if isinstance(x, DeclareFailed)]
    step = c.tick(t + 0.002, view(state, leader=True, seen=seen), local(t))
    (declare,) = [x for x in commands(step) if isinstance(x, DeclareFailed)]
    assert declare.node == "n2" and declare.seq == state.node("n2").heartbeat_seq
    assert declare.evidence.silent_s > c.settings.failure_timeout_s


def test_a_leader_without_a_lease_decides_nothing() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    step = c.tick(100.0, view(state, leader=True, seen={"n2": 0.0, "n3": 0.0}), local(100.0))
    assert not [x for x in commands(step) if isinstance(x, DeclareFailed | AssignGuests)]


def test_silence_of_a_node_never_applied_here_counts_from_first_sight() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    with_lease(c, state, 100.0)
    step = c.tick(100.05, view(state, leader=True, seen={"n3": 100.0}), local(100.05))
    assert not [x for x in commands(step) if isinstance(x, DeclareFailed)]


def test_first_sight_restarts_with_each_new_sequence_and_keeps_one_entry_per_node() -> None:
    """A node whose heartbeats this core never applied (it learned them from a snapshot) is
    timed from when each new sequence was first seen, and old sequences are forgotten."""
    c = core()
    state = joined("n1", "n2", "n3")
    for k in range(50):  # n2 keeps renewing; this core only ever sees its sequences
        now = 100.0 + k
        state = build(Heartbeat("n2", "n2-inc"), state=state)
        with_lease(c, state, now)
        step = c.tick(now + 0.01, view(state, leader=True, seen={"n3": now}), local(now))
        assert not of(DeclareFailed, commands(step)), k
    assert len(c._m.first_seen) == 1  # n2 only, at its latest sequence
    # n2 falls silent: declared once the failure timeout has passed since its last sequence.
    last = 149.0
    with_lease(c, state, last + 1.0)
    early = c.tick(last + 1.3, view(state, leader=True, seen={"n3": last + 1.3}), local(last))
    assert not of(DeclareFailed, commands(early))
    with_lease(c, state, last + 1.5)
    late = c.tick(last + 1.5, view(state, leader=True, seen={"n3": last + 1.5}), local(last))
    assert [x.node for x in commands(late) if isinstance(x, DeclareFailed)] == ["n2"]


# --- rule 4: fence before recover -----------------------------------------------------------


def failed_n2(state: ClusterState) -> ClusterState:
    seq = state.node("n2").heartbeat_seq
    return build(
        DeclareFailed("n2", seq, FailureEvidence("n1", seq, 2.0, "silent", 0.0)), state=state
    )


def test_fencing_commits_its_start_runs_the_agent_and_commits_the_result() -> None:
    c = core()
    state = failed_n2(
        build(
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
            state=joined("n1", "n2", "n3"),
        )
    )
    with_lease(c, state, 10.0)
    seen = {"n3": 10.0}
    step = c.tick(10.01, view(state, leader=True, seen=seen), local(10.01))
    assert not of(RunFence, step.actions)  # not before its start is committed
    (started,) = [x for x in commands(step) if isinstance(x, FenceStarted)]
    assert not [x for x in commands(step) if isinstance(x, AssignGuests)]  # guest stays put
    c.proposal_done("fence_started:n2", ACCEPTED, 10.02)
    state = build(started, state=state)

    step = c.tick(10.03, view(state, leader=True, seen=seen), local(10.03))
    (fence,) = of(RunFence, step.actions)
    assert not [x for x in commands(step) if isinstance(x, AssignGuests)]

    c.action_done(
        fence.key,
        ActionResult(
            False,
            "bmc timeout",  # type: ignore[attr-defined]
            FenceOutcome(False, "bmc timeout"),
        ),
        10.5,
    )
    step = c.tick(10.51, view(state, leader=True, seen=seen), local(10.51))
    (result,) = [x for x in commands(step) if isinstance(x, FenceResult)]
    assert not result.ok
    c.proposal_done("fence_result:n2", ACCEPTED, 10.52)
    state = build(result, state=state)
    # Backed off: no new attempt at once, and still no recovery.
    step = c.tick(10.6, view(state, leader=True, seen=seen), local(10.6))
    assert not commands(step) or all(
        not isinstance(x, FenceStarted | AssignGuests) for x in commands(step)
    )
    retry_at = 10.5 + c.settings.fence_retry_initial_s + 0.01
    with_lease(c, state, retry_at - 0.1)
    step = c.tick(
        retry_at,
        view(state, leader=True, seen=seen),
        local(11.6),
    )
    assert [x for x in commands(step) if isinstance(x, FenceStarted)]


def test_recovery_follows_a_committed_fence() -> None:
    c = core()
    state = failed_n2(
        build(
            AssignGuests((Assignment("g", "n2", 0),), "placed", 0.0),
            GuestStarting("g", "n2", 1, 0.0),
            GuestRunning("g", "n2", 2, 0.0),
            state=joined("n1", "n2", "n3"),
        )
    )
    epoch = state.node("n2").failure_epoch
    state = build(
        FenceStarted("n2", epoch, "n1", 0.0),
        FenceResult("n2", epoch, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    with_lease(c, state, 10.0)
    step = c.tick(10.01, view(state, leader=True, seen={"n3": 10.0}), local(10.01))
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    (item,) = assign.assignments
    assert item.guest == "g" and item.node in ("n1", "n3") and item.expected_generation == 2


def test_watchdog_fencing_waits_for_lease_plus_timeout_plus_margin() -> None:
    nodes = dict(NODES)
    nodes["n2"] = NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.WATCHDOG, 5.0)
    c = core(nodes=nodes)
    state = failed_n2(joined("n1", "n2", "n3"))
    s = c.settings
    last_seen = 10.0
    deadline = last_seen + s.lease_s + 5.0 + s.watchdog_margin_s
    with_lease(c, state, deadline - 0.5)
    seen = {"n2": last_seen, "n3": deadline - 0.5}
    step = c.tick(deadline - 0.01, view(state, leader=True, seen=seen), local(19.0))
    assert not [x for x in commands(step) if isinstance(x, FenceResult)]
    assert not of(RunFence, step.actions)
    step = c.tick(deadline + 0.01, view(state, leader=True, seen=seen), local(deadline))
    (result,) = [x for x in commands(step) if isinstance(x, FenceResult)]
    assert result.ok and result.method is FenceMethod.WATCHDOG


# --- crash handling and leave ---------------------------------------------------------------


def test_a_crashed_guest_is_restarted_then_given_up_then_moved_then_in_error() -> None:
    c = core(max_start_failures=2, max_relocations=1)
    state = running_on_n1()  # generation 2
    with_lease(c, state, 10.0)
    seen = DomainObservation("dom-g", True, owner="n1", generation=2)
    assert not commands(c.tick(10.005, view(state), local(10.005, seen)))
    step = c.tick(10.01, view(state), local(10.01))  # it was running; now it is gone
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.failed and not stopped.give_up
    c.proposal_done("stopped:g", ACCEPTED, 10.02)
    state = build(stopped, state=state)
    assert state.guests["g"].failures == 1
    # Restarted locally first, as a new start with its own generation.
    step = c.tick(10.03, view(state), local(10.03))
    (starting,) = [x for x in commands(step) if isinstance(x, GuestStarting)]
    c.proposal_done("starting:g", ACCEPTED, 10.04)
    state = build(starting, GuestRunning("g", "n1", 3, 0.0), state=state)
    seen = DomainObservation("dom-g", True, owner="n1", generation=3)
    c.tick(10.045, view(state), local(10.045, seen))
    step = c.tick(10.05, view(state), local(10.05))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert stopped.give_up  # the second failure here: this node gives up
    c.proposal_done("stopped:g", ACCEPTED, 10.06)
    state = build(stopped, state=state)
    # It does not start it again; as leader it moves it to another node.
    step = c.tick(10.07, view(state, leader=True, seen={"n2": 10.0, "n3": 10.0}), local(10.07))
    assert not [x for x in commands(step) if isinstance(x, GuestStarting)]
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    assert assign.assignments[0].node != "n1"
    c.proposal_done("assign", ACCEPTED, 10.08)
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
    c.tick(10.01, view(state), local(10.01, mine))
    c._m.actions["stop:g"] = StopGuest("g", "dom-g", 2, 60.0)  # as if disabled, then enabled
    c.action_done("stop:g", ActionResult(True), 10.02)
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
    c.action_done("start:g", ActionResult(False, "qemu says no"), 10.02)
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
    assert [a.key for a in step.actions] == ["stop:g"]
    step = c.tick(10.02, view(state), local(10.02))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed and "maintenance" in stopped.reason
    state = build(stopped, state=state)
    step = c.tick(10.03, view(state, leader=True, seen={"n2": 10.0, "n3": 10.0}), local(10.03))
    assert not [x for x in commands(step) if isinstance(x, GuestStarting)]
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    assert assign.assignments[0].node in ("n2", "n3")


def test_leaving_stops_guests_then_commits_leave() -> None:
    c = core()
    state = running_on_n1()
    with_lease(c, state, 10.0)
    c.begin_leave()
    mine = DomainObservation("dom-g", True, owner="n1", generation=2)
    step = c.tick(10.01, view(state), local(10.01, mine))
    assert [a.key for a in step.actions] == ["stop:g"]
    assert not [p for p in step.proposals if p.key.startswith("leave:")]
    step = c.tick(10.02, view(state), local(10.02))
    (stopped,) = [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert not stopped.failed
    state = build(stopped, state=state)
    step = c.tick(10.03, view(state), local(10.03))
    (leave,) = [p for p in step.proposals if p.key.startswith("leave:")]
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
