"""Hostile strangers against the leader's Raft port of a real 3-agent cluster (issue 13).

Three `haagent run` processes (real pysyncobj with haagent's bounded transport, libvirt's test
driver, fence_dummy), one guest per node, so the leader runs one too. While a ClusterWatch
samples every agent's status every 100 ms, four attacks hit the leader's Raft port at once for
ATTACK_S seconds, none of them knowing the cluster secret:

* an announced 2 GiB frame followed by zeros as fast as the leader reads (reconnecting after
  every close), which before the fix stalled the node's Raft loop within ~1 s;
* a 2 MB/s stream announcing 2 GiB, which before the fix cost all three nodes their leases;
* a trickle of 100 B/s announcing a 3,000-byte frame (under the handshake limit, so only the
  handshake deadline can end it);
* a flood keeping 300 connections open, each with half a frame header (from 2.5 s on).

The attack threads run at nice 10 with small send buffers: they stand for another host, and on
this shared 2-core machine an attacker at full priority took enough CPU from the agents to
cause an election in 3 of 5 runs at load ~34 (an idle cluster: 0 of 6 windows), while the
attack itself costs the leader ~3 % of a core (10.6 % vs 7.7 % idle, 182 connections/s).

Checked: no node ever answered without a valid lease, no guest stopped, restarted or moved, no
node was declared failed, no new Raft term (the leader's heartbeats never starved), every
node's heartbeats kept committing; and the leader closed the oversized streams at once, the
trickle at the handshake deadline, and kept its unauthenticated connections under the cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haagent.consensus import RAFT_PORT_LIMITS
from haagent.localcluster.cluster import ClusterPlan, GuestPlan, LocalCluster, local_plan, wait_for
from haagent.timing import DEFAULT_TIMING
from tests.helpers.cluster_watch import ClusterWatch, log_lines
from tests.helpers.raft_attack import flood, harm, oversized, slow_stream

pytestmark = pytest.mark.integration

StartWatched = Callable[[ClusterPlan], tuple[LocalCluster, ClusterWatch]]

TIMING = DEFAULT_TIMING  # the plans name no profile: the default applies
ATTACK_S = 8.0
FLOOD_AFTER_S = 2.5
AFTER_S = 2.0
FLOOD = 300
HANDSHAKE_TIMEOUT_S = float(RAFT_PORT_LIMITS["handshakeTimeout"])
CAP = int(RAFT_PORT_LIMITS["maxUnauthenticatedConnections"])


def settled(cluster: LocalCluster) -> dict[str, object]:
    """Every node has a lease and agrees on the leader; every guest runs on its owner."""

    def probe() -> dict[str, object] | None:
        docs = {n: cluster.status(n, timeout_s=1.0) for n in cluster.nodes()}
        leaders = {d["leader"] for d in docs.values()}
        if len(leaders) != 1 or None in leaders or not all(d["quorum"] for d in docs.values()):
            return None
        ref = docs[str(next(iter(leaders)))]
        guests = ref["guests"]
        if len(guests) != 3 or any(g["state"] != "running" for g in guests.values()):
            return None
        for guest, rec in guests.items():
            if [n for n, d in docs.items() if guest in (d["local"] or {})] != [rec["owner"]]:
                return None
        return dict(ref)

    return wait_for("the cluster to settle", probe, 20.0)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_strangers_at_the_leaders_raft_port_cost_no_lease_and_no_guest(
    start_watched: StartWatched,
) -> None:
    guests = tuple(GuestPlan(f"g{i}", 256, 10, (f"n{i}",)) for i in range(1, 4))
    cluster, watch = start_watched(local_plan(3, fence="dummy", guests=guests))
    doc = settled(cluster)
    leader = str(doc["leader"])
    before = {g: (r["owner"], r["generation"]) for g, r in doc["guests"].items()}  # type: ignore[attr-defined]
    assert cluster.plan is not None
    plan = next(n for n in cluster.plan.nodes if n.name == leader)
    target = (plan.raft_host, plan.raft_port)
    leader_pid = cluster.agent_pid(leader)
    assert leader_pid is not None
    fds_before = open_fds(leader_pid)

    t0 = time.monotonic()
    attacks = [
        oversized(target, ATTACK_S),
        slow_stream(target, ATTACK_S, rate_bps=2e6),
        slow_stream(target, ATTACK_S, rate_bps=100, announce=3000),
    ]
    # The flood joins later, so that the trickle first meets the handshake deadline alone
    # (the flood then evicts the trickle's connections too: they are the same kind).
    fds_peak = 0
    while time.monotonic() < t0 + FLOOD_AFTER_S:
        time.sleep(0.1)
    attacks.append(flood(target, ATTACK_S - FLOOD_AFTER_S, FLOOD))
    # Mid-attack, the flood holds its connections: the leader keeps at most CAP of them.
    while time.monotonic() < t0 + ATTACK_S - 0.5:
        fds_peak = max(fds_peak, open_fds(leader_pid))
        time.sleep(0.1)
    stats = [a.join() for a in attacks]
    t1 = time.monotonic()
    wait_for(
        "samples after the attack",
        lambda: True if all(watch.latest_after(n, t1 + AFTER_S) for n in watch.nodes) else None,
        AFTER_S + 5.0,
    )
    t2 = time.monotonic()
    seen = harm(watch, t0, t2)
    watch.stop()
    print(f"\nattacks at the leader {leader} for {t1 - t0:.1f}s:")
    for s in stats:
        print("  " + s.summary())
    print(f"  leader fds: {fds_before} before, at most {fds_peak} during the attack")
    print("  cluster: " + seen.summary())

    # The cluster did not notice.
    for node in cluster.nodes():
        assert seen.lease_false_samples[node] == 0, seen.summary()
        assert seen.longest_silence_s[node] < TIMING.lease_s, seen.summary()
        assert seen.heartbeats.get(node, 0) >= (t2 - t0) / TIMING.heartbeat_s / 2, seen.summary()
    assert not seen.guest_stops, seen.summary()
    assert not seen.failed_nodes, seen.summary()
    assert len(set(seen.terms)) == 1, seen.summary()
    after = settled(cluster)
    assert after["leader"] == leader
    assert {g: (r["owner"], r["generation"]) for g, r in after["guests"].items()} == before  # type: ignore[attr-defined]
    assert not log_lines(cluster, leader, r"destroyed |declare_failed|lease_lost")

    # And the leader shut the strangers out the way it should.
    big, fast, trickle, crowd = stats
    for s in stats:
        assert not s.error, s.summary()
    for s in (big, fast):
        assert s.connections >= 10 and s.closed_by_target >= s.connections - 1, s.summary()
        assert sorted(s.close_after_s)[len(s.close_after_s) // 2] < 0.5, s.summary()
    # The first trickle met the deadline; none lasted longer (later ones may be evicted).
    assert trickle.closed_by_target >= 2, trickle.summary()
    first = trickle.close_after_s[0]
    assert HANDSHAKE_TIMEOUT_S - 0.05 <= first < HANDSHAKE_TIMEOUT_S + 0.75, trickle.summary()
    assert max(trickle.close_after_s) < HANDSHAKE_TIMEOUT_S + 0.75, trickle.summary()
    assert crowd.connections > FLOOD and crowd.closed_by_target > 0, crowd.summary()
    assert fds_peak <= fds_before + CAP + 10, (fds_before, fds_peak)
    summaries = log_lines(cluster, leader, r"raft port: closed connections .*: (.*)")
    assert summaries, "the leader never logged what it closed"
    reasons = " ".join(m.group(1) for _, m in summaries)
    for reason in ("oversized frame", "handshake timeout", "evicted"):
        assert reason in reasons, reasons
