"""The stock `fence_ipmilan` against a real `ipmi_sim` BMC on loopback.

Each test gets its own BMC (fresh state dir, a UDP port picked at test time) whose power-off
hook SIGKILLs a victim process, the way the local demo cluster's hook kills a node's agent.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haagent.fencing.agent_runner import AgentRunner, PowerState, resolve_agent
from haagent.fencing.levels import AgentFencer
from haagent.localcluster.bmc import SimulatedBmc
from haagent.localcluster.ports import free_port
from haagent.ports import FenceDevice

HOST = "node3"
WRONG_PASSWORD = "Wr0ng-Passw0rd-xyz"


@dataclass
class Rig:
    bmc: SimulatedBmc
    victim: subprocess.Popen[bytes]

    def device(self, name: str = "ipmi-node3", **overrides: str) -> FenceDevice:
        return FenceDevice(
            name=name, agent="fence_ipmilan", params={**self.bmc.fence_params(), **overrides}
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    for tool, package in (("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")):
        assert shutil.which(tool), f"{tool} is missing: install the Debian package {package}"
    assert resolve_agent("fence_ipmilan"), "fence_ipmilan is missing: install fence-agents"

    victim = subprocess.Popen(["sleep", "600"])
    bmc: SimulatedBmc | None = None
    try:
        hook = tmp_path / "kill-victim.sh"
        # Idempotent, as chassis.sh requires: killing an already dead victim is fine.
        hook.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = power ] && [ "$2" = 0 ]; then kill -9 {victim.pid} 2>/dev/null; fi\n'
            "exit 0\n"
        )
        hook.chmod(0o755)
        bmc = SimulatedBmc(tmp_path / "bmc", HOST, free_port(), hook)
        bmc.start()
        yield Rig(bmc=bmc, victim=victim)
    finally:
        if bmc is not None:
            bmc.stop()
        victim.kill()
        victim.wait()


def test_fence_ipmilan_powers_off_and_confirms(rig: Rig) -> None:
    runner = AgentRunner()
    before = asyncio.run(runner.run("fence_ipmilan", "status", rig.device().params, 20))
    assert before.power is PowerState.ON, before.reason()

    outcome = asyncio.run(AgentFencer(runner).fence(HOST, [[rig.device()]], timeout_s=30))

    assert outcome.ok, outcome.detail
    assert outcome.level == 1
    assert "ipmi-node3 (fence_ipmilan) status OFF" in outcome.detail
    # The hook ran before the BMC recorded the power-off, so the victim is already dead.
    assert rig.victim.wait(timeout=5) == -9
    assert rig.bmc.power() == 0
    assert "set power 0" in rig.bmc.events_file.read_text()
    after = asyncio.run(runner.run("fence_ipmilan", "status", rig.device().params, 20))
    assert after.power is PowerState.OFF
    assert rig.bmc.password not in outcome.detail


def test_wrong_password_fails_and_leaves_the_node_alone(rig: Rig) -> None:
    device = rig.device(password=WRONG_PASSWORD)
    outcome = asyncio.run(AgentFencer().fence(HOST, [[device]], timeout_s=30))
    assert not outcome.ok
    assert "ipmi-node3 (fence_ipmilan) off failed: exit 1" in outcome.detail
    assert WRONG_PASSWORD not in outcome.detail
    assert rig.victim.poll() is None
    assert rig.bmc.power() == 1


def test_bad_credentials_escalate_to_the_next_level(rig: Rig) -> None:
    levels = [
        [rig.device(name="ipmi-wrong-user", username="nobody")],
        [rig.device()],
    ]
    outcome = asyncio.run(AgentFencer().fence(HOST, levels, timeout_s=30))
    assert outcome.ok, outcome.detail
    assert outcome.level == 2
    assert "level 1: ipmi-wrong-user (fence_ipmilan) off failed" in outcome.detail
    assert rig.victim.wait(timeout=5) == -9


def test_stop_reaps_ipmi_sim(tmp_path: Path) -> None:
    bmc = SimulatedBmc(tmp_path / "bmc", "node9", free_port())
    try:
        bmc.start()
        pid = bmc.pid
        assert pid is not None
        assert (tmp_path / "bmc" / "state").is_dir()
    finally:
        bmc.stop()
    assert bmc.pid is None
    assert not Path(f"/proc/{pid}").exists()
    bmc.stop()  # idempotent


def test_a_failing_hook_means_no_power_off(tmp_path: Path) -> None:
    # chassis.sh records the power-off only if the hook succeeded: a BMC whose hook could not
    # kill the node must not report OFF, so the fence fails instead of lying.
    hook = tmp_path / "broken-hook.sh"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    bmc = SimulatedBmc(tmp_path / "bmc", HOST, free_port(), hook)
    try:
        bmc.start()
        # power_timeout=2: fence_ipmilan gives up polling for OFF after 2 s instead of 20 s.
        params = {**bmc.fence_params(), "power_timeout": "2"}
        device = FenceDevice(name="ipmi-node3", agent="fence_ipmilan", params=params)
        outcome = asyncio.run(AgentFencer().fence(HOST, [[device]], timeout_s=30))
        assert not outcome.ok
        assert "Timed out waiting to power OFF" in outcome.detail
        assert bmc.power() == 1
        assert "hook power 0 failed" in bmc.events_file.read_text()
    finally:
        bmc.stop()
