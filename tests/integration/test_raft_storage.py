"""A damaged journal and a full disk, with real agents.

* A journal damaged beyond a torn tail stops the agent before its watchdog is armed, with one
  line that says how to recover; the recovery the README documents (wipe the node's Raft
  folder, start it again) brings the node back as a replica that catches up.
* A full disk is reported (status `storage_error`, metric `haagent_raft_storage_error`) before
  a write fails, the node stops acknowledging, the cluster goes on, and it clears by itself
  once there is room again.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from haagent.localcluster.cluster import GuestPlan, LocalCluster, local_plan, wait_for
from haagent.vendor.pysyncobj.journal import FileJournal
from tests.helpers.cluster_watch import ClusterWatch
from tests.helpers.powerloss import PowerLossMount, fuse_usable

pytestmark = pytest.mark.integration

JOURNAL_HEADER = len(b"HAJOURNAL1\n")


def damage_first_entry(journal: Path) -> None:
    data = bytearray(journal.read_bytes())
    assert len(data) > JOURNAL_HEADER + 40, "journal too short to damage in the middle"
    data[JOURNAL_HEADER + 12] ^= 0xFF
    journal.write_bytes(bytes(data))


def metrics_text(cluster: LocalCluster, node: str) -> str:
    host, _, port = cluster.api_listen(node).rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_a_damaged_journal_is_one_line_before_the_watchdog(tmp_path: Path) -> None:
    plan = local_plan(1, fence="dummy")
    cluster = LocalCluster(tmp_path / "run", plan)
    cluster.write()
    raft = cluster.run_dir / "state" / "n1" / "raft"
    raft.mkdir(parents=True)
    j = FileJournal(str(raft / "raft.journal"))
    j.setCurrentTerm(3, None)
    for i in range(1, 6):
        j.add(b"entry-%d" % i, i, 3)
    assert j.flush()
    j._destroy()
    damage_first_entry(raft / "raft.journal")
    proc = subprocess.run(
        [sys.executable, "-m", "haagent", "run", "--config", str(cluster.config_path("n1"))],
        check=False,
        cwd=cluster.run_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc
    errors = [line for line in proc.stderr.splitlines() if "CRITICAL" in line]
    assert len(errors) == 1, proc.stderr
    assert "cannot start: Raft journal damaged: " in errors[0]
    assert f"to recover, wipe {raft}" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list((cluster.run_dir / "state").rglob("watchdog.standin"))


def settled(cluster: LocalCluster) -> dict[str, Any] | None:
    try:
        docs = {n: cluster.status(n, timeout_s=1.0) for n in cluster.nodes()}
    except Exception:
        return None
    leaders = {d["leader"] for d in docs.values()}
    if len(leaders) != 1 or None in leaders or not all(d["quorum"] for d in docs.values()):
        return None
    ref = docs[next(iter(leaders))]
    if any(g["state"] != "running" for g in ref["guests"].values()):
        return None
    return docs


def test_recovery_wipe_the_raft_folder_and_rejoin(
    start_watched: Callable[..., tuple[LocalCluster, ClusterWatch]],
) -> None:
    guests = tuple(GuestPlan(f"g{i}", 256, 10, (f"n{i}",)) for i in (1, 2, 3))
    cluster, watch = start_watched(local_plan(3, fence="dummy", guests=guests))
    wait_for("a settled cluster", lambda: settled(cluster), 30.0)
    cluster.signal_agent("n3", signal.SIGKILL)
    wait_for("n3 gone", lambda: cluster.agent_pid("n3") is None or None, 10.0)
    raft = cluster.run_dir / "state" / "n3" / "raft"
    damage_first_entry(raft / "raft.journal")

    # The agent refuses to start, in one line, and stays down (no crash loop to reset a host).
    cluster.start_agent("n3")
    wait_for("n3 to refuse to start", lambda: cluster.agent_pid("n3") is None or None, 20.0)
    log = cluster.log_file("n3").read_text()
    assert "cannot start: Raft journal damaged" in log and "to recover, wipe" in log

    # The documented recovery: wipe this node's Raft folder and start it again.
    shutil.rmtree(raft)
    cluster.start_agent("n3")

    def caught_up() -> dict[str, Any] | None:
        docs = settled(cluster)
        if docs is None or docs["n3"]["nodes"]["n3"]["state"] != "up":
            return None
        leader = docs[docs["n3"]["leader"]]
        return docs if docs["n3"]["commit_index"] >= leader["commit_index"] - 5 else None

    docs = wait_for("n3 to rejoin and catch up", caught_up, 30.0)
    assert docs["n3"]["storage_error"] is None
    watch.stop()
    watch.assert_single_copy()


def test_a_full_disk_is_reported_before_it_fails_and_clears(
    tmp_path: Path,
    make_cluster: Callable[..., LocalCluster],
) -> None:
    why = fuse_usable()
    if why:
        pytest.fail(f"this test needs FUSE: {why} (scripts/bootstrap)")
    cluster = make_cluster(local_plan(3, fence="dummy"), start=False)
    # Only the Raft folder is on the small disk: the watchdog stand-in file (a test lab's
    # substitute for /dev/watchdog) lives in data_dir too and fails its writes on a full disk.
    mount = PowerLossMount(cluster.run_dir / "state" / "n1" / "raft", tmp_path / "n1.fs")
    try:
        mount.mount()
        cluster.start()
        wait_for("a settled cluster", lambda: settled(cluster), 30.0)
        mount.set_capacity(1)  # everything is in use: far below the journal's reserve

        def reported() -> dict[str, Any] | None:
            try:
                doc = cluster.status("n1")
            except OSError as exc:
                print("status n1:", repr(exc), "pid", cluster.agent_pid("n1"))
                return None
            return doc if (doc["storage_error"] or "").startswith("disk full") else None

        doc = wait_for("n1 to report a full disk", reported, 10.0)
        wait_for(
            "the metric",
            lambda: "haagent_raft_storage_error 1.0" in metrics_text(cluster, "n1") or None,
            5.0,
        )
        # The others go on committing without n1's acknowledgements.
        others = {n: cluster.status(n)["commit_index"] for n in ("n2", "n3")}
        wait_for(
            "commits without n1",
            lambda: all(cluster.status(n)["commit_index"] > others[n] + 10 for n in others) or None,
            10.0,
        )
        assert cluster.status("n2")["storage_error"] is None

        mount.set_capacity(0)  # room again
        wait_for(
            "n1 to write again", lambda: cluster.status("n1")["storage_error"] is None or None, 10.0
        )
        wait_for(
            "the metric to clear",
            lambda: "haagent_raft_storage_error 0.0" in metrics_text(cluster, "n1") or None,
            5.0,
        )
        wait_for("a settled cluster", lambda: settled(cluster), 30.0)
        print("reported:", doc["storage_error"])
    finally:
        cluster.stop()
        mount.cleanup()
