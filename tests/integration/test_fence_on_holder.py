"""fence_on_holder: the NBD storage fence run on the leg's holder over ssh, for real.

A private OpenSSH server on 127.0.0.1 (tests/helpers/sshd.py) stands in for the holder's
sshd, and a real nbd-server for its leg export; the wrapper runs as its own executable through
haagent's real fencing levels (AgentFencer), as a `[fence_devices]` entry would, and runs the
real resources/fence_nbd_leg.py "on the holder" through ssh. Every ssh failure must be a
failure, never a success and never "OFF".
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haagent.fencing.levels import AgentFencer
from haagent.ports import FenceDevice
from tests.helpers.raid1_guest import NbdServer, closed, wait_for
from tests.helpers.sshd import SshServer

pytestmark = pytest.mark.integration

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
WRAPPER = RESOURCES / "fence_on_holder.py"
REMOTE_AGENT = RESOURCES / "fence_nbd_leg.py"


@dataclass
class Holder:
    sshd: SshServer
    nbd: NbdServer


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    sshd = SshServer(tmp_path)
    nbd = NbdServer(tmp_path, "leg", 4)
    nbd.allow_file.write_text("127.0.0.1\n127.0.0.2\n127.0.0.3\n")
    try:
        sshd.start()
        nbd.start()
        yield Holder(sshd, nbd)
    finally:
        nbd.kill()
        sshd.close()


def device_params(h: Holder, address: str = "127.0.0.2") -> dict[str, str]:
    """A device's params: the wrapper's ssh_* ones and the remote agent's own."""
    return {
        "ssh_host": "127.0.0.1",
        "ssh_port": str(h.sshd.port),
        "ssh_user": h.sshd.user,
        "ssh_key": str(h.sshd.key),
        "ssh_known_hosts": str(h.sshd.known_hosts),
        "ssh_timeout": "30",
        "remote_agent": str(REMOTE_AGENT),
        "allow_file": str(h.nbd.allow_file),
        "address": address,
        "server_pid_file": str(h.nbd.pid_file),
    }


def run_wrapper(params: dict[str, str]) -> subprocess.CompletedProcess[str]:
    stdin = "".join(f"{k}={v}\n" for k, v in params.items())
    return subprocess.run(
        [str(WRAPPER)], input=stdin, check=False, capture_output=True, text=True, timeout=90
    )


def test_off_status_on_run_on_the_holder_through_the_fencing_levels(holder: Holder) -> None:
    victim = holder.nbd.connect_from("127.0.0.2")
    other = holder.nbd.connect_from("127.0.0.3")
    try:
        assert run_wrapper({**device_params(holder), "action": "status"}).returncode == 0  # ON
        assert run_wrapper({**device_params(holder), "action": "monitor"}).returncode == 0
        device = FenceDevice("n2-legs-on-holder", str(WRAPPER), device_params(holder))
        outcome = asyncio.run(AgentFencer().fence("n2", [[device]], 60.0))
        assert outcome.ok and outcome.level == 1, outcome.detail
        print(f"\nfence off over ssh: {outcome.duration_s:.2f} s")
        assert holder.nbd.allow_file.read_text() == "127.0.0.1\n127.0.0.3\n"
        wait_for("the fenced node's connection to end", lambda: closed(victim), 5)
        assert closed(other) is None
        off = run_wrapper({**device_params(holder), "action": "status"})
        assert off.returncode == 2 and "OFF" in off.stdout, off  # the remote agent's answer
        assert run_wrapper({**device_params(holder), "action": "on"}).returncode == 0
        assert run_wrapper({**device_params(holder), "action": "status"}).returncode == 0
        # The remote agent's own refusal comes back as a failure, with its reason.
        bad = run_wrapper({**device_params(holder, "not-an-ip"), "action": "off"})
        assert bad.returncode == 1 and "fence_nbd_leg" in bad.stderr, bad
    finally:
        victim.close()
        other.close()


def test_every_ssh_failure_is_a_failure_never_off(holder: Holder, tmp_path: Path) -> None:
    base = {**device_params(holder), "action": "status"}
    # An unknown host key: another host answers on that address.
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        timeout=30,
    )
    wrong_hosts = tmp_path / "known_hosts"
    wrong_hosts.write_text(
        f"[127.0.0.1]:{holder.sshd.port} {stranger.with_suffix('.pub').read_text()}"
    )
    result = run_wrapper({**base, "ssh_known_hosts": str(wrong_hosts)})
    assert result.returncode == 1 and "ssh failed" in result.stderr, result
    assert holder.nbd.allow_file.read_text().count("127.0.0.2") == 1  # nothing ran
    # A key the holder does not accept.
    result = run_wrapper({**base, "ssh_key": str(stranger), "action": "off"})
    assert result.returncode == 1 and "Permission denied" in result.stderr, result
    assert "127.0.0.2" in holder.nbd.allow_file.read_text()
    # An agent path that does not exist there.
    result = run_wrapper({**base, "remote_agent": "/nonexistent/fence_x"})
    assert result.returncode == 1 and "exited 127" in result.stderr, result
    # Bad parameters, refused before any ssh.
    result = run_wrapper({k: v for k, v in base.items() if k != "ssh_key"})
    assert result.returncode == 1 and "missing parameter(s): ssh_key" in result.stderr
    result = run_wrapper({**base, "ssh_host": "-oProxyCommand=x"})
    assert result.returncode == 1 and "not a plain host" in result.stderr
    result = run_wrapper({**base, "ssh_port": "0"})
    assert result.returncode == 1 and "out of range" in result.stderr
    result = run_wrapper({**base, "action": "reboot"})
    assert result.returncode == 1 and "unsupported action" in result.stderr
    # The holder's sshd is gone: status fails (1), it does not read as OFF (2).
    holder.sshd.close()
    result = run_wrapper(base)
    assert result.returncode == 1 and "Connection refused" in result.stderr, result


def test_metadata_needs_no_ssh() -> None:
    meta = subprocess.run(
        [str(WRAPPER), "-o", "metadata"], check=False, capture_output=True, text=True, timeout=30
    )
    assert meta.returncode == 0 and 'name="remote_agent"' in meta.stdout
    piped = subprocess.run(
        [str(WRAPPER)],
        input="action=metadata\n",
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 0 and 'name="ssh_known_hosts"' in piped.stdout
