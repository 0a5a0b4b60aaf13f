"""Real agents in network namespaces under network faults (issue 8 items 8, 9 and 11).

* A leader cut off inbound must not declare a healthy node failed after the heal (item 9):
  the incident a Jepsen-style run found, reproduced with real pysyncobj over a real bridge.
* A deposed leader that was fenced (a real power-off through its BMC) and powered on again
  regains its lease within a stated bound (item 8).
* A few seeds of benchmarks/nemesis.py (item 11): no double run, no lost guest, no false
  failure or fence. The benchmark runs the long version.

Timings come from haagent/timing.py's profiles, never from numbers written here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from benchmarks.nemesis import run, summary
from haagent.localcluster.cluster import LocalCluster, wait_for
from haagent.timing import DEFAULT_TIMING, FAST_TIMING
from tests.helpers.cluster_watch import ClusterWatch, log_lines
from tests.helpers.netns import NetnsLab
from tests.helpers.netns_cluster import (
    drop_one_way,
    heal_network,
    netns_plan,
    partition,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEAF_S = 2.5  # as in the incident (fast profile: past failure_timeout_s + lease_s)


def _netns_cluster(
    tmp_path: Path,
    netns_lab: Callable[[int], NetnsLab],
    make_cluster: Callable[..., LocalCluster],
    nodes: int,
    profile: str | None,
) -> tuple[NetnsLab, LocalCluster]:
    lab = netns_lab(nodes)
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    cluster = make_cluster(
        netns_plan(lab, api_dir, nodes - 1, profile, fence="ipmi"), timeout_s=60.0
    )
    wait_settled(cluster)
    return lab, cluster


def _fenced(cluster: LocalCluster, node: str) -> bool | None:
    """`node` is off and a fresh view says its fence is done (powering it on earlier would
    race the fence agent's status polling, and the fence would kill it again)."""
    if cluster.agent_pid(node) is not None:
        return None
    view = cluster.any_status(exclude=(node,))
    return True if view["nodes"][node]["state"] == "fenced" else None


def _fences(cluster: LocalCluster, since_wall: float) -> list[str]:
    """Fences completed (OK or not) since wall-clock time `since_wall`, per the agents' logs."""
    return [
        f"{by} fenced {m.group(1)}"
        for by in cluster.nodes()
        for when, m in log_lines(cluster, by, r"fence (n\d+): ")
        if when >= since_wall
    ]


@pytest.mark.parametrize("followers_apart", [False, True], ids=["deaf", "deaf-and-stuck"])
def test_a_deaf_leader_declares_no_healthy_node_failed(
    followers_apart: bool,
    tmp_path: Path,
    netns_lab: Callable[[int], NetnsLab],
    make_cluster: Callable[..., LocalCluster],
    watch_cluster: Callable[[LocalCluster], ClusterWatch],
) -> None:
    """Issue 8 item 9, the incident: 3 nodes (fast profile), the leader's firewall drops all
    it receives for 2.5 s; its peers did nothing wrong. After the heal no node but the deaf
    leader itself may be declared failed or fenced (silence counts only while the declaring
    leader held its lease without a gap).

    "deaf": today a leader without majority contact steps down after the shortest election
    timeout (consensus.py, leaderFallbackTimeout) and the followers elect one of them within
    about a second, so nothing false happens even on a core without the item 9 fix.
    "deaf-and-stuck": the followers cannot reach each other either, so nobody can elect or
    commit for the whole 2.5 s, as in the incident; whoever leads after the heal regains its
    lease before the others' heartbeats arrive. On a core without the fix (the leader's
    unbroken lease not taken into account) that leader declares both healthy peers failed
    and fences them (checked by hand: see the commit message)."""
    assert FAST_TIMING.failure_timeout_s + FAST_TIMING.lease_s / 2 < DEAF_S
    lab, cluster = _netns_cluster(tmp_path, netns_lab, make_cluster, 3, "fast")
    watch = watch_cluster(cluster)
    # Whether the leader's first pass after the heal sees the others' heartbeats is a race:
    # the stuck variant repeats the fault so that a core without the fix loses it.
    for _ in range(3 if followers_apart else 1):
        _deaf_round(lab, cluster, watch, followers_apart)
    watch.stop()
    watch.assert_single_copy()


def _deaf_round(
    lab: NetnsLab, cluster: LocalCluster, watch: ClusterWatch, followers_apart: bool
) -> None:
    for node in cluster.nodes():
        if cluster.agent_pid(node) is None:
            cluster.bmcs[node].chassis("power", "on")  # the deaf leader, fenced last round
    first = wait_settled(cluster)[0]
    deaf = str(first["leader"])
    epochs0 = {n: rec["failure_epoch"] for n, rec in first["nodes"].items()}
    healthy = set(cluster.nodes()) - {deaf}
    i = cluster.nodes().index(deaf) + 1
    began = time.monotonic()
    drop_one_way(lab, i, "in")
    if followers_apart:
        a, b = (j for j in range(1, 4) if j != i)
        partition(lab, [a], versus=[b])
    time.sleep(DEAF_S)  # the fault's length is the point here, not a wait for a condition
    heal_network(lab)
    healed = time.monotonic()
    # The false fence came 0.57 s after the heal; give it a failure timeout and a lease more,
    # then wait until every live node holds a lease again and every guest runs.
    window = FAST_TIMING.failure_timeout_s + FAST_TIMING.lease_s

    def declared() -> set[str]:
        return {
            n
            for o in watch.answers()
            if o.t0 >= began and o.doc is not None
            for n, rec in o.doc["nodes"].items()
            if rec["failure_epoch"] > epochs0[n]
        }

    def over() -> bool | None:
        """Done once a healthy node was declared failed (the test fails on it), or once the
        window passed and every live node holds a lease and sees every guest running."""
        if declared() & healthy:
            return True
        if time.monotonic() < healed + window:
            return None
        alive = [n for n in cluster.nodes() if cluster.agent_pid(n) is not None]
        docs = [watch.latest_after(n, healed + window) for n in alive]
        if not all(o is not None and o.doc is not None and o.doc["quorum"] for o in docs):
            return None
        running = all(
            g["state"] == "running"
            for o in docs
            if o is not None and o.doc is not None
            for g in o.doc["guests"].values()
        )
        return running or None

    wait_for("every node to hold a lease and every guest to run", over, 60.0)
    failed = declared()
    all_fences = _fences(cluster, watch.wall(began))
    fences = [f for f in all_fences if f.split()[-1] in healthy]
    print(f"deaf leader {deaf}; declared failed: {sorted(failed)}; fences: {all_fences}")
    assert not failed & healthy, f"healthy nodes declared failed: {sorted(failed & healthy)}"
    assert not fences


def test_a_deposed_fenced_restarted_leader_regains_its_lease(
    tmp_path: Path,
    netns_lab: Callable[[int], NetnsLab],
    make_cluster: Callable[..., LocalCluster],
    watch_cluster: Callable[[LocalCluster], ClusterWatch],
) -> None:
    """Issue 8 item 8: cut the leader's cable until the others have elected a new leader,
    declared it failed and fenced it (its BMC powers it off: SIGKILL), heal, power it on:
    it holds a lease again within the bound, its replica current. Three rounds."""
    # Goal p99 <= 3 s (benchmarks/nemesis.py measures it). Here, conservatively, counted
    # from the restarted agent's first answer (its Python start-up took 4-6 s from the
    # power-on at load 30 here, and is not what item 8 is about): three leases. The stall of
    # issue 8 (a) kept a restarted leader without a lease for over 70 s.
    bound_s = 3 * DEFAULT_TIMING.lease_s
    lab, cluster = _netns_cluster(tmp_path, netns_lab, make_cluster, 3, None)
    watch = watch_cluster(cluster)
    times = []
    for _ in range(3):
        old = str(cluster.any_status()["leader"])
        i = cluster.nodes().index(old) + 1
        lab.cut(i)
        wait_for(f"{old} to be fenced", partial(_fenced, cluster, old), 60.0)
        lab.heal(i)
        cluster.bmcs[old].chassis("power", "on")
        powered = time.monotonic()

        def regained(old: str = old, powered: float = powered) -> tuple[float, float] | None:
            """(seconds since the power-on, since the agent first answered) at the first
            answer that shows a lease."""
            o = watch.latest_after(old, powered)
            if o is None or o.doc is None or not o.doc["quorum"]:
                return None
            up = next(a for a in watch.answers(old) if a.t0 > powered)
            return o.t1 - powered, o.t1 - up.t0

        times.append(wait_for(f"{old} to regain its lease", regained, 60.0))
        wait_settled(cluster)
    print(
        "lease regained (after power-on / after the agent first answered): "
        + ", ".join(f"{t:.2f}s / {u:.2f}s" for t, u in times)
    )
    assert max(u for _, u in times) <= bound_s
    watch.stop()
    watch.assert_single_copy()


def test_nemesis_seeds(tmp_path: Path, netns_lab: Callable[[int], NetnsLab]) -> None:
    """Three seeded nemesis runs of 5 nodes and 3 faults each (the benchmark runs 50)."""
    results = [run(seed, 5, 3, 5, None, tmp_path / f"seed-{seed}") for seed in (11, 12, 13)]
    for r in results:
        print(r.line())
    print("\n".join(summary(results)))
    for r in results:
        assert not r.double_runs, r.line()
        assert not r.lost_guests, r.line()
        assert not r.false_failures and not r.false_fences, r.line()
        assert all(f.settled is not None for f in r.faults), r.line()
