"""The daemon's network observer against this host's real links (read-only: it only lists
them): unknown until the first check, then the needed names that do not work, a wake-up when
that changes, and nothing at all (no watcher, no task) on a node that needs no network."""

from __future__ import annotations

import asyncio
import time

from haagent.daemon.netwatch import NetworkObserver, needed_here
from haagent.model import GuestSpec


def test_needed_here_is_what_the_guests_allowed_on_the_node_need() -> None:
    guests = [
        GuestSpec("a", "a", 1, networks=("br1", "eth0.100")),
        GuestSpec("b", "b", 1, allowed_nodes=("n2",), networks=("br2",)),
        GuestSpec("c", "c", 1, networks=("br1",)),
    ]
    assert needed_here("n1", guests) == ("br1", "eth0.100")
    assert needed_here("n2", guests) == ("br1", "br2", "eth0.100")


async def test_unknown_until_checked_then_the_missing_names_and_a_wake_up() -> None:
    woke = asyncio.Event()
    obs = NetworkObserver(("lo", "hanc-absent0"), woke.set, interval_s=60.0)
    assert obs.missing() is None  # never "all fine" before a check
    obs.start()
    try:
        await asyncio.wait_for(woke.wait(), 30.0)
        assert obs.missing() == ("hanc-absent0",)
        assert obs.problems() == {"hanc-absent0": "absent"}
        obs.check()
        # A request re-checks at once; an unchanged result does not wake the loop again.
        woke.clear()
        checks = obs.checks
        obs.request()
        deadline = time.monotonic() + 30.0
        while obs.checks == checks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert obs.checks > checks and not woke.is_set()
    finally:
        await obs.stop()


async def test_a_node_that_needs_nothing_runs_nothing() -> None:
    obs = NetworkObserver((), lambda: None)
    obs.start()
    assert obs.missing() == ()
    obs.check()
    await obs.stop()


async def test_a_libvirt_network_is_resolved_by_this_hosts_libvirt_on_each_check() -> None:
    """A network this host's libvirt does not define does not work, and without a libvirt
    URI no network resolves (the resolved bridge itself: tests/integration/
    test_netlink_real.py, in a namespace where it can be made and removed)."""
    needed = ("network:hanc-undefined",)
    for uri, why in (("test:///default", "not defined in libvirt"), (None, "not resolved")):
        woke = asyncio.Event()
        obs = NetworkObserver(needed, woke.set, interval_s=60.0, libvirt_uri=uri)
        obs.start()
        try:
            await asyncio.wait_for(woke.wait(), 30.0)
            assert obs.problems() == {"network:hanc-undefined": why}
        finally:
            await obs.stop()
