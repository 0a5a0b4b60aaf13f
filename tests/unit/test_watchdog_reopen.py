"""A restarted agent does not extend a lost lease by re-opening its watchdog (issue 8 item 5).

Opening a Linux watchdog device pings it. A device (or the stand-in) a predecessor left armed
is opened only once the new agent holds a lease of its own; until then its countdown runs on,
so the host still resets by the predecessor's last lease + armed timeout, which is what the
others wait for before recovering its guests. The startup errors of a node fenced by its
watchdog stay. `armed_state` learns all this without opening anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from haagent.daemon.shell import Daemon, StartupError
from haagent.fencing.watchdog import FileWatchdog, armed_state, read_standin
from tests.unit.test_watchdog_commitment import LEVEL
from tests.unit.test_watchdog_commitment import config as node_config


def test_armed_state_of_the_standin_reads_its_file_without_writing_it(tmp_path: Path) -> None:
    path = tmp_path / "standin"
    assert not armed_state(None, path).armed  # never armed (a fresh host)
    FileWatchdog(path, 2.5).pet()
    before = path.read_text()
    state = armed_state(None, path)
    assert state.armed and state.timeout_s == 2.5 and path.read_text() == before
    FileWatchdog(path, 2.5).close()
    assert not armed_state(None, path).armed  # a clean shutdown disarmed it
    path.write_text("garbage\n")
    assert armed_state(None, path).armed  # unknown counts as armed


def make_sysfs(root: Path, name: str, dev: str, state: str, timeout: str) -> None:
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "dev").write_text(dev + "\n")
    (entry / "state").write_text(state + "\n")
    (entry / "timeout").write_text(timeout + "\n")


def test_armed_state_of_a_device_reads_sysfs_by_device_number(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    make_sysfs(sysfs, "watchdog0", "248:0", "active", "10")
    make_sysfs(sysfs, "watchdog1", "248:1", "inactive", "30")
    legacy = tmp_path / "watchdog"  # /dev/watchdog: the misc device 10:130 = watchdog0
    os.mknod(legacy, stat.S_IFCHR | 0o600, os.makedev(10, 130))
    second = tmp_path / "watchdog1"
    os.mknod(second, stat.S_IFCHR | 0o600, os.makedev(248, 1))
    first = armed_state(str(legacy), tmp_path / "unused", sysfs)
    assert first.armed and first.timeout_s == 10.0
    other = armed_state(str(second), tmp_path / "unused", sysfs)
    assert not other.armed and other.timeout_s == 30.0
    unknown = tmp_path / "watchdog9"
    os.mknod(unknown, stat.S_IFCHR | 0o600, os.makedev(248, 9))
    assert armed_state(str(unknown), tmp_path / "unused", sysfs).armed  # no entry: unknown


def test_a_restarted_agent_opens_an_armed_watchdog_only_once_it_holds_a_lease(
    tmp_path: Path,
) -> None:
    cfg = node_config(tmp_path, LEVEL, "watchdog_standin_ok = true")
    # The predecessor crashed: its stand-in says "pet" at some time, still armed.
    FileWatchdog(cfg.watchdog_standin, 2.5).pet()
    left = read_standin(cfg.watchdog_standin)
    daemon = Daemon(cfg)
    daemon.watchdogs.arm()
    assert read_standin(cfg.watchdog_standin) == left  # not opened: not pinged
    assert daemon.core.lease.watchdog_timeout_s == 2.5  # what the Join commits
    lease = daemon.core.lease
    now = left[1] + 1.0
    daemon.watchdogs.feed(now, pet=True)  # startup grace, no lease yet: still no open
    assert read_standin(cfg.watchdog_standin) == left
    lease.until, lease.held_since = now + 1.0, now  # the Join committed
    daemon.watchdogs.feed(now + 0.1, pet=True)
    state, at_s, _ = read_standin(cfg.watchdog_standin)
    assert state in ("armed", "pet") and at_s > left[1]


def test_an_unarmed_watchdog_is_opened_at_startup(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, LEVEL, "watchdog_standin_ok = true")
    daemon = Daemon(cfg)
    daemon.watchdogs.arm()
    assert read_standin(cfg.watchdog_standin)[0] == "armed"


def test_the_startup_errors_stay_for_a_deferred_watchdog(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, LEVEL)  # the stand-in, not opted into
    FileWatchdog(cfg.watchdog_standin, 2.5).pet()
    with pytest.raises(StartupError, match="watchdog_standin_ok"):
        Daemon(cfg).watchdogs.arm()
    opted = node_config(tmp_path, LEVEL, "watchdog_standin_ok = true")
    FileWatchdog(opted.watchdog_standin, 7.0).pet()  # armed with another timeout
    with pytest.raises(StartupError, match="cannot do the configured watchdog_timeout_s"):
        Daemon(opted).watchdogs.arm()
