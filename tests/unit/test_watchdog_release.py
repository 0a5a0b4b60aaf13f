"""The watchdog under `cluster disarm` and a frozen exit (issue 12 part 5): released by a magic
close where that disarms it (the stand-in models such a device), petted on every pass where it
cannot be released safely, never released while an authorised hypervisor call is in flight,
and opened again, at the committed timeout, when the release ends."""

from __future__ import annotations

from pathlib import Path

from haagent.core.keys import ActionKey, ActionKind
from haagent.daemon.shell import Daemon, pet_interval
from haagent.fencing.watchdog import FileWatchdog, read_standin
from tests.unit.test_watchdog_commitment import LEVEL
from tests.unit.test_watchdog_commitment import config as node_config


class Closeless(FileWatchdog):
    """A device whose driver cannot be released safely (no magic close, or nowayout on)."""

    def releasable(self) -> tuple[bool, str]:
        return False, "its driver does not support the magic close"


def started(tmp_path: Path) -> Daemon:
    daemon = Daemon(node_config(tmp_path, LEVEL, "watchdog_standin_ok = true"))
    daemon.watchdogs.arm()
    return daemon


def test_release_closes_the_standin_and_a_rearm_opens_it_again(tmp_path: Path) -> None:
    daemon = started(tmp_path)
    keeper, path = daemon.watchdogs, daemon.config.watchdog_standin
    assert keeper.armed and read_standin(path)[0] == "armed"
    keeper.set_released(True, 10.0)
    keeper.feed(10.0, pet=True)  # the core keeps saying "pet" while it holds its guests
    assert not keeper.armed and keeper.watchdog is None and read_standin(path)[0] == "closed"
    keeper.set_released(True, 11.0)  # idempotent
    keeper.set_released(False, 12.0)
    state, _, timeout_s = read_standin(path)
    assert keeper.armed and state == "armed" and timeout_s == 2.5


def test_a_device_that_cannot_be_released_is_petted_throughout(tmp_path: Path) -> None:
    daemon = started(tmp_path)
    keeper, path = daemon.watchdogs, daemon.config.watchdog_standin
    assert keeper.watchdog is not None
    keeper.watchdog.close()
    keeper.watchdog = Closeless(path, 2.5)
    keeper.set_released(True, 10.0)
    assert read_standin(path)[0] == "pet"
    before = read_standin(path)[1]
    keeper.feed(20.0, pet=False)  # no lease, guests held: pet anyway, it must never fire
    assert read_standin(path)[0] == "pet" and read_standin(path)[1] > before
    keeper.set_released(False, 21.0)
    assert keeper.armed and keeper.held is None and isinstance(keeper.watchdog, Closeless)


def test_no_release_while_an_authorised_call_is_in_flight(tmp_path: Path) -> None:
    daemon = started(tmp_path)
    keeper, path = daemon.watchdogs, daemon.config.watchdog_standin
    # A start granted under the lease that has not returned (ActAuthority's own record).
    handle = daemon.authority._calls.grant(ActionKey(ActionKind.START, "g1"), 1, 0.0, 9.0)
    keeper.set_released(True, 10.0)
    assert not keeper.released and read_standin(path)[0] == "armed"
    daemon.authority._calls.release(handle)
    keeper.set_released(True, 11.0)
    assert keeper.released and read_standin(path)[0] == "closed"


def test_a_pass_pets_early_once_half_the_interval_passed(tmp_path: Path) -> None:
    """A pass that runs anyway (every heartbeat period) pets once half the pet interval has
    passed, so the loop's own pet deadline rarely needs a wake-up; never more often."""
    daemon = started(tmp_path)
    keeper, path = daemon.watchdogs, daemon.config.watchdog_standin
    assert keeper.watchdog is not None
    interval = pet_interval(keeper.watchdog.timeout_s)
    keeper.feed(100.0, pet=True)
    assert keeper.last_pet == 100.0 and keeper.next_pet_at() == 100.0 + interval
    keeper.feed(100.0 + interval / 2 - 0.01, pet=True)  # too early: no pet
    assert keeper.last_pet == 100.0
    keeper.feed(100.0 + interval / 2, pet=True)  # a pass at half the interval pets
    assert keeper.last_pet == 100.0 + interval / 2 and read_standin(path)[0] == "pet"
    keeper.feed(200.0, pet=False)  # the core's word still rules: no lease, no pet
    assert keeper.last_pet == 100.0 + interval / 2 and keeper.next_pet_at() is None
