"""The HTTP surface of real agents: health, metrics (checked by promtool), status auth."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    local_plan,
    running_cluster,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    plan = local_plan(3, fence="dummy", guests=(GuestPlan("g1", 256, 0, ("n1",)),))
    with running_cluster(tmp_path / "run", plan) as c:
        yield c


def get(c: LocalCluster, node: str, path: str, token: str | None = None) -> tuple[int, str, str]:
    host, _, port = c.api_listen(node).rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def metrics(c: LocalCluster, node: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, ctype, body = get(c, node, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_health_metrics_and_status_of_a_running_cluster(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    for node in cluster.nodes():
        status, _, body = get(cluster, node, "/v1/health")
        assert status == 200 and json.loads(body)["healthy"] is True

    m = metrics(cluster, "n1")
    for name in (
        "haagent_raft_term",
        "haagent_raft_leader",
        "haagent_raft_quorum",
        "haagent_node_state",
        "haagent_guest_state",
        "haagent_guest_owner",
        "haagent_lease_remaining_seconds",
        "haagent_failover_duration_seconds_count",
    ):
        assert name in m, name
    assert ({"node": "n2", "state": "up"}, 1.0) in m["haagent_node_state"]
    assert ({"guest": "g1", "state": "running"}, 1.0) in m["haagent_guest_state"]
    assert m["haagent_raft_quorum"] == [({}, 1.0)]
    leaders = sum(metrics(cluster, n)["haagent_raft_leader"][0][1] for n in cluster.nodes())
    assert leaders == 1

    _, _, text = get(cluster, "n1", "/metrics")
    exposition = tmp_path / "metrics.txt"
    exposition.write_text(text)
    lint = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    status, ctype, body = get(cluster, "n1", "/v1/status")
    assert (
        status == 401
        and ctype.startswith("application/json")
        and "token" in json.loads(body)["error"]
    )
    status, _, body = get(cluster, "n1", "/v1/status", token="wrong-token-123")
    assert status == 401
    status, _, body = get(cluster, "n1", "/v1/nope", token=cluster.token("n1"))
    assert status == 404 and "error" in json.loads(body)
    status, _, body = get(cluster, "n1", "/v1/status", token=cluster.token("n1"))
    doc = json.loads(body)
    assert status == 200 and doc["pid"] == cluster.agent_pid("n1")
    for key in ("node", "leader", "term", "quorum", "nodes", "guests", "local"):
        assert key in doc
    g1 = doc["guests"]["g1"]
    assert {"owner", "generation", "desired", "state", "last_transition"} <= set(g1)


def test_failover_is_counted_and_health_fails_without_a_majority(cluster: LocalCluster) -> None:
    victim = cluster.any_status()["guests"]["g1"]["owner"]
    cluster.signal_agent(victim, signal.SIGKILL)
    survivors = [n for n in cluster.nodes() if n != victim]

    def leader_counted() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        doc = cluster.any_status()
        if doc["guests"]["g1"]["state"] != "running" or doc["guests"]["g1"]["owner"] == victim:
            return None
        m = metrics(cluster, doc["leader"])
        return m if m["haagent_failover_duration_seconds_count"][0][1] >= 1 else None

    m = wait_for("the leader to count the failover", leader_counted, 30)
    assert ({"node": victim, "result": "ok"}, 1.0) in m["haagent_fence_operations_total"]

    # Without a majority the last agent standing loses its lease: health says so.
    cluster.signal_agent(survivors[0], signal.SIGKILL)
    last = survivors[1]

    def unhealthy() -> str | None:
        status, _, body = get(cluster, last, "/v1/health")
        return body if status == 503 else None

    body = wait_for("health 503", unhealthy, 10)
    assert "no valid lease" in json.loads(body)["reason"]
