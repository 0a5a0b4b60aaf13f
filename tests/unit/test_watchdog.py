"""Watchdog adapters. This machine has no /dev/watchdog (no driver, no softdog), so the device
path is tested where it must refuse, and the stand-in is tested in full."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from haagent.fencing.watchdog import (
    WDIOC_GETTIMEOUT,
    WDIOC_SETTIMEOUT,
    DeviceWatchdog,
    FileWatchdog,
    WatchdogError,
    open_watchdog,
    read_standin,
)


def test_file_watchdog_records_arm_pets_and_close(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    before_s = time.monotonic()
    watchdog = FileWatchdog(path, timeout_s=7.5)
    state, armed_at_s, timeout_s = read_standin(path)
    assert (state, timeout_s) == ("armed", 7.5)
    assert before_s <= armed_at_s <= time.monotonic()

    watchdog.pet()
    state, first_pet_s, _ = read_standin(path)
    assert state == "pet"
    assert first_pet_s >= armed_at_s
    watchdog.pet()
    state, second_pet_s, _ = read_standin(path)
    assert state == "pet"
    assert second_pet_s >= first_pet_s
    # The file holds one line: a supervisor needs only the latest pet.
    assert len(path.read_text().splitlines()) == 1

    watchdog.close()
    state, closed_at_s, _ = read_standin(path)
    assert state == "closed"
    assert closed_at_s >= second_pet_s
    watchdog.close()  # idempotent
    assert read_standin(path)[0] == "closed"
    with pytest.raises(RuntimeError):
        watchdog.pet()


def test_a_supervisor_sees_the_pets_stop(tmp_path: Path) -> None:
    path = tmp_path / "watchdog"
    watchdog = FileWatchdog(path, timeout_s=0.05)
    watchdog.pet()
    _, last_pet_s, timeout_s = read_standin(path)
    # Pets stop here; the timestamp shares CLOCK_MONOTONIC with every process on the host.
    deadline_s = last_pet_s + timeout_s
    while time.monotonic() < deadline_s:
        time.sleep(0.005)
    state, unchanged_s, _ = read_standin(path)
    assert state == "pet"
    assert unchanged_s == last_pet_s
    assert time.monotonic() - unchanged_s > timeout_s


def test_open_watchdog_falls_back_when_the_device_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "dev" / "watchdog"
    standin = tmp_path / "standin"
    watchdog = open_watchdog(str(missing), 10.0, standin)
    try:
        assert isinstance(watchdog, FileWatchdog)
        assert watchdog.timeout_s == 10.0
        assert "stand-in" in watchdog.description
        assert f"{missing} does not exist" in caplog.text
        assert read_standin(standin)[0] == "armed"
        watchdog.pet()
        assert read_standin(standin)[0] == "pet"
    finally:
        watchdog.close()


def test_open_watchdog_without_a_device_uses_the_standin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    watchdog = open_watchdog(None, 3.0, tmp_path / "standin")
    try:
        assert isinstance(watchdog, FileWatchdog)
        assert "no watchdog device configured" in caplog.text
        assert str(tmp_path / "standin") in watchdog.description
    finally:
        watchdog.close()


def test_a_device_without_a_usable_timeout_is_refused(tmp_path: Path) -> None:
    # A regular file opens like a device but answers neither watchdog ioctl (ENOTTY): the
    # adapter must refuse it rather than guess the timeout, and must not fall back silently.
    fake = tmp_path / "watchdog"
    fake.write_bytes(b"")
    with pytest.raises(WatchdogError, match="neither set nor read"):
        DeviceWatchdog(str(fake), timeout_s=10)
    assert fake.read_bytes() == b"V"  # it disarmed (magic close) before giving up
    with pytest.raises(WatchdogError):
        open_watchdog(str(fake), 10, tmp_path / "standin")
    assert not (tmp_path / "standin").exists()


def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707
