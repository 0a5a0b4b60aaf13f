"""Builders for driving the agent core with handcrafted views (tests/unit/test_core_*.py)
and for the state machine's own tests (`run`, `cluster`, `with_guest_on`, `fail`).

The state in each view is built by applying real commands, so it is a state the cluster can
actually reach.
"""

from __future__ import annotations

from collections.abc import Iterable

from haagent.agent import (
    AgentCore,
    AgentSettings,
    LocalView,
    NodeSettings,
    ProposalKey,
    ProposalKind,
    Step,
)
from haagent.commands import (
    AssignGuests,
    Assignment,
    Command,
    DeclareFailed,
    DefineGuest,
    GuestRunning,
    GuestStarting,
    Heartbeat,
    Join,
)
from haagent.core.settings import timing_overrides
from haagent.model import (
    ClusterState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    NodeRole,
)
from haagent.ports import (
    ConsensusView,
    DomainObservation,
    HeartbeatSeen,
    Outcome,
    OutcomeKind,
)
from haagent.statemachine import Result, apply
from haagent.timing import FAST_TIMING

SPEC = GuestSpec("g", "dom-g", 256)
GUEST = GuestSpec("g", "g", 256)
"""The state-machine tests' guest (its domain named like it)."""
ACCEPTED = Outcome(OutcomeKind.ACCEPTED)
STOPPED_G = ProposalKey(ProposalKind.GUEST_STOPPED, "g")
NODES = {
    n: NodeSettings(NodeRole.HYPERVISOR, 1024, FenceMethod.AGENT, 5.0) for n in ("n1", "n2", "n3")
}


def settings(node: str = "n1", **kw: object) -> AgentSettings:
    base: dict[str, object] = {
        "cluster": "c",
        "node": node,
        "nodes": NODES,
        "guests": (SPEC,),
        **timing_overrides(FAST_TIMING),  # the numbers these tests were written with
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


def hold_lease(c: AgentCore, state: ClusterState, start: float, end: float) -> None:
    """Make `c` hold its lease without a gap from about `start` to `end` + lease_s: a
    heartbeat sent and committed every half second (failure detection counts silence only
    over such a stretch)."""
    now = start
    while now < end:
        with_lease(c, state, now)
        now += 0.5
    with_lease(c, state, end)


def commands(step: Step) -> list[Command]:
    return [p.command for p in step.proposals]


def of(kind: type, items: Iterable[object]) -> list[object]:
    return [x for x in items if isinstance(x, kind)]


def running_on_n1() -> ClusterState:
    return build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        GuestRunning("g", "n1", 2, 0.0),
        state=joined("n1", "n2", "n3"),
    )


def failed_n2(state: ClusterState) -> ClusterState:
    seq = state.node("n2").heartbeat_seq
    return build(
        DeclareFailed("n2", seq, FailureEvidence("n1", seq, 2.0, "silent", 0.0)), state=state
    )


# --- the state machine's tests: commands applied one by one, each result kept --------------


def run(state: ClusterState, *commands: Command) -> tuple[ClusterState, list[Result]]:
    """Apply `commands` in order; the state after the last and every command's result."""
    results = []
    for c in commands:
        state, r = apply(state, c)
        results.append(r)
    return state, results


def evidence(seq: int) -> FailureEvidence:
    return FailureEvidence("n1", seq, 2.0, "silent", 0.0)


def cluster(*nodes: str) -> ClusterState:
    """`nodes` joined as up hypervisors (incarnation `<node>-1`), nothing else."""
    state = ClusterState()
    for n in nodes:
        state, (r,) = run(state, Join(n, f"{n}-1", NodeRole.HYPERVISOR, True, 0.0))
        assert r.accepted
    return state


def with_guest_on(
    state: ClusterState, node: str, running: bool = True, spec: GuestSpec = GUEST
) -> ClusterState:
    """`spec` defined, assigned to `node` and starting there at generation 1 (running at
    generation 2 if `running`)."""
    state, results = run(
        state,
        DefineGuest(spec, 0.0),
        AssignGuests((Assignment(spec.name, node, 0),), "placed", 0.0),
        GuestStarting(spec.name, node, 1, 0.0),
    )
    assert all(r.accepted for r in results)
    if running:
        state, (r,) = run(state, GuestRunning(spec.name, node, 2, 0.0))
        assert r.accepted
    return state


def fail(state: ClusterState, node: str) -> ClusterState:
    """`node` declared failed at its current heartbeat sequence."""
    seq = state.node(node).heartbeat_seq
    state, (r,) = run(state, DeclareFailed(node, seq, evidence(seq)))
    assert r.accepted, r
    return state
