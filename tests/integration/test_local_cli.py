"""`haagent local up|status|down` and `haagent status` as a user runs them: subprocesses.

`local up` uses the fixed ports of config/examples/local-3node (Raft 7401-7403, API 8401-8403,
BMCs 9623-9625/udp); the test fails up front, naming the port, if one is taken.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from haagent.localcluster.cluster import RUN_ENV, LocalCluster
from haagent.localcluster.ports import port_free

pytestmark = pytest.mark.integration

TCP_PORTS = (7401, 7402, 7403, 8401, 8402, 8403)
UDP_PORTS = (9623, 9624, 9625)
TOKEN = "local-demo-token"


def haagent(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haagent", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def port_taken(kind: int, port: int) -> bool:
    # As the agents do: a TIME_WAIT left by an earlier run does not block a listener.
    return not port_free("127.0.0.1", port, kind, reuse_address=kind == socket.SOCK_STREAM)


def processes_of(run_dir: Path) -> list[tuple[int, str]]:
    """Every live process whose command line names the run folder or whose environment
    carries its marker (independent of the pid files `local down` uses)."""
    needle = str(run_dir).encode()
    marker = f"{RUN_ENV}={run_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmdline or marker in environ.split(b"\0")):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    taken = [f"{p}/tcp" for p in TCP_PORTS if port_taken(socket.SOCK_STREAM, p)]
    taken += [f"{p}/udp" for p in UDP_PORTS if port_taken(socket.SOCK_DGRAM, p)]
    if taken:
        pytest.fail(f"`haagent local up` needs these ports, which are taken: {taken}")
    path = (tmp_path / "local").absolute()
    try:
        yield path
    finally:
        if path.exists():
            LocalCluster(path).stop()
        assert processes_of(path) == []


def test_local_up_status_down(run_dir: Path) -> None:
    up = haagent("local", "up", "--dir", str(run_dir), timeout_s=90.0)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "cluster up in" in up.stdout, up.stdout

    # `up` returned and left the cluster running: three agents and three BMCs.
    cluster = LocalCluster(run_dir)
    assert cluster.nodes() == ["n1", "n2", "n3"]
    pids = {n: cluster.agent_pid(n) for n in cluster.nodes()}
    assert all(pids.values()), pids
    assert len(processes_of(run_dir)) >= 6, processes_of(run_dir)

    local_status = haagent("local", "status", "--dir", str(run_dir))
    assert local_status.returncode == 0, local_status.stderr
    out = local_status.stdout
    assert "quorum yes" in out, out
    for guest in ("web1", "db1", "cache1"):
        assert guest in out, out

    status = haagent("status", "--url", "http://127.0.0.1:8401", "--token", TOKEN, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["node"] == "n1" and doc["pid"] == pids["n1"] and doc["quorum"] is True
    assert {n: r["state"] for n, r in doc["nodes"].items()} == {"n1": "up", "n2": "up", "n3": "up"}
    assert {g: r["state"] for g, r in doc["guests"].items()} == {
        "cache1": "running",
        "db1": "running",
        "web1": "running",
    }
    # Placement follows the example's preferred nodes.
    assert {g: r["owner"] for g, r in doc["guests"].items()} == {
        "cache1": "n3",
        "db1": "n2",
        "web1": "n1",
    }

    wrong = haagent("status", "--url", "http://127.0.0.1:8401", "--token", "wrong-token-123")
    assert wrong.returncode == 1 and "401" in wrong.stderr, wrong.stderr

    down = haagent("local", "down", "--dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert processes_of(run_dir) == []
    after = haagent("local", "status", "--dir", str(run_dir))
    assert after.returncode == 1 and "no agent" in after.stderr, after.stderr


def test_tenth_floor_demo_recovers_by_watchdog_and_leaves_nothing_behind(run_dir: Path) -> None:
    """`haagent local demo --tenth-floor`: the owner of web1 dies with its BMC; the survivors
    fence it by its watchdog level and run web1; the replaced node rejoins; `down` leaves no
    process (the fixture checks it), the BMCs restarted for the rejoin included."""
    demo = haagent("local", "demo", "--tenth-floor", "--dir", str(run_dir), timeout_s=150.0)
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    assert "power fence failed" in out, out
    assert "fenced first (by watchdog), one copy only" in out, out
    # Not "(was failed)": a rejoined node catching up is not declared failed again.
    assert "rejoined (was fenced)" in out, out
    assert processes_of(run_dir) == []
