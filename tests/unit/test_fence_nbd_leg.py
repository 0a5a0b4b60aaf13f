"""fence_nbd_leg (storage fencing by NBD allow list) against a real nbd-server on loopback.

Clients connect from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), which is how the
server tells nodes apart. The agent runs as its own executable through haagent's real fencing
levels (AgentFencer), exactly as a `[fence_devices]` entry would run it.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from haagent.fencing.levels import AgentFencer
from haagent.ports import FenceDevice
from tests.helpers.raid1_guest import NbdServer, closed, wait_for

AGENT = Path(__file__).resolve().parents[2] / "resources" / "fence_nbd_leg.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NbdServer]:
    nbd = NbdServer(tmp_path, "leg", 4)
    nbd.allow_file.write_text("127.0.0.1\n127.0.0.2\n127.0.0.3\n")
    try:
        nbd.start()
        yield nbd
    finally:
        nbd.kill()


def run_agent(params: dict[str, str]) -> subprocess.CompletedProcess[str]:
    stdin = "".join(f"{k}={v}\n" for k, v in params.items())
    return subprocess.run(
        [str(AGENT)], input=stdin, check=False, capture_output=True, text=True, timeout=30
    )


def params(server: NbdServer, action: str, address: str = "127.0.0.2") -> dict[str, str]:
    return {
        "action": action,
        "allow_file": str(server.allow_file),
        "address": address,
        "server_pid_file": str(server.pid_file),
    }


def test_off_revokes_and_cuts_only_that_node(server: NbdServer) -> None:
    victim = server.connect_from("127.0.0.2")
    other = server.connect_from("127.0.0.3")
    assert run_agent(params(server, "status")).returncode == 0  # ON: admitted and connected
    # The runner sets `action` itself, as for any configured device.
    device_params = {k: v for k, v in params(server, "off").items() if k != "action"}
    device = FenceDevice("leg-access", str(AGENT), device_params)
    outcome = asyncio.run(AgentFencer().fence("n2", [[device]], 30.0))
    assert outcome.ok and outcome.level == 1, outcome.detail
    assert server.allow_file.read_text() == "127.0.0.1\n127.0.0.3\n"
    wait_for("the victim's connection to end", lambda: closed(victim), 5)
    assert closed(other) is None  # the other node keeps its connection
    assert run_agent(params(server, "status")).returncode == 2  # OFF
    # A new connection from the node is refused by the server itself.
    refused = subprocess.run(
        ["qemu-img", "info", server.uri], check=False, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 0  # 127.0.0.1 is still admitted
    assert run_agent(params(server, "off", "127.0.0.1")).returncode == 0
    refused = subprocess.run(
        ["qemu-img", "info", server.uri], check=False, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode != 0 and "denied" in refused.stderr.lower()
    # on restores access.
    assert run_agent(params(server, "on", "127.0.0.1,127.0.0.2")).returncode == 0
    assert run_agent(params(server, "status")).returncode == 0
    subprocess.run(["qemu-img", "info", server.uri], check=True, capture_output=True, timeout=30)
    victim.close()
    other.close()


def test_refuses_what_it_cannot_revoke(server: NbdServer, tmp_path: Path) -> None:
    # A missing allow file: nbd-server would admit everybody.
    p = params(server, "off")
    p["allow_file"] = str(tmp_path / "absent")
    result = run_agent(p)
    assert result.returncode == 1 and "admit everybody" in result.stderr
    # A network line admits the node together with others.
    server.allow_file.write_text("127.0.0.0/24\n")
    result = run_agent(params(server, "off"))
    assert result.returncode == 1 and "127.0.0.0/24" in result.stderr
    assert server.allow_file.read_text() == "127.0.0.0/24\n"  # untouched
    # Bad input.
    assert run_agent(params(server, "off", "not-an-ip")).returncode == 1
    assert run_agent(params(server, "reboot")).returncode == 1
    p = params(server, "off")
    p["allow_file"] = str(tmp_path / "none-*")
    assert "matches no file" in run_agent(p).stderr


def test_metadata_and_monitor(server: NbdServer) -> None:
    meta = subprocess.run(
        [str(AGENT), "-o", "metadata"], check=False, capture_output=True, text=True, timeout=30
    )
    assert meta.returncode == 0 and 'name="allow_file"' in meta.stdout
    assert run_agent(params(server, "monitor")).returncode == 0
