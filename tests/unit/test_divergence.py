"""Divergence is detected, not swallowed (issue 8 item 6): state checkpoints compared at the
same index, the config digest committed with `Join`, and what a node does about either.

Each test names the rule it guards; each fails when that rule is removed."""

from __future__ import annotations

import dataclasses
import threading
import time

from prometheus_client import CollectorRegistry

from haagent.agent import LocalView
from haagent.checkpointer import Checkpointer
from haagent.commands import DeclareFailed, Heartbeat, Join, Leave, decode, encode
from haagent.core.digests import (
    CHECKPOINT_EVERY,
    KEEP_CHECKPOINTS,
    RecordDigests,
    config_digest,
    is_checkpoint,
    state_digest,
)
from haagent.core.divergence import judge
from haagent.daemon.telemetry import ClusterCollector, Snapshot
from haagent.model import Checkpoint, ClusterState, FailureEvidence, NodeRole, NodeState
from haagent.ports import ConsensusView, DomainObservation, Outcome, OutcomeKind
from haagent.statemachine import CONFIG_DRIFT, apply
from haagent.status import build_status, divergence_report, format_status
from tests.helpers.core_views import commands, core, hold_lease, joined, local, settings, view

A, B = "a" * 16, "b" * 16


def reporting(state: ClusterState, **checkpoints: Checkpoint) -> ClusterState:
    """`state` with each named node's latest checkpoint as its heartbeat committed it."""
    for node, cp in checkpoints.items():
        state, result = apply(state, Heartbeat(node, f"{node}-inc", None, cp))
        assert result.accepted, result
    return state


# --- digests ------------------------------------------------------------------------------


def test_state_digest_is_canonical_and_sees_any_change() -> None:
    state = joined("n1", "n2")
    # Same content built in another order: same digest (sorted keys, not insertion order).
    reordered = dataclasses.replace(state, nodes=dict(reversed(list(state.nodes.items()))))
    assert state_digest(reordered) == state_digest(state)
    n2 = state.node("n2")
    changed = state.with_node(dataclasses.replace(n2, changed_at=n2.changed_at + 1))
    assert state_digest(changed) != state_digest(state)


def test_the_memo_gives_the_same_digest_and_reuses_unchanged_records() -> None:
    state = joined("n1", "n2")
    memo: RecordDigests = {}
    assert state_digest(state, memo) == state_digest(state)
    n2 = state.node("n2")
    changed = state.with_node(dataclasses.replace(n2, changed_at=n2.changed_at + 1))
    assert state_digest(changed, memo) == state_digest(changed) != state_digest(state)
    # Pruned to the records of the last state: the memo never grows past one state's size.
    assert len(memo) == len(changed.nodes) + len(changed.guests)
    assert all(entry[0] is not n2 for entry in memo.values())


def test_config_digest_covers_the_cluster_wide_settings_but_not_the_node_name() -> None:
    base = config_digest(settings("n1"))
    assert config_digest(settings("n2")) == base  # every node of one cluster agrees
    assert config_digest(settings("n1", failure_timeout_s=9.0)) != base  # timing
    assert config_digest(settings("n1", guests=())) != base  # guests
    nodes = dict(settings("n1").nodes)
    nodes["n3"] = dataclasses.replace(nodes["n3"], watchdog_level=True)
    assert config_digest(settings("n1", nodes=nodes)) != base  # fencing


def test_checkpoints_are_every_k_commands_on_every_replica() -> None:
    assert not is_checkpoint(0) and not is_checkpoint(CHECKPOINT_EVERY - 1)
    assert is_checkpoint(CHECKPOINT_EVERY) and is_checkpoint(3 * CHECKPOINT_EVERY)
    assert is_checkpoint(8, every=4) and not is_checkpoint(9, every=4)


# --- judging checkpoints -------------------------------------------------------------------


def test_a_peer_whose_digest_differs_from_the_majority_is_diverged() -> None:
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B), n3=Checkpoint(256, A))
    verdicts = judge(state, "n1", 3, {256: A})
    assert verdicts.own is None and verdicts.peers == {"n2": Checkpoint(256, B)}


def test_this_replica_is_diverged_when_the_majority_holds_another_digest() -> None:
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, A), n3=Checkpoint(256, A))
    verdicts = judge(state, "n1", 3, {256: B})
    assert verdicts.own is not None and "checkpoint 256" in verdicts.own
    assert verdicts.peers == {}


def test_no_majority_no_verdict_and_only_the_same_index_counts() -> None:
    # Two replicas that disagree cannot tell which one is wrong.
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B))
    assert judge(state, "n1", 3, {256: A}).own is None
    assert judge(state, "n1", 3, {256: A}).peers == {}
    # A peer at another index is never compared with this replica's digest at this one.
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(512, B), n3=Checkpoint(256, A))
    verdicts = judge(state, "n1", 3, {256: A})
    assert verdicts.own is None and verdicts.peers == {}


def test_only_up_nodes_are_counted() -> None:
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B), n3=Checkpoint(256, B))
    n3 = state.node("n3")
    state = state.with_node(dataclasses.replace(n3, state=NodeState.FAILED))
    assert judge(state, "n1", 3, {256: A}).own is None  # n2 alone is no majority


# --- the state machine -------------------------------------------------------------------


def test_heartbeats_record_the_newest_checkpoint_only() -> None:
    state = reporting(joined("n1", "n2"), n2=Checkpoint(512, A))
    late, result = apply(state, Heartbeat("n2", "n2-inc", None, Checkpoint(256, B)))
    assert result.accepted and late.node("n2").checkpoint == Checkpoint(512, A)
    none, _ = apply(state, Heartbeat("n2", "n2-inc", None, None))
    assert none.node("n2").checkpoint == Checkpoint(512, A)


def test_a_join_with_another_config_than_the_up_nodes_is_refused() -> None:
    state = joined("n1")
    state, ok = apply(state, Join("n2", "n2-inc", NodeRole.HYPERVISOR, True, 0.0, config_digest=A))
    assert ok.accepted and state.node("n2").config_digest == A
    drifted = Join("n3", "n3-inc", NodeRole.HYPERVISOR, True, 0.0, config_digest=B)
    after, refused = apply(state, drifted)
    assert not refused.accepted and refused.detail.startswith(CONFIG_DRIFT)
    assert after.node("n3").state is NodeState.DOWN
    # The node's own old record does not count against it: n2 is the only up node with a
    # digest (n1 is an older agent, unchecked), so its restart with another config is taken.
    alone, ok = apply(state, Join("n2", "n2-new", NodeRole.HYPERVISOR, True, 1.0, config_digest=B))
    assert ok.accepted and alone.node("n2").config_digest == B


def test_the_first_node_up_sets_the_config_and_old_agents_are_not_checked() -> None:
    state = ClusterState()
    state, ok = apply(state, Join("n1", "i1", NodeRole.HYPERVISOR, True, 0.0, config_digest=B))
    assert ok.accepted
    # An agent older than the field (no digest) joins as before.
    state, ok = apply(state, Join("n2", "i2", NodeRole.HYPERVISOR, True, 0.0))
    assert ok.accepted
    # Once every node with a digest left, another config may start the cluster again.
    n1 = state.node("n1")
    state = state.with_node(dataclasses.replace(n1, state=NodeState.DOWN))
    state, ok = apply(state, Join("n3", "i3", NodeRole.HYPERVISOR, True, 0.0, config_digest=A))
    assert ok.accepted


def test_a_drifted_node_alone_up_cannot_make_its_config_the_clusters() -> None:
    """Swarm seed 1722: the others are failed or fenced, not gone: their config is still the
    cluster's, so the drifted node is refused and the original nodes are let back in."""
    state = ClusterState()
    for n in ("n1", "n2", "w1"):
        state, ok = apply(state, Join(n, f"{n}-1", NodeRole.HYPERVISOR, True, 0.0, config_digest=A))
        assert ok.accepted
    for n, down_as in (("n1", NodeState.FENCED), ("w1", NodeState.FAILED)):
        state = state.with_node(dataclasses.replace(state.node(n), state=down_as))
    drifted = Join("n2", "n2-2", NodeRole.HYPERVISOR, True, 1.0, config_digest=B)
    after, refused = apply(state, drifted)
    assert not refused.accepted and refused.detail.startswith(CONFIG_DRIFT)
    assert "it has not left cleanly" in refused.detail
    assert after.node("n2").config_digest == A
    back, ok = apply(after, Join("n1", "n1-2", NodeRole.HYPERVISOR, True, 2.0, config_digest=A))
    assert ok.accepted and back.node("n1").state is NodeState.UP
    # Once the others left cleanly, a new config may start the cluster (the stop-all path).
    for n in ("n1", "w1"):
        state = state.with_node(dataclasses.replace(state.node(n), state=NodeState.DOWN))
    _, ok = apply(state, drifted)
    assert ok.accepted


def test_a_declaration_for_divergence_stands_against_newer_heartbeats_of_that_checkpoint() -> None:
    bad = Checkpoint(256, B)
    state = reporting(joined("n1", "n2", "n3"), n2=bad)
    seq = state.node("n2").heartbeat_seq
    evidence = FailureEvidence("n1", seq, 0.0, "state diverged", 0.0)
    declare = DeclareFailed("n2", seq, evidence, diverged=bad)
    newer = reporting(state, n2=bad)  # it keeps heartbeating, still diverged
    failed, result = apply(newer, declare)
    assert result.accepted and failed.node("n2").state is NodeState.FAILED
    # A newer checkpoint since: the leader must judge again, the declaration is refused.
    moved = reporting(state, n2=Checkpoint(512, A))
    _, result = apply(moved, declare)
    assert not result.accepted


def test_new_fields_decode_from_entries_written_before_them() -> None:
    old = b'{"v": 1, "type": "heartbeat", "node": "n1", "incarnation": "i", "applied_index": 3}'
    assert decode(old) == Heartbeat("n1", "i", 3, None)
    old = b'{"v": 1, "type": "join", "node": "n1", "incarnation": "i", "role": "hypervisor",'
    old += b' "clean": true, "at": 1.0}'
    joined_cmd = decode(old)
    assert isinstance(joined_cmd, Join) and joined_cmd.config_digest is None
    hb = Heartbeat("n1", "i", 3, Checkpoint(256, A))
    assert decode(encode(hb)) == hb


# --- the core --------------------------------------------------------------------------------


def test_an_incompatible_replica_neither_joins_nor_heartbeats_and_says_so() -> None:
    c = core()
    state = joined("n2", "n3")  # n1 not a member: it would join
    bad = dataclasses.replace(view(state), incompatible="snapshot failed to load: x")
    step = c.tick(1.0, bad, local(1.0))
    assert not [x for x in commands(step) if isinstance(x, Join | Heartbeat)]
    assert step.diverged == "snapshot failed to load: x"
    # Sticky: a later view without the flag (a stale read) does not bring it back.
    step = c.tick(2.0, view(state), local(2.0))
    assert not [x for x in commands(step) if isinstance(x, Join | Heartbeat)]
    assert step.diverged is not None


def test_joins_carry_the_config_digest_and_a_refusal_for_drift_stops_the_node() -> None:
    c = core()
    step = c.tick(1.0, view(ClusterState()), local(1.0))
    (join,) = [p for p in step.proposals if isinstance(p.command, Join)]
    assert join.command.config_digest == config_digest(c.settings)
    refused = Outcome(OutcomeKind.REFUSED, f"{CONFIG_DRIFT}: x here, y on n2")
    events = c.proposal_done(join.key, refused, 1.1)
    assert any(e.name == "diverged" for e in events)
    step = c.tick(2.0, view(ClusterState()), local(2.0))
    assert step.diverged is not None and not step.proposals


def test_a_diverged_node_stops_once_its_guests_are_gone_without_a_leave() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    bad = dataclasses.replace(view(state), incompatible="x")
    c.begin_leave()
    running = DomainObservation("dom-g", True)
    step = c.tick(1.0, bad, local(1.0, running))
    assert not step.left and not [x for x in commands(step) if isinstance(x, Leave)]
    step = c.tick(2.0, bad, local(2.0))
    assert step.left and not [x for x in commands(step) if isinstance(x, Leave)]


def test_heartbeats_carry_the_latest_checkpoint() -> None:
    c = core()
    state = joined("n1", "n2", "n3")
    mine = dataclasses.replace(view(state), checkpoints={256: A, 512: B})
    step = c.tick(1.0, mine, local(1.0))
    (hb,) = [x for x in commands(step) if isinstance(x, Heartbeat)]
    assert hb.checkpoint == Checkpoint(512, B)


def test_the_leader_declares_a_diverged_peer_failed_at_once() -> None:
    c = core()
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B), n3=Checkpoint(256, A))
    hold_lease(c, state, 8.0, 10.0)
    seen = {"n2": 10.0, "n3": 10.0}  # nobody is silent
    leader = dataclasses.replace(view(state, leader=True, seen=seen), checkpoints={256: A})
    step = c.tick(10.1, leader, local(10.1))
    (declare,) = [x for x in commands(step) if isinstance(x, DeclareFailed)]
    assert declare.node == "n2" and declare.diverged == Checkpoint(256, B)
    assert "diverged" in declare.evidence.detail


def test_a_diverged_leader_stops_leading() -> None:
    c = core()
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, A), n3=Checkpoint(256, A))
    hold_lease(c, state, 8.0, 10.0)
    seen = {"n2": 0.0, "n3": 0.0}  # long silent: a trusted leader would declare both
    leader = dataclasses.replace(view(state, leader=True, seen=seen), checkpoints={256: B})
    step = c.tick(10.1, leader, local(10.1))
    assert step.diverged is not None
    assert not [x for x in commands(step) if isinstance(x, DeclareFailed | Heartbeat)]


# --- status ----------------------------------------------------------------------------------


def test_status_reports_diverged_nodes_and_why() -> None:
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B), n3=Checkpoint(256, A))
    n3 = state.node("n3")
    state = state.with_node(dataclasses.replace(n3, config_digest=B))
    v = ConsensusView(state=state, checkpoints={256: A})
    report = divergence_report(v, "n1", 3, A)
    assert set(report) == {"n2", "n3"}
    assert "checkpoint 256" in report["n2"] and "config digest" in report["n3"]
    doc = build_status(
        node="n1",
        cluster="c",
        pid=1,
        incarnation="i",
        view=v,
        now=0.0,
        lease_until=1.0,
        loop_age_s=0.0,
        local={},
        voters=3,
        config_digest=A,
    )
    assert doc["diverged"] == report and doc["checkpoint"] == {"index": 256, "digest": A}
    assert doc["nodes"]["n2"]["checkpoint"] == {"index": 256, "digest": B}
    assert "DIVERGED: n2" in format_status(doc)
    own = divergence_report(dataclasses.replace(v, incompatible="why"), "n1", 3, A)
    assert own["n1"] == "why"


# --- the checkpointer thread -----------------------------------------------------------------


def test_checkpoints_are_digested_off_the_apply_path() -> None:
    gate = threading.Event()
    callers: list[str] = []

    def slow_digest(state: ClusterState, memo: RecordDigests) -> str:
        callers.append(threading.current_thread().name)
        gate.wait(5.0)
        return state_digest(state, memo)

    cp = Checkpointer(slow_digest, every=4)
    try:
        state = ClusterState()
        started = time.perf_counter()
        for i in range(1, 4 * (KEEP_CHECKPOINTS + 4) + 1):
            cp.offer(state.with_applied(i))
        # Offering never waits for a digest, even while the thread is stuck in one.
        assert time.perf_counter() - started < 0.5
        assert cp.recent() == {}
        gate.set()
        assert cp.wait_for(4 * (KEEP_CHECKPOINTS + 4), 5.0)
        recent = cp.recent()
        assert len(recent) <= KEEP_CHECKPOINTS and max(recent) == 4 * (KEEP_CHECKPOINTS + 4)
        assert all(i % 4 == 0 for i in recent)
        assert cp.latest == Checkpoint(max(recent), recent[max(recent)])
        assert set(callers) == {"haagent-checkpoints"}
    finally:
        gate.set()
        cp.stop()


def test_the_diverged_nodes_are_a_metric() -> None:
    state = reporting(joined("n1", "n2", "n3"), n2=Checkpoint(256, B), n3=Checkpoint(256, A))
    v = ConsensusView(state=state, checkpoints={256: A})
    snap = Snapshot(v, 1.0, 2.0, LocalView(None, 1.0), frozenset(), voters=3, config_digest=A)
    r = CollectorRegistry()
    r.register(ClusterCollector(snap, None, 0.0, 1.0, "n1"))
    assert r.get_sample_value("haagent_node_diverged", {"node": "n2"}) == 1
    assert r.get_sample_value("haagent_node_diverged", {"node": "n3"}) == 0
    assert r.get_sample_value("haagent_node_diverged", {"node": "n1"}) == 0
    mine = Snapshot(
        dataclasses.replace(v, incompatible="why"), 1.0, 2.0, LocalView(None, 1.0), frozenset()
    )
    r = CollectorRegistry()
    r.register(ClusterCollector(mine, None, 0.0, 1.0, "n1"))
    assert r.get_sample_value("haagent_node_diverged", {"node": "n1"}) == 1
