"""`haagent local demo --tenth-floor`: the example configs gain a final watchdog level."""

from __future__ import annotations

import shutil
from pathlib import Path

from haagent.config import load_config
from haagent.localcluster.cli import (
    REPO_EXAMPLE,
    TENTH_FLOOR_POWER_TIMEOUT_S,
    TENTH_FLOOR_WATCHDOG_S,
    tenth_floor_config,
)
from haagent.model import FenceMethod


def test_every_node_gets_a_watchdog_level_and_a_quick_bmc_timeout(tmp_path: Path) -> None:
    shutil.copytree(REPO_EXAMPLE, tmp_path, dirs_exist_ok=True)
    for path in sorted(tmp_path.glob("*.toml")):
        path.write_text(tenth_floor_config(path.read_text()))
        cfg = load_config(path)
        assert cfg.watchdog_standin_ok
        for node in cfg.nodes.values():
            assert node.fence_method is FenceMethod.AGENT and node.watchdog_level
            assert node.fence_levels == ((f"bmc-{node.name}",),)
            assert node.watchdog_timeout_s == TENTH_FLOOR_WATCHDOG_S
        for device in cfg.fence_devices.values():
            assert device.params["power_timeout"] == str(TENTH_FLOOR_POWER_TIMEOUT_S)
