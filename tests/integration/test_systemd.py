"""systemd integration: the shipped unit verifies, and the agent speaks sd_notify for real.

systemd is not PID 1 on these machines, so the notify protocol is exercised through a real
AF_UNIX datagram socket given to the agent as NOTIFY_SOCKET, exactly as systemd would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haagent.localcluster.cluster import LocalCluster, local_plan, wait_for

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "haagent.service"
pytestmark = pytest.mark.integration


def installed_haagent() -> str:
    path = shutil.which("haagent", path=str(Path(sys.executable).parent)) or shutil.which("haagent")
    assert path, "the haagent console script is not installed next to this Python"
    return path


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "haagent.service"
    unit.write_text(unit_text)
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def complaints(proc: subprocess.CompletedProcess[str]) -> str:
    """What verify objects to. It exits 0 on some errors (it "ignores" a bad Type=), so any
    output about the unit counts as a failure too."""
    return "" if proc.returncode == 0 and not proc.stderr.strip() else proc.stderr + proc.stdout


def shipped_unit_with_real_binary() -> str:
    return UNIT.read_text().replace("/usr/local/bin/haagent", installed_haagent())


def test_the_shipped_unit_verifies(tmp_path: Path) -> None:
    proc = verify(shipped_unit_with_real_binary(), tmp_path)
    assert not complaints(proc)


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    unit = shipped_unit_with_real_binary()
    assert "notfy" in complaints(verify(unit.replace("Type=notify", "Type=notfy"), tmp_path))
    missing = unit.replace(installed_haagent(), "/nonexistent/haagent")
    assert "not executable" in complaints(verify(missing, tmp_path))


def test_the_unit_declares_what_the_agent_relies_on() -> None:
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["Restart"] == "on-failure"
    assert float(lines["WatchdogSec"]) > 0
    assert "network-online.target" in lines["After"] and "libvirtd.service" in lines["After"]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def messages(sock: socket.socket, seconds: float) -> list[str]:
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.extend(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            continue
    return out


def test_the_agent_notifies_ready_pets_the_watchdog_and_stops_cleanly(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    plan = local_plan(1, fence="dummy")
    cluster = LocalCluster(tmp_path / "run", plan)
    cluster.write()
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="500000")
    log = cluster.log_file("n1").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "haagent", "run", "--config", str(cluster.config_path("n1"))],
        cwd=cluster.run_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        got: list[str] = []

        def ready() -> bool | None:
            got.extend(messages(notify_socket, 0.2))
            return True if "READY=1" in got else None

        wait_for("READY=1", ready, 20)
        wait_for(
            "the guest running",
            lambda: True if cluster.status("n1")["guests"]["g1"]["state"] == "running" else None,
            20,
        )
        pets = messages(notify_socket, 1.0).count("WATCHDOG=1")
        assert pets >= 2, "the loop must pet systemd's watchdog at least every WATCHDOG_USEC/2"

        proc.send_signal(signal.SIGSTOP)  # a hung agent stops petting: systemd would kill it
        try:
            assert "WATCHDOG=1" not in messages(notify_socket, 1.2)
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(
            "pets again", lambda: True if "WATCHDOG=1" in messages(notify_socket, 0.3) else None, 10
        )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "STOPPING=1" in messages(notify_socket, 0.5)
        text = cluster.log_file("n1").read_text()
        assert "left the cluster cleanly" in text, text[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
