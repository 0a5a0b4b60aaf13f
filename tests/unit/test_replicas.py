"""DRBD replicas in the core: data before compute (DESIGN rule 5)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from haagent.agent import (
    AgentCore,
    AgentSettings,
    DemoteReplica,
    LocalView,
    NodeSettings,
    PromoteReplica,
    ResumeReplicaIo,
    StartGuest,
    Step,
)
from haagent.commands import (
    AssignGuests,
    Assignment,
    Command,
    DeclareFailed,
    DefineGuest,
    FenceResult,
    GuestRunning,
    GuestStarting,
    GuestStopped,
    Heartbeat,
    Join,
    ReplicaOutdated,
    ReplicaUpToDate,
)
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
    StorageKind,
)
from haagent.placement import plan
from haagent.ports import (
    ConsensusView,
    DiskState,
    DomainObservation,
    Outcome,
    OutcomeKind,
    ReplicaObservation,
    ReplicaRole,
)
from haagent.statemachine import apply
from tests.helpers.core_views import build

SPEC = GuestSpec(
    "db", "db", 256, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"), resource="r0"
)
NODES = {
    n: NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, 5.0) for n in ("n1", "n2", "n3")
}
UP = DiskState.UP_TO_DATE
SEC, PRI = ReplicaRole.SECONDARY, ReplicaRole.PRIMARY


def base() -> ClusterState:
    return build(
        *(Join(n, f"{n}-inc", NodeRole.HYPERVISOR, True, 0.0) for n in NODES),
        DefineGuest(SPEC, 0.0),
    )


def starting_on(node: str, state: ClusterState | None = None) -> ClusterState:
    state = state or base()
    gen = state.guests["db"].generation
    return build(
        AssignGuests((Assignment("db", node, gen),), "placed", 0.0),
        GuestStarting("db", node, gen + 1, 0.0),
        state=state,
    )


def step_for(
    node: str, state: ClusterState, rep: ReplicaObservation | None, running: bool = False
) -> Step:
    core = AgentCore(
        AgentSettings(cluster="c", node=node, nodes=NODES, guests=(SPEC,)),
        f"{node}-inc",
        started_at=0.0,
    )
    first = core.tick(1.0, ConsensusView(state=state), LocalView({}, 1.0))
    hb = next(p for p in first.proposals if isinstance(p.command, Heartbeat))
    core.proposal_done(hb.key, Outcome(OutcomeKind.ACCEPTED), 1.0)
    domains = (
        {"db": DomainObservation("db", True, node, state.guests["db"].generation)}
        if running
        else {}
    )
    replicas = {"r0": rep} if rep is not None else {}
    return core.tick(1.01, ConsensusView(state=state), LocalView(domains, 1.01, replicas))


def rep(
    role: ReplicaRole = SEC,
    disk: DiskState = UP,
    connected: bool = True,
    peer_role: ReplicaRole | None = SEC,
    split: bool = False,
) -> ReplicaObservation:
    return ReplicaObservation(
        "r0",
        role,
        disk,
        connected,
        peer_role if connected else None,
        UP if connected else None,
        split,
    )


def kinds(step: Step) -> list[str]:
    return [type(a).__name__ for a in step.actions]


def test_placement_keeps_a_drbd_guest_on_its_replica_hosts() -> None:
    result = plan(base(), {"n1": 10, "n2": 1000, "n3": 10_000}, 4)
    assert [p.node for p in result.placements] == ["n2"]  # n3 has room but no replica


def test_promote_first_then_start() -> None:
    state = starting_on("n1")
    step = step_for("n1", state, rep())
    assert kinds(step) == ["PromoteReplica"]
    step = step_for("n1", state, rep(role=PRI))
    assert kinds(step) == ["StartGuest"]


def test_never_promote_while_the_peer_is_primary_or_unreachable_and_unfenced() -> None:
    state = starting_on("n1")
    assert kinds(step_for("n1", state, rep(peer_role=PRI))) == []
    step = step_for("n1", state, rep(connected=False))
    assert kinds(step) == [] and "neither fenced nor known outdated" in step.reason


def test_promote_when_the_unreachable_peer_is_fenced() -> None:
    state = base()
    seq = state.node("n1").heartbeat_seq
    state = build(
        AssignGuests((Assignment("db", "n1", 0),), "placed", 0.0),
        GuestStarting("db", "n1", 1, 0.0),
        GuestRunning("db", "n1", 2, 0.0),
        DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    state = starting_on("n2", state)
    assert kinds(step_for("n2", state, rep(connected=False))) == ["PromoteReplica"]


def test_never_promote_an_outdated_or_inconsistent_replica() -> None:
    state = build(
        AssignGuests((Assignment("db", "n1", 0),), "placed", 0.0),
        GuestStarting("db", "n1", 1, 0.0),
        GuestRunning("db", "n1", 2, 0.0),
        ReplicaOutdated("db", "n2", "n1", 2, 0.0),
        state=base(),
    )
    # The placement does not even try the outdated replica.
    seq = state.node("n1").heartbeat_seq
    state = build(
        DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    (unplaced,) = plan(state, {"n1": 1000, "n2": 1000, "n3": 1000}, 4).unplaced
    assert "only outdated replicas" in unplaced.why
    # And a host whose replica is not UpToDate refuses to start it and gives up on it.
    step = step_for("n2", starting_on("n2", base()), rep(disk=DiskState.INCONSISTENT))
    assert not [a for a in step.actions if isinstance(a, PromoteReplica | StartGuest)]
    (stopped,) = [p.command for p in step.proposals if isinstance(p.command, GuestStopped)]
    assert stopped.give_up and "inconsistent" in stopped.reason


def test_split_brain_is_never_resolved_automatically() -> None:
    state = starting_on("n1")
    step = step_for("n1", state, rep(split=True))
    assert kinds(step) == [] and "split brain" in step.reason


def test_the_primary_records_a_lost_peer_as_outdated_and_a_resynced_one_as_current() -> None:
    state = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
    step = step_for("n1", state, rep(role=PRI, connected=False), running=True)
    (out,) = [p.command for p in step.proposals if isinstance(p.command, ReplicaOutdated)]
    assert out.node == "n2" and out.by == "n1"
    state = build(out, state=state)
    assert state.guests["db"].outdated_nodes == ("n2",)
    step = step_for("n1", state, rep(role=PRI), running=True)
    (back,) = [p.command for p in step.proposals if isinstance(p.command, ReplicaUpToDate)]
    state = build(back, state=state)
    assert state.guests["db"].outdated_nodes == ()


def test_only_the_owner_at_its_generation_may_outdate_its_peer() -> None:
    state = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
    for c in (
        ReplicaOutdated("db", "n1", "n2", 2, 0.0),
        ReplicaOutdated("db", "n2", "n1", 1, 0.0),
        ReplicaOutdated("db", "n3", "n1", 2, 0.0),
    ):
        _, result = apply(state, c)
        assert not result.accepted, c


def test_a_primary_that_no_longer_runs_its_guest_is_demoted() -> None:
    state = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
    step = step_for("n2", state, rep(role=PRI))  # n2 does not own it
    assert [a.resource for a in step.actions if isinstance(a, DemoteReplica)] == ["r0"]
    assert not [
        a
        for a in step_for("n1", state, rep(role=PRI), running=True).actions
        if isinstance(a, DemoteReplica)
    ]


def step_unknown(node: str, state: ClusterState) -> Step:
    """A pass while this node's events2 for r0 is not current (dead, restarting, no dump)."""
    core = AgentCore(
        AgentSettings(cluster="c", node=node, nodes=NODES, guests=(SPEC,)),
        f"{node}-inc",
        started_at=0.0,
    )
    first = core.tick(1.0, ConsensusView(state=state), LocalView({}, 1.0))
    hb = next(p for p in first.proposals if isinstance(p.command, Heartbeat))
    core.proposal_done(hb.key, Outcome(OutcomeKind.ACCEPTED), 1.0)
    local = LocalView({}, 1.01, {}, replicas_unknown=frozenset({"r0"}))
    return core.tick(1.01, ConsensusView(state=state), local)


def test_a_replica_whose_state_is_not_current_is_waited_on_never_acted_on() -> None:
    step = step_unknown("n1", starting_on("n1"))
    assert kinds(step) == [] and "not known now" in step.reason
    # Waiting is not giving up: the guest is not reported stopped (it would move on).
    assert not [p for p in step.proposals if isinstance(p.command, GuestStopped)]
    # And with no observation at all (the resource is not on this host) it gives up.
    step = step_for("n1", starting_on("n1"), None)
    (stopped,) = [p.command for p in step.proposals if isinstance(p.command, GuestStopped)]
    assert stopped.give_up


def frozen(pending: bool = False, only_fencing: bool = True) -> ReplicaObservation:
    """n1's Primary after its link was cut: I/O frozen by resource-and-stonith fencing."""
    return ReplicaObservation(
        "r0",
        PRI,
        UP,
        False,
        suspended=True,
        fence_frozen=only_fencing,
        fence_pending=pending,
    )


def test_io_frozen_by_a_failed_fence_peer_resumes_only_once_the_peer_is_committed_outdated() -> (
    None
):
    running = build(GuestRunning("db", "n1", 2, 0.0), state=starting_on("n1"))
    # Peer not committed outdated: commit that first, never resume on the local view alone.
    step = step_for("n1", running, frozen(), running=True)
    assert kinds(step) == []
    assert [type(p.command).__name__ for p in step.proposals if "Replica" in str(p.key)] == []
    assert any(isinstance(p.command, ReplicaOutdated) for p in step.proposals)
    outdated = build(ReplicaOutdated("db", "n2", "n1", 2, 0.0), state=running)
    step = step_for("n1", outdated, frozen(), running=True)
    (resume,) = step.actions
    assert isinstance(resume, ResumeReplicaIo)
    assert (resume.resource, resume.generation) == ("r0", 2)
    # Not while the handler still runs (its own verdict comes), not for an admin's suspend-io,
    # not on a replica that is connected again or not Primary, not on a node not owning it.
    assert kinds(step_for("n1", outdated, frozen(pending=True), running=True)) == []
    assert kinds(step_for("n1", outdated, frozen(only_fencing=False), running=True)) == []
    connected = replace(frozen(), connected=True, peer_role=SEC, peer_disk=UP)
    assert "ResumeReplicaIo" not in kinds(step_for("n1", outdated, connected, running=True))
    assert "ResumeReplicaIo" not in kinds(step_for("n2", outdated, frozen()))


def test_resume_io_needs_a_valid_lease() -> None:
    outdated = build(
        GuestRunning("db", "n1", 2, 0.0),
        ReplicaOutdated("db", "n2", "n1", 2, 0.0),
        state=starting_on("n1"),
    )
    core = AgentCore(
        AgentSettings(cluster="c", node="n1", nodes=NODES, guests=(SPEC,)), "n1-inc", 0.0
    )
    domains = {"db": DomainObservation("db", True, "n1", 2)}
    # No heartbeat ever committed: no lease, so no resume (the guest is destroyed instead).
    step = core.tick(
        100.0, ConsensusView(state=outdated), LocalView(domains, 100.0, {"r0": frozen()})
    )
    assert "ResumeReplicaIo" not in kinds(step)


disks = st.sampled_from([*DiskState])
roles = st.sampled_from([*ReplicaRole])


@given(
    disk=disks,
    connected=st.booleans(),
    peer_role=st.none() | roles,
    peer_disk=st.none() | disks,
    split=st.booleans(),
    suspended=st.booleans(),
    unknown=st.booleans(),
    peer_fenced=st.booleans(),
    peer_outdated=st.booleans(),
    self_outdated=st.booleans(),
)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_never_promote_a_replica_that_is_behind_or_whose_peer_may_write(
    disk: DiskState,
    connected: bool,
    peer_role: ReplicaRole | None,
    peer_disk: DiskState | None,
    split: bool,
    suspended: bool,
    unknown: bool,
    peer_fenced: bool,
    peer_outdated: bool,
    self_outdated: bool,
) -> None:
    """The safety rule of issue 9: a promotion only of an UpToDate replica, known current
    (not outdated in Raft, state current), with a peer that is a connected Secondary or
    committed fenced or committed outdated; never in a split brain."""
    state = base()
    seq = state.node("n1").heartbeat_seq
    commands: list[Command] = [
        AssignGuests((Assignment("db", "n1", 0),), "placed", 0.0),
        GuestStarting("db", "n1", 1, 0.0),
        GuestRunning("db", "n1", 2, 0.0),
    ]
    if self_outdated:
        commands.append(ReplicaOutdated("db", "n2", "n1", 2, 0.0))
    if peer_fenced:
        commands += [
            DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)),
            FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        ]
    else:
        commands.append(GuestStopped("db", "n1", 2, False, False, "moved", 0.0))
    state = starting_on("n2", build(*commands, state=state))
    if peer_outdated:
        # n2 owns it now: it may commit its peer n1 as outdated.
        state = build(ReplicaOutdated("db", "n1", "n2", state.guests["db"].generation, 0.0),
                      state=state)  # fmt: skip
    obs = ReplicaObservation(
        "r0", SEC, disk, connected, peer_role if connected else None,
        peer_disk if connected else None, split, suspended, suspended,
    )  # fmt: skip
    step = step_unknown("n2", state) if unknown else step_for("n2", state, obs)
    if not any(isinstance(a, PromoteReplica) for a in step.actions):
        return
    assert not unknown and not split and not self_outdated
    assert disk is DiskState.UP_TO_DATE
    if connected:
        assert peer_role is not ReplicaRole.PRIMARY
    else:
        assert peer_fenced or peer_outdated


def test_a_drbd_guest_its_up_replica_gave_up_on_waits_for_the_other_replica_host() -> None:
    """n2 gave up on the guest (its replica is Outdated: it can never start there) while n1,
    the other replica host, is down: the guest waits for n1 instead of going to the error
    state, and is placed on n1 once it is back (found by the FakeDrbd's Outdated disk state,
    tests/scenarios/drbd_outdated_disk_never_promoted.scn)."""
    state = base()
    seq = state.node("n1").heartbeat_seq
    state = build(
        AssignGuests((Assignment("db", "n1", 0),), "placed", 0.0),
        GuestStarting("db", "n1", 1, 0.0),
        GuestRunning("db", "n1", 2, 0.0),
        DeclareFailed("n1", seq, FailureEvidence("n3", seq, 2.0, "silent", 0.0)),
        FenceResult("n1", 1, True, FenceMethod.AGENT, "off", 0.0),
        state=state,
    )
    state = starting_on("n2", state)
    g = state.guests["db"]
    stopped = GuestStopped("db", "n2", g.generation, True, True, "local replica is outdated", 0.0)
    state = build(stopped, state=state)
    assert state.guests["db"].failed_nodes == ("n2",)
    capacity = {"n1": 1000, "n2": 1000, "n3": 1000}
    result = plan(state, capacity, 4)
    (unplaced,) = result.unplaced
    assert (
        unplaced.waiting
        and not unplaced.hopeless
        and "waiting for replica host n1" in (unplaced.why)
    )
    state = build(Join("n1", "n1-2", NodeRole.HYPERVISOR, True, 0.0), state=state)
    assert [(p.guest, p.node) for p in plan(state, capacity, 4).placements] == [("db", "n1")]
