"""LibvirtHypervisor against a real, private libvirtd running a real QEMU (TCG) guest.

The host is started from scratch in its own mount namespace (tests/helpers/libvirt_host.py) and
torn down even on failure: every daemon and QEMU process it started is killed by pid, and the
namespace vanishes with them. Nothing is skipped: if libvirtd cannot start, the test fails with
the daemons' logs in the message.

The guest is 64 MiB with an empty qcow2 disk, so SeaBIOS finds nothing to boot and idles; it
also ignores ACPI power-off requests, which is exactly what exercises `stop`'s fallback to
destroy.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import libvirt
import pytest

from haagent.localcluster.cluster import pid_alive
from haagent.ports import DomainObservation, HypervisorError
from haagent.resources.libvirt_guests import LibvirtHypervisor
from tests.helpers.libvirt_host import (
    LibvirtHost,
    make_empty_disk,
    qemu_guest_xml,
)

pytestmark = pytest.mark.integration

GUEST = "g1"
EVENT_DEADLINE_S = 20.0

_T = TypeVar("_T")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    libvirt_host = LibvirtHost(tmp_path / "h1")
    try:
        startup_s = libvirt_host.up()
        print(f"\nlibvirtd start-up (3 daemons, socket accepting): {startup_s:.3f} s")
        yield libvirt_host
    finally:
        libvirt_host.down()
        assert libvirt_host.processes() == []


def wait_until_reattached(uri: str, domain: str) -> None:
    """Block until a restarted libvirtd has re-attached to `domain`'s QEMU: a query that needs
    the QEMU monitor waits for libvirt's reconnect job."""
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(domain).blockStats("vda")
    finally:
        conn.close()


async def timed(what: str, action: Awaitable[_T]) -> _T:
    started = time.perf_counter()
    result = await action
    print(f"{what}: {time.perf_counter() - started:.3f} s")
    return result


async def wait_for_event(
    h: LibvirtHypervisor, woken: asyncio.Event, domain: str, event: str
) -> None:
    """Wait (with a deadline) until the listener was woken by `event` for `domain`."""
    deadline = time.monotonic() + EVENT_DEADLINE_S
    while True:
        last = h.last_event
        if last is not None and last.domain == domain and last.event == event:
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {event} event for {domain}; last was {last}"
        woken.clear()
        await asyncio.wait_for(woken.wait(), remaining)


def test_guest_lifecycle_on_real_libvirtd(host: LibvirtHost) -> None:
    disk = make_empty_disk(host.dir("lib") / "images" / f"{GUEST}.qcow2")
    xml = qemu_guest_xml(GUEST, disk)

    # A raw define of another domain first: on a fresh daemon the first define waits for
    # libvirt's QEMU capability probe, and we want that cost visible on its own. (This raw
    # connection lives outside any event loop; if an earlier test registered libvirt's event
    # implementation, its socket watch is parked until the adapter's loop takes over.)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    raw = libvirt.open(host.uri)
    try:
        started = time.perf_counter()
        probe = raw.defineXML(qemu_guest_xml("probe", disk))
        print(f"first define on a fresh daemon (QEMU probe): {time.perf_counter() - started:.3f} s")
        started = time.perf_counter()
        probe.undefine()
        raw.defineXML(qemu_guest_xml("probe", disk)).undefine()
        print(f"define+undefine afterwards: {time.perf_counter() - started:.3f} s")
    finally:
        raw.close()

    async def scenario() -> None:
        h = LibvirtHypervisor(host.uri, call_timeout_s=60.0)
        woken = asyncio.Event()
        h.set_listener(woken.set)
        await timed("adapter open", h.open())
        try:
            # Start under generation 3: defined from XML, owner record written, started.
            await timed("start (define + metadata + create)", h.start(GUEST, xml, "C", "n1", 3))
            await wait_for_event(h, woken, GUEST, "STARTED")
            assert (await h.domains())[GUEST] == DomainObservation(
                name=GUEST, running=True, owner="n1", generation=3, cluster="C"
            )
            qemu_pid = host.qemu_pids()[GUEST]
            assert pid_alive(qemu_pid)
            await h.start(GUEST, xml, "C", "n1", 3)  # Idempotent.
            with pytest.raises(HypervisorError, match="already running"):
                await h.start(GUEST, xml, "C", "n1", 4)

            # Destroy: the STOPPED event (detail 1 = destroyed) wakes the listener.
            woken.clear()
            await timed("destroy", h.destroy(GUEST))
            await wait_for_event(h, woken, GUEST, "STOPPED")
            assert h.last_event is not None and h.last_event.detail == 1
            assert (await h.domains())[GUEST] == DomainObservation(
                name=GUEST, running=False, owner="n1", generation=3, cluster="C"
            )
            assert not pid_alive(qemu_pid)
            await h.destroy(GUEST)  # Not running: success.

            # Restart under generation 4 (existing definition), then a graceful stop that
            # SeaBIOS ignores: after the timeout it is destroyed.
            await timed("start (existing definition)", h.start(GUEST, None, "C", "n1", 4))
            assert (await h.domains())[GUEST].generation == 4
            started = time.perf_counter()
            await timed("stop with 1 s grace (ignored, then destroy)", h.stop(GUEST, 1.0))
            assert time.perf_counter() - started >= 1.0
            assert not (await h.domains())[GUEST].running

            await reconnect_after_libvirtd_restart(host, h, woken, xml)
            await hung_libvirtd_times_out(host)
        finally:
            await h.close()

    asyncio.run(scenario())
    assert not any(pid_alive(pid) for pid in host.qemu_pids().values())


async def reconnect_after_libvirtd_restart(
    host: LibvirtHost, h: LibvirtHypervisor, woken: asyncio.Event, xml: str
) -> None:
    """libvirtd dies while the guest runs: the close callback wakes the listener and marks the
    connection dead; after libvirtd is back, the next call reconnects and sees the guest
    still running under its generation (libvirtd re-attaches to the running QEMU)."""
    await h.start(GUEST, xml, "C", "n1", 5)
    qemu_pid = host.qemu_pids()[GUEST]
    woken.clear()
    host.stop_libvirtd()
    await asyncio.wait_for(woken.wait(), EVENT_DEADLINE_S)
    assert not h.alive()
    with pytest.raises(HypervisorError):
        await h.domains()
    print(f"libvirtd restart: {host.restart_libvirtd():.3f} s")
    observed = await timed("domains() with reconnect", h.domains())
    assert h.alive()
    assert observed[GUEST] == DomainObservation(
        name=GUEST, running=True, owner="n1", generation=5, cluster="C"
    )
    assert pid_alive(qemu_pid)
    # Events flow on the new connection too. Before destroying, let libvirtd finish
    # re-attaching to the QEMU monitor: a destroy inside that window still kills the guest, but
    # libvirt then answers "domain is not running" and emits no STOPPED event (the domain ends
    # up shut off with reason "daemon"). The adapter copes (destroy succeeds once the domain is
    # inactive, and the loop is level-triggered); this test wants the event.
    await asyncio.to_thread(wait_until_reattached, host.uri, GUEST)
    woken.clear()
    await h.destroy(GUEST)
    await wait_for_event(h, woken, GUEST, "STOPPED")


async def hung_libvirtd_times_out(host: LibvirtHost) -> None:
    """A frozen libvirtd: calls (and opens) fail with HypervisorError at the deadline instead
    of hanging the caller; after the daemon thaws the adapter works again."""
    h = LibvirtHypervisor(host.uri, call_timeout_s=1.0)
    late = LibvirtHypervisor(host.uri, call_timeout_s=1.0)
    await h.open()
    try:
        host.signal_libvirtd(signal.SIGSTOP)
        try:
            started = time.perf_counter()
            with pytest.raises(HypervisorError, match=r"no answer from libvirt within 1\.0 s"):
                await h.domains()
            elapsed = time.perf_counter() - started
            print(f"call against a frozen libvirtd failed after {elapsed:.3f} s")
            assert elapsed < 5.0
            with pytest.raises(HypervisorError, match=r"open .* no answer"):
                await late.open()
        finally:
            host.signal_libvirtd(signal.SIGCONT)
        assert GUEST in await h.domains()
    finally:
        await late.close()
        await h.close()
