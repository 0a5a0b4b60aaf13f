"""Synthetic cluster states and the full metrics exposition of an agent that sees them.

Used by the series-budget test (64 nodes x 10,000 guests) and by the checks that every
metric the shipped alerts and dashboard name is one the agent really exports. Nothing here
is a fake: it is the real collector and the real event registry, fed a handcrafted snapshot
(the same thing the loop publishes).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from haagent.agent import LocalView
from haagent.commands import Heartbeat
from haagent.core.settings import AgentSettings, NodeSettings
from haagent.daemon.offload import Offload
from haagent.daemon.telemetry import Snapshot, Telemetry, Tolerance, render_cluster
from haagent.model import (
    ClusterState,
    FenceMethod,
    GuestRecord,
    GuestSpec,
    GuestState,
    NodeRecord,
    NodeRole,
    NodeState,
)
from haagent.ports import (
    ConsensusView,
    DiskState,
    DomainObservation,
    HeartbeatSeen,
    Outcome,
    OutcomeKind,
    ReplicaObservation,
    ReplicaRole,
)

NOW = 1000.0
NODE_STATES = (NodeState.UP, NodeState.UP, NodeState.UP, NodeState.FAILED, NodeState.FENCED)
GUEST_STATES = tuple(GuestState)


def synthetic_state(nodes: int, guests: int) -> ClusterState:
    """`nodes` nodes (mostly up, some failed or fenced, every other one with a committed
    watchdog timeout) and `guests` guests spread over them in every state, some unowned."""
    names = [f"hv{i:02d}" for i in range(nodes)]
    node_recs = {
        n: NodeRecord(
            n,
            NodeRole.HYPERVISOR,
            NODE_STATES[i % len(NODE_STATES)],
            heartbeat_seq=i,
            watchdog_timeout_s=10.0 if i % 2 == 0 else None,
        )
        for i, n in enumerate(names)
    }
    guest_recs = {}
    for i in range(guests):
        name = f"guest-{i:05d}"
        spec = GuestSpec(name, name, 512)
        owner = None if i % 10 == 9 else names[i % nodes]
        state = GUEST_STATES[i % len(GUEST_STATES)]
        if owner is None:
            state = GuestState.STOPPED
        guest_recs[name] = GuestRecord(spec, owner=owner, generation=i, state=state)
    return ClusterState(node_recs, guest_recs, applied=1)


def synthetic_settings(state: ClusterState) -> AgentSettings:
    names = sorted(state.nodes)
    nodes = {
        n: NodeSettings(
            NodeRole.HYPERVISOR,
            65536,
            FenceMethod.WATCHDOG if i % 3 == 0 else FenceMethod.AGENT,
            10.0,
        )
        for i, n in enumerate(names)
    }
    return AgentSettings("c", names[0], nodes, tuple(g.spec for g in state.guests.values()))


def exposition(state: ClusterState, *, events: bool = True) -> str:
    """The whole /metrics text an agent that sees `state` would serve (event metrics with one
    event of each kind, then the scrape-time gauges)."""
    settings = synthetic_settings(state)
    view = ConsensusView(
        state,
        leader=settings.node,
        is_leader=True,
        term=4,
        heartbeats={n: HeartbeatSeen(1, NOW - 0.5) for n in state.nodes},
        commit_index=100,
        last_applied=100,
    )
    domains = {
        g.spec.domain: DomainObservation(g.spec.domain, True)
        for g in state.guests_of(settings.node)
    }
    required = frozenset(n for n, ns in settings.nodes.items() if ns.relies_on_watchdog)
    # One DRBD replica here (current) and one whose events2 is not current: the agent's
    # haagent_replica_* gauges (a handful per local replica, never per guest x node).
    drbd = {"r0": ReplicaObservation("r0", ReplicaRole.PRIMARY, DiskState.UP_TO_DATE, True)}
    local = LocalView(domains, NOW, drbd, frozenset({"r1"}))
    snap = Snapshot(view, NOW, NOW + 2.0, local, frozenset(), required, NOW - 0.1)
    telemetry = Telemetry(settings.node, Offload())
    try:
        telemetry.set_config(settings)
        telemetry.publish(snap)
        telemetry.loop.record(NOW, NOW, 0.002)
        telemetry.fence_operations.labels(settings.node, "ok").inc()
        telemetry.agent.fence_done(True, 2.2)
        heartbeat = Heartbeat(settings.node, "inc", 100)
        telemetry.agent.proposal_done(heartbeat, Outcome(OutcomeKind.ACCEPTED), 0.002)
        telemetry.agent.observation_failed("timed out")
        head = generate_latest(telemetry.registry).decode() if events else ""
    finally:
        telemetry.close()
    tolerance = Tolerance(1, "limited by the Raft majority", NOW - 3, 0.01, 100)
    return head + render_cluster(snap, tolerance, 0.01, NOW).decode()


def sample_counts(text: str) -> dict[str, int]:
    """Series per family name in an exposition."""
    return {f.name: len(f.samples) for f in text_string_to_metric_families(text)}


def exported_names(text: str) -> set[str]:
    """Every series name an exposition can hold, including those of families without a
    sample yet (a labelled counter before its first event)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run promtool (Debian's prometheus package); fail the test with its output unless it
    exits 0. Returns its standard output."""
    done = subprocess.run(
        ["promtool", *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
