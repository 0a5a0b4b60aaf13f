"""Failure detection (haagent.core.failure_detection): silence per node on this node's clock,
`DeclareFailed` conditional on the heartbeat sequence, only by a leader holding a lease."""

from __future__ import annotations

import dataclasses

from haagent.agent import AgentCore, Step
from haagent.commands import (
    AssignGuests,
    DeclareFailed,
    DefineGuest,
    Heartbeat,
    Join,
)
from haagent.model import ClusterState, GuestSpec, NodeRole, NodeState
from haagent.ports import ConsensusView, Outcome, OutcomeKind
from haagent.statemachine import apply
from tests.helpers.core_views import (
    ACCEPTED,
    build,
    commands,
    core,
    hold_lease,
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
    hold_lease(c, state, 8.0, 10.0)  # since before n2's last heartbeat
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
        hold_lease(c, state, now - 0.5, now)
        step = c.tick(now + 0.01, view(state, leader=True, seen={"n3": now}), local(now))
        assert not of(DeclareFailed, commands(step)), k
    assert len(c.failure_detection.first_seen) == 1  # n2 only, at its latest sequence
    # n2 falls silent: declared once the failure timeout has passed since its last sequence.
    last = 149.0
    hold_lease(c, state, last + 0.5, last + 1.0)
    early = c.tick(last + 1.3, view(state, leader=True, seen={"n3": last + 1.3}), local(last))
    assert not of(DeclareFailed, commands(early))
    with_lease(c, state, last + 1.5)
    late = c.tick(last + 1.5, view(state, leader=True, seen={"n3": last + 1.5}), local(last))
    assert [x.node for x in commands(late) if isinstance(x, DeclareFailed)] == ["n2"]


# --- issue 8 item 9: no fence for a silence nobody could break --------------------------------


def declared(step: Step) -> list[str]:
    return [x.node for x in commands(step) if isinstance(x, DeclareFailed)]


def test_a_leader_that_regains_its_lease_waits_a_full_failure_timeout_of_fresh_evidence() -> None:
    """The false fence of issue 8 (b): a leader cut off inbound could commit nothing for 2.5 s;
    right after the heal it counted that stretch as n2's silence and declared it failed. Its
    own silence proves nothing about n2: the count restarts when the lease comes back."""
    c = core()
    state = joined("n1", "n2", "n3")
    hold_lease(c, state, 0.0, 1.0)  # lease valid until 2.0
    seen = {"n2": 1.0, "n3": 1.0}
    # 2.0 .. 4.5: nothing commits (no lease); at 4.5 its heartbeat commits again.
    with_lease(c, state, 4.5)
    regained = 4.51
    t = regained + 0.05
    assert declared(c.tick(t, view(state, leader=True, seen=seen), local(t))) == []
    with_lease(c, state, 5.0)
    with_lease(c, state, 5.5)
    t = regained + c.settings.failure_timeout_s - 0.005
    assert declared(c.tick(t, view(state, leader=True, seen=seen), local(t))) == []
    # A full failure timeout with a valid lease and still no heartbeat: now the silence is real.
    t = regained + c.settings.failure_timeout_s + 0.005
    step = c.tick(t, view(state, leader=True, seen=seen), local(t))
    assert declared(step) == ["n2", "n3"]
    evidence = next(x for x in commands(step) if isinstance(x, DeclareFailed)).evidence
    assert c.settings.failure_timeout_s < evidence.silent_s < c.settings.failure_timeout_s + 0.01


def test_a_late_accepted_heartbeat_does_not_bridge_a_lapse() -> None:
    """A heartbeat sent while the lease was valid but answered after it lapsed restarts the
    unbroken stretch at the answer: in between, this node had no proof of being current."""
    c = core()
    state = joined("n1", "n2", "n3")
    hold_lease(c, state, 0.0, 1.0)  # until 2.0
    step = c.tick(1.9, view(state), local(1.9))
    (hb,) = [p for p in step.proposals if isinstance(p.command, Heartbeat)]
    c.proposal_done(hb.key, ACCEPTED, 2.3)  # until becomes 2.9, but 2.0 .. 2.3 had no lease
    assert c.lease.valid(2.3)
    assert c.lease.held_continuously_since(2.3) == 2.3
    assert c.lease.held_continuously_since(3.0) == float("inf")  # no lease: nothing counts


def test_a_lease_renewed_in_time_keeps_counting_silence() -> None:
    """Renewals that overlap keep the stretch unbroken: a peer silent over it is declared."""
    c = core()
    state = joined("n1", "n2", "n3")
    hold_lease(c, state, 0.0, 3.0)
    assert c.lease.held_continuously_since(3.0) == 0.01
    seen = {"n2": 1.0, "n3": 3.0}
    t = 1.0 + c.settings.failure_timeout_s + 0.01
    assert declared(c.tick(t, view(state, leader=True, seen=seen), local(t))) == ["n2"]


# --- issue 8 item 8: liveness means progress -------------------------------------------------


def run_leader(
    c: AgentCore, state: ClusterState, t: float, index: int, seen: dict[str, float]
) -> Step:
    """One pass of leader `c` whose replica is at `index`, keeping its lease (its own
    heartbeats commit at once)."""
    v = dataclasses.replace(view(state, leader=True, seen=seen), commit_index=index)
    step = c.tick(t, v, local(t))
    for p in step.proposals:
        if isinstance(p.command, Heartbeat):
            c.proposal_done(p.key, ACCEPTED, t)
    return step


def test_a_node_whose_replica_stopped_advancing_is_silent_however_often_it_commits() -> None:
    """Issue 8 (a): a restarted node's replica followed the leader with its index stuck; its
    heartbeats and joins still committed and kept it 'alive', so it was never declared failed
    and a guest assigned to it stayed dark. Heartbeats now carry the sender's applied index: one
    from a replica more than a lease behind proves nothing, the node gets no assignment and is
    declared failed, and its newer, equally stuck heartbeats cannot refuse the declaration."""
    c = core()
    state = joined("n1", "n2", "n3")
    declared_at: float | None = None
    declaration: DeclareFailed | None = None
    for k in range(60):
        t = round(0.05 * k, 3)
        index = 10 + 5 * k  # the cluster makes progress
        if k % 2 == 0:  # both peers' heartbeats commit every 0.1 s; n2's replica is stuck
            state = build(
                Heartbeat("n2", "n2-inc", 10), Heartbeat("n3", "n3-inc", index), state=state
            )
        step = run_leader(c, state, t, index, {"n2": t, "n3": t})
        n2 = state.node("n2")
        if t > c.settings.lease_s + 0.1:
            assert c.failure_detection.silent_s("n2", n2, view(state, seen={"n2": t}), t) > (
                c.settings.lease_s
            ), "a stuck node must get no assignment"
        found = [x for x in commands(step) if isinstance(x, DeclareFailed)]
        assert all(x.node == "n2" for x in found)
        if found and declaration is None:
            declared_at, declaration = t, found[0]
    assert declaration is not None and declared_at is not None
    assert c.settings.failure_timeout_s < declared_at <= c.settings.failure_timeout_s + 0.1
    assert declaration.behind_index == 11
    assert "stuck at index 10" in declaration.evidence.detail
    # Another stuck heartbeat commits first: the declaration still applies ...
    stuck = build(Heartbeat("n2", "n2-inc", 10), state=state)
    after, result = apply(stuck, declaration)
    assert result.accepted and after.node("n2").state is NodeState.FAILED
    # ... but not once the node reports progress past the index it was declared behind.
    caught_up = build(Heartbeat("n2", "n2-inc", 500), state=state)
    _, result = apply(caught_up, declaration)
    assert not result.accepted


def test_a_replica_a_little_behind_is_current() -> None:
    """Reporting an index reached here less than a lease before is normal lag: silence counts
    from the heartbeat's apply, as before."""
    c = core()
    state = joined("n1", "n2", "n3")
    for k in range(60):
        t = round(0.05 * k, 3)
        index = 10 + 5 * k
        if k % 2 == 0:
            lagging = 10 + 5 * max(0, k - 15)  # 0.75 s behind
            state = build(
                Heartbeat("n2", "n2-inc", lagging), Heartbeat("n3", "n3-inc", index), state=state
            )
        step = run_leader(c, state, t, index, {"n2": t, "n3": t})
        assert not [x for x in commands(step) if isinstance(x, DeclareFailed)]


def test_a_join_at_the_index_the_cluster_sat_at_is_current_and_one_behind_it_is_not() -> None:
    """Cold start of 22 agents (benchmarks/scale_real.py, 0.6 of a core for all): nothing
    committed for longer than a lease while the first leader was elected, so every Join
    carried the index the cluster sat at; the leader counted each joiner as behind since it
    had *reached* that index and placed the first guests on itself only. A replica at the
    latest index is current however long ago that index was reached; one at an index this
    node moved past more than a lease ago is still behind and gets nothing.

    g prefers n3, then n2. n3 joins with index 4, which the leader moved past at 0.5 s; n2
    with index 5, the latest until everything commits at 3.0 s: g must go to n2 (to n1
    without the fix, to n3 if a node really behind got assignments)."""
    spec = GuestSpec("g", "dom-g", 256, preferred_nodes=("n3", "n2"))
    c = core(guests=(spec,))
    defined = build(DefineGuest(spec, 0.0))

    def at(state: ClusterState, index: int, leader: bool = False) -> ConsensusView:
        return dataclasses.replace(
            view(state, leader=leader, seen={"n2": 3.0, "n3": 3.0}), commit_index=index
        )

    join_key = None
    for k in range(6):  # no leader yet: this node's own join times out every 0.5 s
        t = 0.5 * k
        step = c.tick(t, at(defined, 4 if k == 0 else 5), local(t))
        (join,) = [p for p in step.proposals if isinstance(p.command, Join)]
        if join_key is not None:
            raise AssertionError("one join in flight at a time")
        join_key = join.key
        if k < 5:
            c.proposal_done(join.key, Outcome(OutcomeKind.UNKNOWN, "timeout"), t + 0.4)
            join_key = None
    assert join_key is not None
    c.proposal_done(join_key, ACCEPTED, 3.0)  # sent at 2.5: the lease runs until 3.5
    after = build(
        Join("n1", "n1-inc", NodeRole.HYPERVISOR, True, 2.5, applied_index=5),
        Join("n2", "n2-inc", NodeRole.HYPERVISOR, True, 2.4, applied_index=5),
        Join("n3", "n3-inc", NodeRole.HYPERVISOR, True, 2.4, applied_index=4),
        state=defined,
    )
    v = at(after, 9, leader=True)
    step = c.tick(3.05, v, local(3.05))
    detector = c.failure_detection
    assert detector.silent_s("n2", after.node("n2"), v, 3.05) < 0.1
    assert detector.silent_s("n3", after.node("n3"), v, 3.05) > c.settings.lease_s
    (assign,) = [x for x in commands(step) if isinstance(x, AssignGuests)]
    assert [(a.guest, a.node) for a in assign.assignments] == [("g", "n2")]


def test_a_repeated_join_records_the_replica_it_reports_without_counting_as_a_heartbeat() -> None:
    state = joined("n1", "n2", "n3")
    seq = state.node("n2").heartbeat_seq
    again = Join("n2", "n2-inc", NodeRole.HYPERVISOR, True, 1.0, applied_index=7)
    after, result = apply(state, again)
    assert result.accepted and result.detail == "already joined"
    assert after.node("n2").applied_index == 7 and after.node("n2").heartbeat_seq == seq


def test_the_progress_history_stays_small() -> None:
    c = core()
    for k in range(10_000):
        c.failure_detection.observe_progress(k, k * 0.05)
    horizon = c.settings.failure_timeout_s + c.settings.lease_s
    assert len(c.failure_detection.progress) <= horizon / 0.05 + 2
    assert c.failure_detection.as_of(0, 500.0) <= 500.0 - horizon


def test_a_heartbeat_committed_late_or_twice_never_makes_a_replica_look_further_behind() -> None:
    """Found by the swarm: pysyncobj re-sends queued commands, so an old heartbeat can commit
    again seconds later; recording its old index made a healthy node look stuck, and it was
    declared failed again and again after a heal."""
    state = joined("n1", "n2", "n3")
    state = build(Heartbeat("n2", "n2-inc", 500), Heartbeat("n2", "n2-inc", 120), state=state)
    assert state.node("n2").applied_index == 500
    again = Join("n2", "n2-inc", NodeRole.HYPERVISOR, True, 1.0, applied_index=90)
    assert apply(state, again)[0].node("n2").applied_index == 500
    # A new incarnation starts afresh (its replica may be behind the old process's).
    rejoined = build(
        Join("n2", "n2-new", NodeRole.HYPERVISOR, True, 2.0, applied_index=80), state=state
    )
    assert rejoined.node("n2").applied_index == 80


def test_a_rejoined_incarnation_gets_a_full_failure_timeout_to_catch_up() -> None:
    """A node that rejoins after a fence (or with a wiped data directory) reports an old index
    while it catches up; that staleness belongs to its predecessor. Seen in the 10th-floor demo:
    the replaced node was declared failed again 150 ms after it rejoined. Now it is declared
    only if it is still stuck a full failure timeout after its new incarnation appeared."""
    c = core()
    state = joined("n1", "n2", "n3")
    rejoin_at = 3.0
    declared_at: float | None = None
    for k in range(120):
        t = round(0.05 * k, 3)
        index = 10 + 5 * k
        if k % 2 == 0:
            if t < rejoin_at:
                hb = Heartbeat("n2", "n2-inc", index)
            elif t == rejoin_at:
                hb = Join("n2", "n2-new", NodeRole.HYPERVISOR, True, t, applied_index=1)
            else:
                hb = Heartbeat("n2", "n2-new", 1)  # still catching up, stuck at 1
            state = build(hb, Heartbeat("n3", "n3-inc", index), state=state)
        step = run_leader(c, state, t, index, {"n2": t, "n3": t})
        if [x for x in commands(step) if isinstance(x, DeclareFailed)] and declared_at is None:
            declared_at = t
    assert declared_at is not None, "a node that never catches up is still declared failed"
    assert declared_at >= rejoin_at + c.settings.failure_timeout_s  # not 150 ms after
