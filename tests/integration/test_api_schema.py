"""The API of a real agent over TLS: tokens, the OpenAPI document kept true, events, the CLI,
and a schemathesis run generated from the document.

One `haagent run` (one node, real Raft, libvirt's test driver, fence_dummy) serves HTTPS on
loopback with a self-signed certificate (openssl), a read token, an admin token and
`api_open_metrics = false`.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from haagent.api_connections import LINGER_QUIET_S
from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    local_plan,
    running_cluster,
    wait_for,
)
from haagent.openapi import OPENAPI_DOCUMENT
from tests.helpers.tls import make_cert

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789"
READ = "read-token-0123456789"
BIN = Path(sys.executable).parent


@dataclass
class Agent:
    cluster: LocalCluster
    cert: Path
    config: Path
    host: str
    port: int

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, str, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=10, context=ctx)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    folder = tmp_path_factory.mktemp("api-tls")
    cert, key = make_cert(folder)
    read_file = folder / "read.token"
    read_file.write_text(READ + "\n")
    plan = local_plan(1, fence="dummy", guests=(GuestPlan("g1", 256, 0, ("n1",)),))
    plan = replace(
        plan,
        token=ADMIN,
        extra_local={
            "api_read_token_file": str(read_file),
            "api_open_metrics": False,  # type: ignore[dict-item]
            "api_tls_cert_file": str(cert),
            "api_tls_key_file": str(key),
        },
    )
    with running_cluster(folder / "run", plan) as cluster:
        host, _, port = cluster.api_listen("n1").rpartition(":")
        yield Agent(cluster, cert, cluster.config_path("n1"), host, int(port))


def schema_of(name: str) -> Any:
    """A validator for one component of the served document ($refs resolve in it)."""
    root = {**OPENAPI_DOCUMENT["components"]["schemas"][name]}
    root["components"] = OPENAPI_DOCUMENT["components"]
    return jsonschema_rs.validator_for(root)


def test_tokens_levels_and_tls(agent: Agent) -> None:
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain = http.client.HTTPConnection(agent.host, agent.port, timeout=5)
        try:  # plain HTTP to the TLS port is no answer at all, never a served request
            plain.request("GET", "/v1/health")
            plain.getresponse().read()
        finally:
            plain.close()
    assert agent.call("GET", "/v1/health")[0] == 200
    assert agent.call("GET", "/metrics")[0] == 401
    status, ctype, body = agent.call("GET", "/metrics", READ)
    assert status == 200 and ctype.startswith("text/plain") and b"haagent_" in body
    assert agent.call("GET", "/v1/status")[0] == 401
    assert agent.call("GET", "/v1/status", "wrong-token-0123456789")[0] == 401
    assert agent.call("GET", "/v1/status", READ)[0] == 200
    status, _, body = agent.call("POST", "/v1/guests/g1/enable", READ)
    assert status == 403 and b"admin token" in body
    assert agent.call("POST", "/v1/guests/g1/enable", ADMIN)[0] in (200, 409)


def test_the_served_document_is_true_on_a_real_agent(agent: Agent) -> None:
    status, _, body = agent.call("GET", "/v1/openapi.json", READ)
    assert status == 200 and json.loads(body) == json.loads(json.dumps(OPENAPI_DOCUMENT))
    # (schema, method, documented path, the real answer)
    answers = [
        ("Health", "get", "/v1/health", agent.call("GET", "/v1/health")),
        ("Status", "get", "/v1/status", agent.call("GET", "/v1/status", READ)),
        ("Events", "get", "/v1/events", agent.call("GET", "/v1/events?limit=5", READ)),
        ("WhatIf", "get", "/v1/whatif", agent.call("GET", "/v1/whatif?fail=n1", READ)),
        ("Error", "get", "/v1/events", agent.call("GET", "/v1/events?limit=1001", READ)),
        ("Error", "get", "/v1/status", agent.call("GET", "/v1/status")),
        (
            "Outcome",
            "post",
            "/v1/guests/{guest}/{action}",
            agent.call("POST", "/v1/guests/g1/enable", ADMIN),
        ),
        (
            "Error",
            "post",
            "/v1/guests/{guest}/{action}",
            agent.call("POST", "/v1/guests/nope/enable", ADMIN),
        ),
        (
            "Outcome",
            "post",
            "/v1/nodes/{node}/maintenance",
            agent.call("POST", "/v1/nodes/n1/maintenance", ADMIN, {"on": False}),
        ),
    ]
    for name, method, path, (status, ctype, body) in answers:
        assert ctype.startswith("application/json"), (name, status, body[:200])
        schema_of(name).validate(json.loads(body))
        assert str(status) in OPENAPI_DOCUMENT["paths"][path][method]["responses"], (path, status)


def test_events_name_admin_actions_and_transitions(agent: Agent) -> None:
    assert agent.call("POST", "/v1/guests/g1/disable", ADMIN)[0] == 200
    try:
        status, _, body = agent.call("GET", "/v1/events?limit=1000", READ)
        doc = json.loads(body)
        assert status == 200 and doc["capacity"] == 1000 and not doc["truncated"]
        kinds = [e["type"] for e in doc["events"]]
        assert "join" in kinds and "guest_starting" in kinds and "guest_running" in kinds
        assert "heartbeat" not in kinds
        last = [e for e in doc["events"] if e["type"] == "set_desired"][-1]
        assert last["summary"].startswith("guest g1 set stopped by ")
        indexes = [e["index"] for e in doc["events"]]
        assert indexes == sorted(indexes)
        newer = json.loads(agent.call("GET", f"/v1/events?since={indexes[-2]}", READ)[2])
        # Only what came after: the last one seen, and what committed since (the stop).
        assert [e["index"] for e in newer["events"]][:1] == indexes[-1:]
        assert all(e["index"] > indexes[-2] for e in newer["events"])
    finally:
        assert agent.call("POST", "/v1/guests/g1/enable", ADMIN)[0] == 200


def test_the_admin_verbs_are_audited_and_answer_as_documented(agent: Agent) -> None:
    """cleanup, move, disarm/arm, freeze/thaw: admin token only, bodies checked, answers as the
    document says, each accepted one in the status's audit and in the events."""
    audit = {"by": "tester", "reason": "api test"}
    # (schema, documented path, expected status, the real answer)
    answers = [
        (
            "Outcome",
            "/v1/guests/{guest}/cleanup",
            200,
            agent.call("POST", "/v1/guests/g1/cleanup", ADMIN, audit),
        ),
        (
            "Outcome",
            "/v1/guests/{guest}/cleanup",
            200,
            agent.call("POST", "/v1/guests/g1/cleanup", ADMIN),
        ),
        (
            "Error",
            "/v1/guests/{guest}/cleanup",
            404,
            agent.call("POST", "/v1/guests/nope/cleanup", ADMIN),
        ),
        (
            "Error",
            "/v1/guests/{guest}/cleanup",
            403,
            agent.call("POST", "/v1/guests/g1/cleanup", READ),
        ),
        (
            "Outcome",
            "/v1/guests/{guest}/move",
            409,
            agent.call("POST", "/v1/guests/g1/move", ADMIN, {"node": "n1", **audit}),
        ),
        (
            "Error",
            "/v1/guests/{guest}/move",
            400,
            agent.call("POST", "/v1/guests/g1/move", ADMIN, {"reason": "no node"}),
        ),
        (
            "Error",
            "/v1/guests/{guest}/move",
            404,
            agent.call("POST", "/v1/guests/g1/move", ADMIN, {"node": "n9"}),
        ),
        (
            "Error",
            "/v1/cluster/disarm",
            400,
            agent.call("POST", "/v1/cluster/disarm", ADMIN, {"for_s": -1}),
        ),
        (
            "Error",
            "/v1/cluster/disarm",
            400,
            agent.call("POST", "/v1/cluster/disarm", ADMIN, {"for_s": 60, "extra": 1}),
        ),
        (
            "Outcome",
            "/v1/cluster/disarm",
            200,
            agent.call("POST", "/v1/cluster/disarm", ADMIN, {"for_s": 60, **audit}),
        ),
        ("Outcome", "/v1/cluster/arm", 200, agent.call("POST", "/v1/cluster/arm", ADMIN, audit)),
        (
            "Outcome",
            "/v1/nodes/{node}/freeze",
            200,
            agent.call("POST", "/v1/nodes/n1/freeze", ADMIN, audit),
        ),
        ("Outcome", "/v1/nodes/{node}/thaw", 200, agent.call("POST", "/v1/nodes/n1/thaw", ADMIN)),
        ("Error", "/v1/nodes/{node}/thaw", 404, agent.call("POST", "/v1/nodes/n9/thaw", ADMIN)),
    ]
    for name, path, expected, (status, ctype, body) in answers:
        assert status == expected, (path, status, body[:300])
        assert ctype.startswith("application/json"), (path, status)
        schema_of(name).validate(json.loads(body))
        assert str(status) in OPENAPI_DOCUMENT["paths"][path]["post"]["responses"], (path, status)
    status_doc = json.loads(agent.call("GET", "/v1/status", READ)[2])
    actions = [(e["action"], e["by"], e["reason"]) for e in status_doc["audit"]]
    who = "tester via api@n1"
    assert ("guest cleanup g1", who, "api test") in actions
    assert ("guest cleanup g1", "api@n1", "") in actions
    assert ("cluster disarm for 60s", who, "api test") in actions
    assert ("node freeze n1", who, "api test") in actions
    assert actions[-1] == ("node thaw n1", "api@n1", "")
    assert not status_doc["arming"]["disarmed"] and not status_doc["nodes"]["n1"]["frozen"]

    # After the re-arm the node opened its watchdog stand-in again and confirmed it.
    def rearmed() -> bool | None:
        doc = json.loads(agent.call("GET", "/v1/status", READ)[2])
        return True if not doc["nodes"]["n1"]["watchdog_released"] else None

    wait_for("n1 confirms its watchdog re-armed", rearmed, 10)
    events = json.loads(agent.call("GET", "/v1/events?limit=1000", READ)[2])["events"]
    summaries = [e["summary"] for e in events]
    assert f"cluster disarmed for 60s by {who}: api test" in summaries
    assert "node n1 thawed by api@n1" in summaries


def read_answer(tls: ssl.SSLSocket) -> bytes:
    """One HTTP answer (head and Content-Length body) from `tls`, nothing after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += tls.recv(1)
    head = data.decode("latin-1").lower()
    length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
    while len(data) < head.index("\r\n\r\n") + 4 + length:
        data += tls.recv(length)
    return data


def test_an_answer_before_the_request_ends_closes_only_once_the_client_is_done(
    agent: Agent,
) -> None:
    """aiohttp answers a request line over 8,190 bytes (a long what-if query) with a 400
    while the client is still sending the rest. The agent must keep reading until the client
    is done, then close with close_notify. Before, it closed at once: the client's next TLS
    record was "application data after close notify", asyncio aborted the connection, and a
    client still writing saw "EOF occurred in violation of protocol" (the schemathesis
    network error of issue 12)."""
    request = b"GET /v1/whatif?fail=" + b"n1," * 10_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    ctx = ssl.create_default_context(cafile=str(agent.cert))
    with (
        socket.create_connection((agent.host, agent.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=agent.host, suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(request[:9000])
        answer = read_answer(tls)
        assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
        # The rest of the request as a slow link delivers it: a piece every 0.1 s, far below
        # LINGER_QUIET_S. The agent must neither close nor reset meanwhile: nothing may
        # arrive (an early close_notify would), and no send may fail.
        for start in range(9000, len(request), 3000):
            time.sleep(0.1)  # the pacing of a slow client, not a wait for a condition
            assert select.select([tls], [], [], 0)[0] == [] and tls.pending() == 0
            tls.sendall(request[start : start + 3000])
        # Done sending: the agent closes once we are quiet, cleanly (b"", not a ragged EOF).
        tls.settimeout(LINGER_QUIET_S + 10)
        assert tls.recv(1) == b""


def haagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "haagent"), *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_the_cli_uses_tls_and_the_right_token(agent: Agent, tmp_path: Path) -> None:
    done = haagent("status", "--config", str(agent.config))
    assert done.returncode == 0, done.stderr
    done = haagent("events", "--config", str(agent.config), "--limit", "3")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    done = haagent("guest", "enable", "g1", "--config", str(agent.config))
    assert done.returncode == 0, done.stderr
    url = f"https://{agent.host}:{agent.port}"
    token_file = tmp_path / "t"
    token_file.write_text(READ + "\n")
    reads = ("--url", url, "--token-file", str(token_file), "--cacert", str(agent.cert))
    assert haagent("status", *reads).returncode == 0
    done = haagent("guest", "enable", "g1", *reads)
    assert done.returncode == 1 and "HTTP 403" in done.stderr and "Traceback" not in done.stderr
    done = haagent("status", "--url", url, "--token", READ)  # not trusted: no CA given
    assert done.returncode == 1 and "certificate" in done.stderr.lower()
    cfg = ("--config", str(agent.config))
    for args, out in (
        (("cluster", "disarm", "--for", "1m30s", "--reason", "cli test"), "disarm for 1m30s: done"),
        (("cluster", "arm"), "arm: done"),
        (("node", "freeze", "n1", "--reason", "upgrade"), "freeze n1: done"),
        (("node", "thaw", "n1"), "thaw n1: done"),
        (("guest", "cleanup", "g1", "--by", "ops"), "cleanup g1: done"),
    ):
        done = haagent(*args, *cfg)
        assert done.returncode == 0 and out in done.stdout, (args, done.stdout, done.stderr)
    done = haagent("guest", "move", "g1", "n1", *cfg)
    assert done.returncode == 1 and "already runs on n1" in done.stderr, done.stderr
    for bad in (
        ("cluster", "disarm"),
        ("cluster", "disarm", "--for", "2w"),
        ("guest", "move", "g1"),
    ):
        done = haagent(*bad, *cfg)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (bad, done.stderr)
    audit = json.loads(agent.call("GET", "/v1/status", READ)[2])["audit"]
    assert audit[-1]["action"] == "guest cleanup g1" and audit[-1]["by"] == "ops via api@n1"
    assert any(e["reason"] == "cli test" and e["by"].endswith(" via api@n1") for e in audit)


def test_schemathesis_finds_no_server_error(agent: Agent, tmp_path: Path) -> None:
    """Requests generated from the document (valid and invalid, every operation, with the
    admin token) against the real agent: no 5xx but the documented 503s, answers match the
    documented schemas and status codes; the agent keeps its lease and logs no traceback."""
    # The served document, with the names this agent knows as the only valid guest and node
    # names: otherwise nearly every generated name is unknown (404) and the verbs never reach
    # the replicated commands. Negative cases still send names outside these.
    doc = json.loads(json.dumps(OPENAPI_DOCUMENT))
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["name"] in ("guest", "node"):
                    param["schema"] = {
                        "type": "string",
                        "enum": ["g1" if param["name"] == "guest" else "n1"],
                    }
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(doc))
    examples = os.environ.get("HAAGENT_SCHEMATHESIS_EXAMPLES", "30")
    done = subprocess.run(
        [
            str(BIN / "schemathesis"), "run", str(schema),
            "--url", f"https://{agent.host}:{agent.port}",
            "--tls-verify", str(agent.cert),
            "-H", f"Authorization: Bearer {ADMIN}",
            "--checks", "not_a_server_error,status_code_conformance,"
            "content_type_conformance,response_schema_conformance",
            "--max-examples", examples, "--seed", "12", "--workers", "1",
            "--phases", "examples,coverage,fuzzing",
            "--generation-database", "none", "--no-color",
            # An admin verb waits for its commit (commit_timeout_s, 3 s) and a what-if for its
            # budget: a stated bound far above both, so a slow commit is not a "network error".
            "--request-timeout", "30",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ],
        check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    summary = done.stdout[done.stdout.find("SUMMARY") :]
    print(summary)  # shown with -s / -rP: operations, phases, how many cases ran
    # Failures and errors (a network error is an error, not a failure) with their details.
    start = min(
        (i for i in (done.stdout.find("ERRORS"), done.stdout.find("FAILURES")) if i >= 0), default=0
    )
    details = done.stdout[start:]
    assert done.returncode == 0, details[:4000] + "\n...\n" + details[-3000:] + done.stderr

    log = agent.cluster.log_file("n1").read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log
    wait_for(
        "the agent's lease after the run",
        lambda: agent.call("GET", "/v1/health")[0] == 200 or None,
        10.0,
    )
    for name in ("g1",):  # whatever the run disabled, the guest can be enabled again
        agent.call("POST", "/v1/nodes/n1/maintenance", ADMIN, {"on": False})
        assert agent.call("POST", f"/v1/guests/{name}/enable", ADMIN)[0] in (200, 409)
