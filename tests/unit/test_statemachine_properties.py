"""Property tests: random command sequences against the invariants of `apply`.

Hypothesis generates sequences over a small universe (3 nodes, 2 guests) so that conflicts
are frequent: stale generations, duplicate and late commands, reports from failed nodes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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
    Leave,
    SetDesired,
    SetMaintenance,
    decode,
    encode,
)
from haagent.model import (
    ClusterState,
    DesiredState,
    FailureEvidence,
    FenceMethod,
    GuestSpec,
    GuestState,
    NodeRole,
    NodeState,
)
from haagent.statemachine import apply

NODES = st.sampled_from(["n1", "n2", "n3"])
GUESTS = st.sampled_from(["g1", "g2"])
SMALL = st.integers(min_value=0, max_value=4)
INC = st.sampled_from(["a", "b"])
T = st.just(0.0)

commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Join, NODES, INC, st.just(NodeRole.HYPERVISOR), st.booleans(), T),
    st.builds(Leave, NODES, INC, T),
    st.builds(Heartbeat, NODES, INC),
    st.builds(
        DeclareFailed,
        NODES,
        SMALL,
        st.builds(FailureEvidence, NODES, SMALL, st.just(2.0), st.just("x"), T),
    ),
    st.builds(FenceStarted, NODES, SMALL, NODES, T),
    st.builds(
        FenceResult, NODES, SMALL, st.booleans(), st.sampled_from(FenceMethod), st.just("x"), T
    ),
    st.builds(DefineGuest, st.builds(GuestSpec, GUESTS, GUESTS, st.just(128)), T),
    st.builds(SetDesired, GUESTS, st.sampled_from(DesiredState), st.just("admin"), T),
    st.builds(
        AssignGuests,
        st.lists(st.builds(Assignment, GUESTS, NODES, SMALL), min_size=1, max_size=2).map(tuple),
        st.just("placed"),
        T,
    ),
    st.builds(GuestStarting, GUESTS, NODES, SMALL, T),
    st.builds(GuestRunning, GUESTS, NODES, SMALL, T),
    st.builds(GuestStopped, GUESTS, NODES, SMALL, st.booleans(), st.booleans(), st.just("x"), T),
    st.builds(SetMaintenance, NODES, st.booleans(), st.just("admin"), T),
    st.builds(GuestError, GUESTS, SMALL, st.just("x"), T),
)


def movable_before(state: ClusterState, guest: str) -> bool:
    g = state.guests[guest]
    if g.owner is None:
        return True
    owner = state.node(g.owner).state
    if owner in (NodeState.FENCED, NodeState.DOWN):
        return True
    return owner is NodeState.UP and g.state in (GuestState.STOPPED, GuestState.ERROR)


@settings(max_examples=400, deadline=None)
@given(st.lists(commands, max_size=60))
def test_invariants_hold_after_every_command(sequence: list[Command]) -> None:
    state = ClusterState()
    for command in sequence:
        new, result = apply(state, command)
        assert new.applied == state.applied + 1
        if not result.accepted:
            assert new.nodes == state.nodes and new.guests == state.guests, command
        for name, g in new.guests.items():
            old = state.guests.get(name)
            if old is None:
                continue
            # Generations never go back, and grow exactly when the owner changes.
            assert g.generation >= old.generation
            if g.owner != old.owner:
                assert g.generation > old.generation
                # Rule 4: ownership moves only from a safe state; never off a failed owner.
                assert movable_before(state, name), (command, old)
                assert g.state is GuestState.STOPPED
            # Never onto a node in maintenance.
            if g.owner != old.owner and g.owner is not None:
                assert not state.node(g.owner).maintenance
            # Only the owner, at its generation, moves a guest to starting/running.
            if g.state in (GuestState.STARTING, GuestState.RUNNING) and g.state != old.state:
                assert isinstance(command, GuestStarting | GuestRunning)
                assert command.node == g.owner and command.generation == g.generation
                assert new.node(g.owner).state is NodeState.UP
        for name, n in new.nodes.items():
            old_n = state.node(name)
            assert n.heartbeat_seq >= old_n.heartbeat_seq
            assert n.failure_epoch >= old_n.failure_epoch
            # A failed or fenced node comes back only through a clean join.
            if old_n.state in (NodeState.FAILED, NodeState.FENCED) and n.state is NodeState.UP:
                assert isinstance(command, Join) and command.clean
            # Fenced only from failed, by a successful result for the current epoch.
            if n.state is NodeState.FENCED and old_n.state is not NodeState.FENCED:
                assert isinstance(command, FenceResult) and command.ok
                assert old_n.state is NodeState.FAILED
                assert command.epoch == old_n.failure_epoch
        state = new


@settings(max_examples=300, deadline=None)
@given(commands)
def test_every_command_survives_the_wire(command: Command) -> None:
    assert decode(encode(command)) == command


@settings(max_examples=100, deadline=None)
@given(st.lists(commands, max_size=40))
def test_apply_is_deterministic(sequence: list[Command]) -> None:
    def run() -> ClusterState:
        state = ClusterState()
        for c in sequence:
            state, _ = apply(state, decode(encode(c)))
        return state

    assert run() == run()
