"""Real agents with a DRBD guest, on this host: the daemon's DRBD wiring end to end, except
DRBD itself (the host kernel has no DRBD module, so `drbd.sh watch` fails here like on a host
whose DRBD is not loaded; real DRBD runs in tests/integration/test_real_drbd.py).

Three real agent processes (n1, n2 hypervisors holding g1's replicas, n3 a witness) with real
Raft: g1 is placed on n1, whose agent waits on its replica (events2 not current) and never
gives the guest up or promotes anything; status and metrics say so on the replica hosts only;
the fence socket each replica host serves answers the real `haagent drbd fence-peer` handler
through Raft: the owner's handler gets "peer outdated" (exit 4) once the commit lands, the
other host's gets "peer primary" (exit 6: DRBD outdates that side), and `unfence-peer`
clears the mark (exit 0)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from haagent.localcluster.cluster import GuestPlan, LocalCluster, local_plan, wait_for

pytestmark = pytest.mark.integration


def handler(
    cluster: LocalCluster, node: str, op: str, peer: str
) -> subprocess.CompletedProcess[str]:
    sock = cluster.run_dir / "state" / node / "drbd-fence.sock"
    return subprocess.run(
        [sys.executable, "-m", "haagent", "drbd", op, "g1", "--socket", str(sock),
         "--timeout-s", "20"],
        env={**os.environ, "DRBD_PEER": peer, "DRBD_RESOURCE": "g1"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def log_count(cluster: LocalCluster, node: str, text: str) -> int:
    return cluster.log_file(node).read_text(errors="replace").count(text)


def replica_current(cluster: LocalCluster, node: str) -> float | None:
    host, _, port = cluster.api_listen(node).rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "haagent_replica_current" and s.labels == {"guest": "g1",
                                                                   "resource": "g1"}:  # fmt: skip
                return s.value
    return None


def test_agents_wait_on_a_replica_they_cannot_see_and_serve_the_fence_socket(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    guest = GuestPlan("g1", 256, 10, ("n1",), replicas=("n1", "n2"))
    plan = local_plan(3, fence="dummy", guests=(guest,), witness=True)
    cluster = make_cluster(plan, start=False)
    cluster.start_bmcs()
    for node in cluster.nodes():
        cluster.start_agent(node)
    unknown = {"g1": {"guest": "g1", "current": False}}

    def waiting() -> dict[str, Any] | None:
        doc = cluster.status("n1")
        g = doc["guests"].get("g1")
        ok = g and g["owner"] == "n1" and g["state"] == "starting" and doc["drbd"] == unknown
        return doc if ok else None

    wait_for("g1 placed on n1, waiting on its replica", waiting, 60)
    wait_for(
        "n1's core to wait on the replica",
        lambda: (
            log_count(cluster, "n1", "why=the state of DRBD resource 'g1' is not known now") or None
        ),
        30,
    )
    # events2 keeps failing and is restarted; meanwhile the guest stays n1's, neither given
    # up nor started, and nothing is promoted.
    wait_for(
        "two events2 restarts on n1",
        lambda: log_count(cluster, "n1", "drbd g1: events2 stopped") >= 2 or None,
        60,
    )
    doc = cluster.status("n1")
    g1 = doc["guests"]["g1"]
    assert (g1["owner"], g1["state"], g1["failed_nodes"]) == ("n1", "starting", [])
    assert doc["local"] == {}
    for node in ("n1", "n2"):
        assert log_count(cluster, node, "promote") == 0
    assert cluster.status("n2")["drbd"] == unknown
    assert cluster.status("n3")["drbd"] == {}  # the witness holds no replica
    assert replica_current(cluster, "n1") == 0
    assert replica_current(cluster, "n3") is None
    # DRBD's fence-peer handler, as DRBD would run it on each replica host.
    owner = handler(cluster, "n1", "fence-peer", "n2")
    assert owner.returncode == 4, owner.stderr
    assert "peer-outdated" in owner.stderr
    other = handler(cluster, "n2", "fence-peer", "n1")
    assert other.returncode == 6, other.stderr
    assert "peer-primary" in other.stderr
    back = handler(cluster, "n1", "unfence-peer", "n2")
    assert back.returncode == 0, back.stderr
