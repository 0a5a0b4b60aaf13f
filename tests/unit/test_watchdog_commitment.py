"""What a node commits about its watchdog, and when it refuses to start (issue 8 item 1).

Others recover a node's guests on its watchdog's word only with the timeout the node armed, as
the device reported it; a node that relies on its watchdog (fence = "watchdog", or a final
"watchdog" level) refuses to start when the device cannot do the configured timeout, or when
only the stand-in is there and the lab did not opt into it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.config import Config, load_config
from haagent.daemon import watchdogs
from haagent.daemon.shell import Daemon, StartupError
from haagent.fencing.watchdog import DeviceWatchdog, FileWatchdog

CONFIG = """
[cluster]
name = "c"
secret = "0123456789abcdef"

[local]
node = "n1"
data_dir = "state"
libvirt_uri = "test:///default"
api_listen = "127.0.0.1:8400"
api_token = "token-token-token"
{local}

[nodes.n1]
address = "127.0.0.1:7401"
memory_mib = 1024
fence = {fence}
watchdog_timeout_s = 2.5

[nodes.n2]
address = "127.0.0.1:7402"
memory_mib = 1024
fence = [["bmc"]]

[nodes.n3]
address = "127.0.0.1:7403"
memory_mib = 1024
fence = [["bmc"]]

[fence_devices.bmc]
agent = "fence_ipmilan"
params = {{ ip = "10.1.0.1", username = "admin", password = "pw", lanplus = true }}
"""

LEVEL = '[["bmc"], "watchdog"]'


def config(tmp_path: Path, fence: str, local: str = "") -> Config:
    path = tmp_path / "n1.toml"
    path.write_text(CONFIG.format(fence=fence, local=local))
    return load_config(path)


class FakeDevice(DeviceWatchdog):
    """A device whose driver answered `timeout_s` after arming (no real device here)."""

    def __init__(self, timeout_s: float) -> None:
        self.path = "/dev/watchdog-fake"
        self._fd = None
        self.timeout_s = timeout_s


def arm(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, watchdog: DeviceWatchdog | FileWatchdog
) -> Daemon:
    monkeypatch.setattr(watchdogs, "open_watchdog", lambda *a, **k: watchdog)
    daemon = Daemon(cfg)
    daemon.watchdogs.arm()
    return daemon


def test_a_device_commits_what_it_reports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # 2.5 s asked for; drivers take whole seconds, so 3 s is what an honest device does.
    daemon = arm(monkeypatch, config(tmp_path, LEVEL), FakeDevice(3.0))
    assert daemon.core.lease.watchdog_timeout_s == 3.0


@pytest.mark.parametrize("reported_s", [2.0, 4.0, 60.0])
def test_a_device_that_cannot_do_the_timeout_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, reported_s: float
) -> None:
    for fence in (LEVEL, '"watchdog"'):
        with pytest.raises(StartupError, match="cannot do the configured watchdog_timeout_s"):
            arm(monkeypatch, config(tmp_path, fence), FakeDevice(reported_s))


def test_a_node_not_relying_on_its_watchdog_still_commits_the_truth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    daemon = arm(monkeypatch, config(tmp_path, '[["bmc"]]'), FakeDevice(60.0))
    assert daemon.core.lease.watchdog_timeout_s == 60.0


def test_the_standin_counts_only_where_it_was_opted_into(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    standin = FileWatchdog(tmp_path / "standin", 2.5)
    with pytest.raises(StartupError, match="watchdog_standin_ok"):
        arm(monkeypatch, config(tmp_path, LEVEL), standin)
    standin = FileWatchdog(tmp_path / "standin", 2.5)
    daemon = arm(monkeypatch, config(tmp_path, '[["bmc"]]'), standin)
    assert daemon.core.lease.watchdog_timeout_s is None  # nobody may count on it
    standin = FileWatchdog(tmp_path / "standin", 2.5)
    opted = config(tmp_path, LEVEL, "watchdog_standin_ok = true")
    daemon = arm(monkeypatch, opted, standin)
    assert daemon.core.lease.watchdog_timeout_s == 2.5
