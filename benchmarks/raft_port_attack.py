#!/usr/bin/env python3
"""Hostile peers against the Raft port of a real 3-node local cluster (issue 13).

    .venv/bin/python benchmarks/raft_port_attack.py [--duration 5] [--target leader|follower|both]
        [--attack oversized|slow|trickle|flood|all]

For each attack and target: a fresh cluster (3 agents, fence_dummy, one guest per node),
settled; a ClusterWatch samples every agent's /v1/status every 100 ms; the attack runs for
`--duration` seconds (tests/helpers/raft_attack.py), then the watch goes on for 3 s. Prints
what the attacker saw (connections, closes, bytes) and what the cluster did (lease losses,
guest stops, nodes declared failed, terms, heartbeats committed).

Measured here (2 shared cores, 15 s per attack, one at a time, fresh cluster each), before
the bounded transport (upstream pysyncobj 0.3.17), then after:

2 GiB frame, then zeros as fast as read
  before, at the leader: it lost its lease at +1.0 s, its guest was destroyed, it was
    declared failed; 2 elections. At a follower: the same, at +1.0 s.
  after: nothing; 2 759 connections in 15 s, each closed 3 ms (median) after it opened.
2 MB/s announcing 2 GiB
  before, at the leader: all 3 nodes lost their leases at +5.3 s, all 3 guests were
    destroyed, the leader was declared failed. At a follower: lease lost at +5.5 s, its guest
    destroyed, declared failed.
  after: nothing; each connection closed after 11 ms (median).
100 B/s announcing 3 000 B
  before: no harm, but the connection stayed open for ever. after: closed after 1.02 s.
300 connections held open
  before: no harm, but only 96 were ever accepted (listen queue 5, one accept per tick) and
    none was ever closed. after: no harm, at most 64 kept, each closed after ~1.05 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from haagent.localcluster.cluster import GuestPlan, LocalCluster, local_plan, wait_for
from tests.helpers.cluster_watch import ClusterWatch
from tests.helpers.raft_attack import Attack, flood, harm, oversized, slow_stream

ATTACKS: dict[str, Callable[[tuple[str, int], float], Attack]] = {
    "oversized": oversized,
    "slow": lambda t, d: slow_stream(t, d, rate_bps=2e6),
    "trickle": lambda t, d: slow_stream(t, d, rate_bps=100, announce=3000),
    "flood": lambda t, d: flood(t, d, count=300),
}


def settled(cluster: LocalCluster) -> dict[str, object]:
    def probe() -> dict[str, object] | None:
        docs = [cluster.status(n, timeout_s=1.0) for n in cluster.nodes()]
        leaders = {d["leader"] for d in docs}
        ok = (
            len(leaders) == 1
            and None not in leaders
            and all(d["quorum"] for d in docs)
            and all(g["state"] == "running" for g in docs[0]["guests"].values())
            and len(docs[0]["guests"]) == 3
        )
        return docs[0] if ok else None

    return wait_for("the cluster to settle", probe, 30.0)


def raft_address(cluster: LocalCluster, node: str) -> tuple[str, int]:
    assert cluster.plan is not None
    plan = next(n for n in cluster.plan.nodes if n.name == node)
    return plan.raft_host, plan.raft_port


def one(attack: str, target: str, duration_s: float, run_dir: Path) -> None:
    guests = tuple(GuestPlan(f"g{i}", 256, 10, (f"n{i}",)) for i in range(1, 4))
    cluster = LocalCluster(run_dir, local_plan(3, fence="dummy", guests=guests))
    cluster.write()
    try:
        cluster.start()
        doc = settled(cluster)
        leader = str(doc["leader"])
        victim = leader if target == "leader" else min(n for n in cluster.nodes() if n != leader)
        with ClusterWatch(cluster) as watch:
            wait_for("a first sample", lambda: watch.latest(victim), 5.0)
            t0 = time.monotonic()
            stats = ATTACKS[attack](raft_address(cluster, victim), duration_s).join()
            t1 = time.monotonic()
            time.sleep(3.0)
            t2 = time.monotonic()
        seen = harm(watch, t0, t2)
        print(f"\n== {attack} at the {target} ({victim}), {t1 - t0:.1f}s + 3s after")
        print("  attacker:", stats.summary())
        print("  cluster: ", seen.summary())
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--target", choices=["leader", "follower", "both"], default="both")
    parser.add_argument("--attack", choices=[*ATTACKS, "all"], default="all")
    args = parser.parse_args()
    targets = ["leader", "follower"] if args.target == "both" else [args.target]
    attacks = list(ATTACKS) if args.attack == "all" else [args.attack]
    with tempfile.TemporaryDirectory(prefix="haagent-attack-") as tmp:
        for i, (attack, target) in enumerate((a, t) for a in attacks for t in targets):
            one(attack, target, args.duration, Path(tmp) / f"run{i}")


if __name__ == "__main__":
    main()
