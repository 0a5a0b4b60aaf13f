"""Failure detection (haagent.core.failure_detection): silence per node on this node's clock,
`DeclareFailed` conditional on the heartbeat sequence, only by a leader holding a lease."""

from __future__ import annotations

from haagent.commands import (
    AssignGuests,
    DeclareFailed,
    Heartbeat,
)
from tests.helpers.core_views import (
    build,
    commands,
    core,
    joined,
    local,
    of,
    view,
    with_lease,
)

# --- failure detection -----------------------------------------------------------------------


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
    assert len(c.failure_detection.first_seen) == 1  # n2 only, at its latest sequence
    # n2 falls silent: declared once the failure timeout has passed since its last sequence.
    last = 149.0
    with_lease(c, state, last + 1.0)
    early = c.tick(last + 1.3, view(state, leader=True, seen={"n3": last + 1.3}), local(last))
    assert not of(DeclareFailed, commands(early))
    with_lease(c, state, last + 1.5)
    late = c.tick(last + 1.5, view(state, leader=True, seen={"n3": last + 1.5}), local(last))
    assert [x.node for x in commands(late) if isinstance(x, DeclareFailed)] == ["n2"]
