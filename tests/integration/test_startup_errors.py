"""A real agent process that cannot start says why in one line and arms nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from haagent.localcluster.cluster import GuestPlan, LocalCluster, local_plan

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("taken", ["api", "raft"])
def test_a_taken_port_is_a_clear_error_before_the_watchdog_is_armed(
    tmp_path: Path, taken: str
) -> None:
    plan = local_plan(1, fence="dummy")
    cluster = LocalCluster(tmp_path / "run", plan)
    cluster.write()
    node = plan.nodes[0]
    listen = node.api_listen if taken == "api" else f"{node.raft_host}:{node.raft_port}"
    host, _, port = listen.rpartition(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "haagent", "run", "--config", str(cluster.config_path("n1"))],
            check=False,
            cwd=cluster.run_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1, proc
    what = "serve the API on" if taken == "api" else "bind Raft on"
    assert f"cannot start: cannot {what} {listen}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The watchdog (here its stand-in file) was never opened, so nothing can reset the host.
    assert not list((cluster.run_dir / "state").rglob("watchdog.standin"))


def test_an_unusable_drbd_fence_socket_is_a_clear_error_before_the_watchdog_is_armed(
    tmp_path: Path,
) -> None:
    guest = GuestPlan("g1", 256, 0, ("n1",), replicas=("n1", "n2"))
    plan = local_plan(3, fence="dummy", guests=(guest,), witness=True)
    cluster = LocalCluster(tmp_path / "run", plan)
    cluster.write()
    # The socket's folder cannot be made: a regular file stands where it should be.
    (cluster.run_dir / "blocker").write_text("not a folder")
    sock = cluster.run_dir / "blocker" / "drbd-fence.sock"
    config = cluster.config_path("n1")
    default = str(cluster.run_dir / "state" / "n1" / "drbd-fence.sock")
    config.write_text(config.read_text().replace(default, str(sock)))
    proc = subprocess.run(
        [sys.executable, "-m", "haagent", "run", "--config", str(cluster.config_path("n1"))],
        check=False,
        cwd=cluster.run_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc
    assert f"cannot start: cannot serve the DRBD fence socket {sock}: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((cluster.run_dir / "state").rglob("watchdog.standin"))
