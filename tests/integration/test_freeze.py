"""`haagent node freeze`: an agent restart longer than the failure timeout moves nothing.

Three real agents (real pysyncobj over TCP, fence_dummy). n1's hypervisor is a real, private
libvirtd running a real QEMU (TCG) guest, so the guest outlives its agent as on a production
host (libvirt's in-process test driver would die with the agent); n2 and n3 use the test
driver. The guest may run on n1 or n2: if the frozen n1 were declared failed and fenced, the
leader would move it to n2, which the test would see.

1. freeze n1 (CLI), stop its agent cleanly (SIGTERM): it exits at once, leaves its guest
   running and releases its watchdog (the stand-in file says `closed`);
2. for 3 x the failure timeout nothing happens: n1 stays up and frozen, its fence device is
   never switched off, the guest keeps its owner and generation and its QEMU process runs;
3. the agent starts again, rejoins as a new incarnation and adopts the running guest (same
   QEMU pid, same generation, no start);
4. thaw n1 (CLI), SIGKILL its agent: n1 is declared failed and fenced by fence_dummy.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haagent.localcluster.cluster import (
    GuestPlan,
    LocalCluster,
    local_plan,
    pid_alive,
    wait_for,
)
from haagent.timing import DEFAULT_TIMING
from tests.helpers.libvirt_host import LibvirtHost, make_empty_disk, qemu_guest_xml

pytestmark = pytest.mark.integration

TIMING = DEFAULT_TIMING  # the plans name no profile: the default applies
BIN = Path(sys.executable).parent


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    libvirt_host = LibvirtHost(tmp_path / "h1")
    try:
        libvirt_host.up()
        yield libvirt_host
    finally:
        libvirt_host.down()
        assert libvirt_host.processes() == []


def haagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "haagent"), *args], check=False, capture_output=True, text=True, timeout=60
    )


def prepared_cluster(run_dir: Path, host: LibvirtHost) -> LocalCluster:
    """The plan's files, then n1 pointed at the real libvirtd and g1 made a QEMU guest that
    may run on n1 or n2 (edits of the written files: the local-cluster code stays as is)."""
    plan = local_plan(3, fence="dummy", guests=(GuestPlan("g1", 64, 10, ("n1",)),))
    cluster = LocalCluster(run_dir, plan)
    cluster.write()
    disk = make_empty_disk(run_dir / "g1.qcow2")
    (run_dir / "guests" / "g1.xml").write_text(qemu_guest_xml("g1", disk))
    for node in ("n1", "n2", "n3"):
        path = cluster.config_path(node)
        text = path.read_text().replace("[guests.g1]", '[guests.g1]\nallowed_nodes = ["n1", "n2"]')
        if node == "n1":
            text = text.replace('libvirt_uri = "test:///default"', f'libvirt_uri = "{host.uri}"')
        path.write_text(text)
    return cluster


def test_an_agent_restart_under_freeze_neither_fences_nor_moves(
    tmp_path: Path, host: LibvirtHost
) -> None:
    run_dir = tmp_path / "run"
    cluster = prepared_cluster(run_dir, host)
    dummy_status = run_dir / "bmc" / "n1.dummy-status"
    standin = run_dir / "state" / "n1" / "watchdog.standin"
    n2 = ("--config", str(cluster.config_path("n2")))
    try:
        cluster.start(timeout_s=120.0)
        doc = cluster.any_status()
        g1 = doc["guests"]["g1"]
        assert g1["owner"] == "n1" and g1["state"] == "running", g1
        generation = g1["generation"]
        qemu = host.qemu_pids()
        assert list(qemu) == ["g1"], qemu
        incarnation = doc["nodes"]["n1"]["incarnation"]

        done = haagent("node", "freeze", "n1", "--reason", "agent upgrade", *n2)
        assert done.returncode == 0 and "freeze n1: done" in done.stdout, done.stderr
        old_pid = cluster.signal_agent("n1", signal.SIGTERM)
        wait_for("n1's agent to exit", lambda: True if not pid_alive(old_pid) else None, 20.0)
        log = cluster.log_file("n1").read_text()
        assert "frozen_exit" in log and "stopped g1" not in log, log[-3000:]
        assert standin.read_text().split()[0] == "closed"

        # Away for three failure timeouts: watch that nothing happens meanwhile.
        away_until = time.monotonic() + 3 * TIMING.failure_timeout_s
        seen = 0
        while time.monotonic() < away_until:
            doc = cluster.any_status(exclude=("n1",))
            rec, g = doc["nodes"]["n1"], doc["guests"]["g1"]
            assert rec["state"] == "up" and rec["frozen"], rec
            assert (g["owner"], g["generation"], g["state"]) == ("n1", generation, "running"), g
            assert dummy_status.read_text() == "on"
            assert host.qemu_pids() == qemu
            seen += 1
            time.sleep(0.2)  # a sampling period, not a synchronisation
        assert seen >= 5

        cluster.start_agent("n1")
        wait_for("n1's new agent to rejoin", lambda: cluster.rejoined("n1"), 30.0)
        doc = cluster.status("n1")
        assert doc["nodes"]["n1"]["incarnation"] != incarnation
        g = doc["guests"]["g1"]
        assert (g["owner"], g["generation"], g["state"]) == ("n1", generation, "running"), g
        assert doc["local"] == {
            "g1": {"running": True, "paused": False, "owner": "n1", "generation": generation}
        }
        assert host.qemu_pids() == qemu
        assert standin.read_text().split()[0] in ("armed", "pet")
        events = json.loads(haagent("events", "--limit", "1000", "--json", *n2).stdout)
        kinds = [e["type"] for e in events["events"]]
        assert "declare_failed" not in kinds and "fence_result" not in kinds, kinds
        assert kinds.count("guest_starting") == 1, kinds
        frozen = [e for e in events["events"] if e["type"] == "set_frozen"]
        assert re.fullmatch(
            r"node n1 frozen by \S+@\S+ via api@n2: agent upgrade", frozen[-1]["summary"]
        ), frozen

        done = haagent("node", "thaw", "n1", *n2)
        assert done.returncode == 0, done.stderr
        cluster.signal_agent("n1", signal.SIGKILL)

        def fenced() -> bool | None:
            doc = cluster.any_status(exclude=("n1",))
            return True if doc["nodes"]["n1"]["state"] == "fenced" else None

        wait_for("n1 declared failed and fenced after the thaw", fenced, 30.0)
        assert dummy_status.read_text() == "off"
    finally:
        cluster.stop()
