"""DRBD replicas in the core: data before compute (DESIGN rule 5)."""

from __future__ import annotations

from haagent.agent import (
    AgentCore,
    AgentSettings,
    DemoteReplica,
    LocalView,
    NodeSettings,
    PromoteReplica,
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

SPEC = GuestSpec(
    "db", "db", 256, storage=StorageKind.DRBD, replica_nodes=("n1", "n2"), resource="r0"
)
NODES = {
    n: NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, 5.0) for n in ("n1", "n2", "n3")
}
UP = DiskState.UP_TO_DATE
SEC, PRI = ReplicaRole.SECONDARY, ReplicaRole.PRIMARY


def build(*commands: Command, state: ClusterState | None = None) -> ClusterState:
    state = state or ClusterState()
    for c in commands:
        state, result = apply(state, c)
        assert result.accepted, (c, result)
    return state


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
