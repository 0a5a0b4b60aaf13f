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


def post(
    c: LocalCluster, node: str, path: str, body: object | None = None, token: str | None = None
) -> tuple[int, dict[str, object]]:
    host, _, port = c.api_listen(node).rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token or c.token(node)}"}
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request("POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_admin_actions_and_whatif_through_the_api(cluster: LocalCluster) -> None:
    owner = cluster.any_status()["guests"]["g1"]["owner"]
    via = next(n for n in cluster.nodes() if n != owner)  # any agent forwards to the leader

    status, doc = post(cluster, via, "/v1/guests/g1/disable")
    assert status == 200 and doc["outcome"] == "accepted"
    wait_for(
        "g1 stopped",
        lambda: (
            True
            if cluster.status(owner)["local"] == {}
            and cluster.any_status()["guests"]["g1"]["state"] == "stopped"
            else None
        ),
        20,
    )
    status, doc = post(cluster, via, "/v1/guests/g1/enable")
    assert status == 200
    wait_for(
        "g1 running",
        lambda: True if cluster.any_status()["guests"]["g1"]["state"] == "running" else None,
        20,
    )

    owner = cluster.any_status()["guests"]["g1"]["owner"]
    status, doc = post(cluster, via, f"/v1/nodes/{owner}/maintenance", {"on": True})
    assert status == 200

    def moved() -> str | None:
        g = cluster.any_status()["guests"]["g1"]
        return g["owner"] if g["owner"] != owner and g["state"] == "running" else None

    new_owner = wait_for("g1 drained off the node in maintenance", moved, 20)
    assert cluster.any_status()["nodes"][owner]["maintenance"] is True

    status, _, body = get(cluster, via, f"/v1/whatif?fail={new_owner}", token=cluster.token(via))
    doc = json.loads(body)
    assert status == 200 and doc["quorum_kept"] is True
    # The node in maintenance takes nothing, so g1 could only go to the third node.
    third = next(n for n in cluster.nodes() if n not in (owner, new_owner))
    assert doc["moves"] == {"g1": {"from": new_owner, "to": third}}
    status, doc = post(cluster, via, f"/v1/nodes/{owner}/maintenance", {"on": False})
    assert status == 200

    # Bad requests get clear errors, not tracebacks.
    assert post(cluster, via, "/v1/guests/nope/disable")[0] == 404
    assert post(cluster, via, "/v1/guests/g1/reboot")[0] == 404
    assert post(cluster, via, "/v1/nodes/n9/maintenance", {"on": True})[0] == 404
    code, doc = post(cluster, via, f"/v1/nodes/{owner}/maintenance", {"on": "yes"})
    assert code == 400 and "body must be" in str(doc["error"])
    assert post(cluster, via, "/v1/guests/g1/disable", token="wrong-token-123")[0] == 401
    # confirm-fenced: only a node declared failed; the reason comes back with the 409.
    code, doc = post(cluster, via, f"/v1/nodes/{owner}/confirm-fenced", {"by": "ops"})
    assert code == 409 and "not failed" in str(doc["detail"]), doc
    assert post(cluster, via, f"/v1/nodes/{owner}/confirm-fenced")[0] == 409  # body optional
    assert post(cluster, via, "/v1/nodes/n9/confirm-fenced")[0] == 404
    for bad in ({"by": 1}, {"who": "ops"}, ["ops"], {"by": "x" * 65}, {"by": "a\nb"}):
        code, doc = post(cluster, via, f"/v1/nodes/{owner}/confirm-fenced", bad)
        assert code == 400 and "body must be" in str(doc["error"]), (bad, doc)
    code, _ = post(cluster, via, f"/v1/nodes/{owner}/confirm-fenced", token="wrong-token-123")
    assert code == 401
    # migrate: these nodes have no migration_uri, so a well-formed request is refused (409)
    # with the reason; bad bodies are 400, unknown names 404, a bad token 401.
    code, doc = post(cluster, via, "/v1/guests/g1/migrate", {"node": owner})
    assert code == 409 and "migration_uri" in str(doc["detail"]), doc
    assert post(cluster, via, "/v1/guests/g1/migrate", {"node": "n9"})[0] == 404
    assert post(cluster, via, "/v1/guests/nope/migrate", {"node": owner})[0] == 404
    for bad in ({}, {"node": 1}, {"node": owner, "generation": -1}, {"node": owner, "x": 1}):
        code, doc = post(cluster, via, "/v1/guests/g1/migrate", bad)
        assert code == 400 and "body must be" in str(doc["error"]), (bad, doc)
    code, _ = post(cluster, via, "/v1/guests/g1/migrate", {"node": owner}, token="wrong-token-123")
    assert code == 401
    assert cluster.any_status()["nodes"][owner]["state"] == "up"
    status, _, body = get(cluster, via, "/v1/whatif?fail=n9", token=cluster.token(via))
    assert status == 400 and "unknown node" in body
