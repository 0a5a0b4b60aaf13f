"""The Raft leader's host dies: the survivors keep their leases and their guests.

Real `haagent run` processes (real pysyncobj over TCP, libvirt's test driver, fence_dummy), one
guest per node, for each timing profile an admin may choose with a short election: the leader's
agent is SIGKILLed (its host thrown out of the window) and the survivors must never lose their
lease (so never destroy their own guests), while the dead leader's guest runs again elsewhere.

Found on 2026-12-05: the heartbeats a follower had sent to the dead leader were lost, and it
sent the next one only a whole period after the election (the shell scheduled its passes from
its own copy of the heartbeat time, so a retry the core brought forward got no pass); with
the election taking up most of the lease, survivors lost it in 3 of 5 leader kills with
`balanced` and 2 of 5 with `robust`, and in every one of 4 first kills after a cold start with
`balanced`. Now a heartbeat whose outcome comes back unknown (lost with the leader: pysyncobj
fails it once it learns the new leader) makes the next heartbeat go at once, and the election
timeout plus slack must fit in the lease minus a heartbeat period (config check).
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haagent.localcluster.cluster import (
    ClusterError,
    GuestPlan,
    LocalCluster,
    local_plan,
    running_cluster,
    wait_for,
)

pytestmark = pytest.mark.integration

KILLS = 2  # the first one after a cold start failed every time before the fix


def _running(cluster: LocalCluster) -> dict[str, Any] | None:
    """A status document in which every node holds a lease and every guest runs, else None."""
    docs = [cluster.status(n, timeout_s=1.0) for n in cluster.nodes()]
    if not all(d["quorum"] for d in docs) or len({d["leader"] for d in docs}) != 1:
        return None
    doc = docs[0]
    return doc if all(g["state"] == "running" for g in doc["guests"].values()) else None


@pytest.fixture(params=["balanced", "robust"])
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    guests = tuple(GuestPlan(f"g{i}", 256, 10, (f"n{i}",)) for i in range(1, 4))
    plan = local_plan(3, fence="dummy", guests=guests, timing={"profile": request.param})
    with (
        tempfile.TemporaryDirectory(prefix="haagent-leader-death-") as d,
        running_cluster(Path(d), plan) as running,
    ):
        yield running


def test_the_survivors_keep_their_leases_and_guests_when_the_leader_dies(
    cluster: LocalCluster,
) -> None:
    for kill in range(KILLS):
        before = wait_for("every guest running", lambda: _running(cluster), 60.0)
        leader = before["leader"]
        survivors = [n for n in cluster.nodes() if n != leader]
        kept = {g: r["generation"] for g, r in before["guests"].items() if r["owner"] != leader}
        moved = [g for g, r in before["guests"].items() if r["owner"] == leader]
        log_sizes = {n: len(cluster.log_file(n).read_bytes()) for n in survivors}
        cluster.signal_agent(leader, signal.SIGKILL)

        def recovered(moved: list[str] = moved, leader: str = leader) -> dict[str, Any] | None:
            try:
                doc = cluster.any_status(exclude=(leader,))
            except ClusterError:
                return None  # no survivor holds a lease: the log check below says why
            guests = doc["guests"]
            ok = all(
                guests[g]["state"] == "running" and guests[g]["owner"] != leader for g in moved
            )
            return doc if ok else None

        after = wait_for(f"kill {kill}: {moved} running on a survivor", recovered, 30.0)
        for guest, generation in kept.items():
            # Never restarted: its owner never lost its lease (a restart bumps the generation).
            assert after["guests"][guest]["generation"] == generation, (kill, guest, after)
        for node in survivors:
            new = cluster.log_file(node).read_bytes()[log_sizes[node] :].decode("utf-8", "replace")
            assert "no valid lease" not in new, (kill, node, new[-2000:])
        cluster.start_agent(leader)
        wait_for(f"{leader} to rejoin", lambda leader=leader: cluster.rejoined(leader), 60.0)
