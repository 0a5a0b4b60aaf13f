"""LibvirtHypervisor against libvirt's in-process `test:///` driver (real libvirt, no mocks).

Most tests open a private node file (`test:///<abs path>`): every open of a file URI gets its
own copy of the node, so tests cannot see each other's domains. The tests that need a second,
raw libvirt connection to the same state (to plant foreign metadata) use the process-wide
`test:///default` and undefine what they created.

Each test runs its own `asyncio.run`; the adapter's close() leaves libvirt's process-wide event
implementation idle so that the next test's loop can take it over.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from haagent.ports import DomainObservation, HypervisorError, UnknownOutcomeError
from haagent.resources.libvirt_guests import (
    OWNER_NS,
    OWNER_PREFIX,
    LibvirtHypervisor,
    Owner,
    format_owner,
    parse_owner,
)

EVENT_DEADLINE_S = 5.0

NODE_XML = """<node>
  <cpu>
    <mhz>2000</mhz><model>x86_64</model><active>2</active>
    <nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>
  </cpu>
  <memory>4194304</memory>
  <domain type='test'>
    <name>foreign</name>
    <memory unit='MiB'>128</memory>
    <os><type arch='x86_64'>hvm</type></os>
  </domain>
</node>
"""


def guest_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )


@pytest.fixture
def node_uri(tmp_path: Path) -> str:
    """A private test-driver node: 4096 MiB of memory and one running domain, "foreign",
    that haagent never started (no metadata)."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    return f"test://{node}"


@pytest.fixture
def default_conn() -> Iterator[libvirt.virConnect]:
    """A raw connection to the shared `test:///default`; undefines test-made domains after."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith("ut-"):
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        conn.close()


def run_with(uri: str, body: Callable[[LibvirtHypervisor], Awaitable[None]]) -> None:
    """Run `body` with an open adapter on a fresh event loop; always close it."""

    async def main() -> None:
        hypervisor = LibvirtHypervisor(uri)
        await hypervisor.open()
        try:
            await body(hypervisor)
        finally:
            await hypervisor.close()

    asyncio.run(main())


async def observe(hypervisor: LibvirtHypervisor, domain: str) -> DomainObservation:
    observed: DomainObservation = (await hypervisor.domains())[domain]
    return observed


# --- ownership metadata -------------------------------------------------------------------------


def test_start_defines_writes_metadata_and_domains_reads_it_back(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        assert "vm1" not in await h.domains()
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 7)
        assert await observe(h, "vm1") == DomainObservation(
            name="vm1", running=True, owner="n1", generation=7, cluster="C"
        )
        # The record is in the persistent config too: it survives the stop.
        await h.destroy("vm1")
        assert await observe(h, "vm1") == DomainObservation(
            name="vm1", running=False, owner="n1", generation=7, cluster="C"
        )
        # A later start under a new generation rewrites it (without redefining the domain).
        await h.start("vm1", None, "C", "n2", 8)
        assert await observe(h, "vm1") == DomainObservation(
            name="vm1", running=True, owner="n2", generation=8, cluster="C"
        )

    run_with(node_uri, body)


def test_existing_definition_is_not_replaced(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 1)
        await h.destroy("vm1")
        # This XML would be rejected by libvirt (no <os>), so a redefinition would fail.
        bad = "<domain type='test'><name>vm1</name><memory unit='MiB'>64</memory></domain>"
        await h.start("vm1", bad, "C", "n1", 2)
        assert (await observe(h, "vm1")).generation == 2

    run_with(node_uri, body)


def test_autostart_is_cleared_on_start_and_on_request(node_uri: str) -> None:
    """A fenced host that boots must not start a protected guest before its agent decides."""

    async def body(h: LibvirtHypervisor) -> None:
        # The test driver's state lives in the adapter's own connection (one per open), so
        # flip the flag the way an admin's virsh would, through that connection.
        def set_on(conn: libvirt.virConnect) -> int:
            return conn.lookupByName("vm1").setAutostart(1)

        def flag(conn: libvirt.virConnect) -> int:
            return conn.lookupByName("vm1").autostart()

        await h.start("vm1", guest_xml("vm1"), "C", "n1", 1)
        await h.destroy("vm1")
        await h._call("set", set_on)
        await h.start("vm1", None, "C", "n1", 2)
        assert await h._call("get", flag) == 0
        await h._call("set", set_on)
        assert await h.clear_autostart(["vm1", "not-defined", "foreign"]) == ["vm1"]
        assert await h._call("get", flag) == 0
        assert await h.clear_autostart(["vm1"]) == []

    run_with(node_uri, body)


def test_a_destroy_waits_for_a_start_still_running_in_its_worker_thread(node_uri: str) -> None:
    """A start that outlived its caller's deadline may still create() the domain; a destroy
    that ran first would be undone by it. So a destroy waits for it (bounded) and, if it is
    still running, fails with an unknown outcome instead of claiming the domain is off."""

    async def body(h: LibvirtHypervisor) -> None:
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 1)
        h.call_timeout_s = 0.2
        pending = threading.Event()
        h._starting["vm1"] = pending  # as the worker thread of a slow start registers itself
        with pytest.raises(UnknownOutcomeError, match="still running"):
            await h.destroy("vm1")
        assert (await observe(h, "vm1")).running
        with pytest.raises(UnknownOutcomeError, match="earlier start"):
            await h.start("vm1", None, "C", "n1", 1)
        threading.Timer(0.05, pending.set).start()  # the slow start returns
        await h.destroy("vm1")
        assert not (await observe(h, "vm1")).running

    run_with(node_uri, body)


def test_start_is_idempotent_for_the_same_owner(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 7)
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 7)
        await h.start("vm1", None, "C", "n1", 7)
        assert await observe(h, "vm1") == DomainObservation(
            name="vm1", running=True, owner="n1", generation=7, cluster="C"
        )

    run_with(node_uri, body)


def test_start_under_another_generation_while_running_raises(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 7)
        for node, generation in (("n1", 8), ("n1", 6), ("n2", 7)):
            with pytest.raises(HypervisorError, match="already running"):
                await h.start("vm1", None, "C", node, generation)
        # The running instance and its record are untouched.
        assert await observe(h, "vm1") == DomainObservation(
            name="vm1", running=True, owner="n1", generation=7, cluster="C"
        )

    run_with(node_uri, body)


def test_foreign_domain_reports_no_owner_and_is_not_claimed(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        assert await observe(h, "foreign") == DomainObservation(name="foreign", running=True)
        with pytest.raises(HypervisorError, match="no owner record"):
            await h.start("foreign", None, "C", "n1", 1)
        assert (await observe(h, "foreign")).owner is None

    run_with(node_uri, body)


def test_the_default_drivers_own_domain_is_reported_like_any_other() -> None:
    async def body(h: LibvirtHypervisor) -> None:
        assert await observe(h, "test") == DomainObservation(name="test", running=True)

    run_with("test:///default", body)


@pytest.mark.parametrize(
    "metadata",
    [
        '<owner cluster="C" node="n1" generation="x7"/>',
        '<owner cluster="C" node="n1" generation="-1"/>',
        '<owner cluster="C" node="n1"/>',
        '<owner cluster="" node="n1" generation="1"/>',
        '<lease cluster="C" node="n1" generation="1"/>',
    ],
)
def test_unusable_metadata_reads_as_no_owner(
    default_conn: libvirt.virConnect, metadata: str
) -> None:
    dom = default_conn.defineXML(guest_xml("ut-junk"))
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        metadata,
        OWNER_PREFIX,
        OWNER_NS,
        libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )
    dom.create()

    async def body(h: LibvirtHypervisor) -> None:
        assert await observe(h, "ut-junk") == DomainObservation(name="ut-junk", running=True)

    run_with("test:///default", body)


def test_owner_format_round_trips_and_escapes() -> None:
    owner = Owner(cluster='c"<&>', node="n 1", generation=2**40)
    assert parse_owner(format_owner(owner)) == owner
    namespaced = f'<x:owner xmlns:x="{OWNER_NS}" cluster="C" node="n" generation="3"/>'
    assert parse_owner(namespaced) == Owner("C", "n", 3)
    assert parse_owner("<owner") is None
    assert parse_owner('<owner cluster="C" node="n" generation=" 3"/>') is None


# --- stop and destroy ---------------------------------------------------------------------------


def test_stop_and_destroy(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 1)
        await h.stop("vm1", timeout_s=5.0)
        assert not (await observe(h, "vm1")).running
        await h.stop("vm1", timeout_s=5.0)  # Already stopped: nothing to do.

        await h.start("vm1", None, "C", "n1", 2)
        await h.destroy("vm1")
        assert not (await observe(h, "vm1")).running
        await h.destroy("vm1")  # Not running: success.
        await h.destroy("never-defined")
        await h.stop("never-defined", timeout_s=1.0)

        # Foreign domains are powered off the same way (the core decides whether to).
        await h.destroy("foreign")
        assert not (await observe(h, "foreign")).running

    run_with(node_uri, body)


# --- events -------------------------------------------------------------------------------------


def test_lifecycle_events_wake_the_listener(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        woken = asyncio.Event()
        h.set_listener(woken.set)

        async def expect_wake(action: Awaitable[None], event: str) -> None:
            woken.clear()
            await action
            await asyncio.wait_for(woken.wait(), EVENT_DEADLINE_S)
            # Later events of the same action may still be on their way: wait for the one
            # that ends it.
            deadline = time.monotonic() + EVENT_DEADLINE_S
            while h.last_event is None or h.last_event.event != event:
                assert time.monotonic() < deadline, f"no {event} event, last {h.last_event}"
                woken.clear()
                await asyncio.wait_for(woken.wait(), EVENT_DEADLINE_S)
            assert h.last_event.domain == "vm1"

        await expect_wake(h.start("vm1", guest_xml("vm1"), "C", "n1", 1), "STARTED")
        await expect_wake(h.destroy("vm1"), "STOPPED")
        await expect_wake(h.start("vm1", None, "C", "n1", 2), "STARTED")
        await expect_wake(h.stop("vm1", timeout_s=5.0), "STOPPED")

    run_with(node_uri, body)


def test_wake_runs_on_the_event_loop_thread(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        threads: list[bool] = []

        def wake() -> None:
            threads.append(asyncio.get_running_loop() is loop)
            woken.set()

        h.set_listener(wake)
        await h.start("vm1", guest_xml("vm1"), "C", "n1", 1)
        await asyncio.wait_for(woken.wait(), EVENT_DEADLINE_S)
        assert threads and all(threads)

    run_with(node_uri, body)


def test_two_adapters_on_one_loop_wake_their_own_listeners(tmp_path: Path) -> None:
    """Two private nodes in one process (as in a simulator): libvirt's event implementation is
    shared, the events are not."""
    uris = []
    for name in ("a", "b"):
        node = tmp_path / f"{name}.xml"
        node.write_text(NODE_XML)
        uris.append(f"test://{node}")

    async def main() -> None:
        first, second = LibvirtHypervisor(uris[0]), LibvirtHypervisor(uris[1])
        first_woken, second_woken = asyncio.Event(), asyncio.Event()
        first.set_listener(first_woken.set)
        second.set_listener(second_woken.set)
        await first.open()
        await second.open()
        try:
            await second.start("vm1", guest_xml("vm1"), "C", "n2", 1)
            await asyncio.wait_for(second_woken.wait(), EVENT_DEADLINE_S)
            assert "vm1" not in await first.domains()
            assert not first_woken.is_set()
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


# --- errors -------------------------------------------------------------------------------------


def test_bad_xml_raises_hypervisor_error(node_uri: str) -> None:
    async def body(h: LibvirtHypervisor) -> None:
        with pytest.raises(HypervisorError, match="invalid domain XML"):
            await h.start("bad", "<domain><name>bad", "C", "n1", 1)
        with pytest.raises(HypervisorError, match="names 'other'"):
            await h.start("bad", guest_xml("other"), "C", "n1", 1)
        # Well-formed XML that libvirt itself rejects: the message carries libvirt's code.
        no_os = "<domain type='test'><name>bad</name><memory unit='MiB'>64</memory></domain>"
        with pytest.raises(HypervisorError, match=r"libvirt error code 27: .*os <type>"):
            await h.start("bad", no_os, "C", "n1", 1)
        with pytest.raises(HypervisorError, match="not defined and no XML"):
            await h.start("bad", None, "C", "n1", 1)
        assert "bad" not in await h.domains()

    run_with(node_uri, body)


def test_unreachable_libvirt_raises_hypervisor_error(tmp_path: Path) -> None:
    async def main() -> None:
        h = LibvirtHypervisor(f"qemu:///system?socket={tmp_path}/nothing-here")
        with pytest.raises(HypervisorError, match="libvirt error code"):
            await h.open()
        assert not h.alive()
        # Still usable: every call tries to connect again and fails the same typed way.
        with pytest.raises(HypervisorError):
            await h.domains()
        await h.close()

    asyncio.run(main())


def test_capacity_and_alive(node_uri: str) -> None:
    async def main() -> None:
        h = LibvirtHypervisor(node_uri)
        await h.open()
        assert h.alive()
        assert await h.capacity_mib() == 4096
        await h.close()
        assert not h.alive()

    asyncio.run(main())


# --- latency ------------------------------------------------------------------------------------


def test_call_latency_through_worker_threads(node_uri: str) -> None:
    """Not a benchmark, a sanity bound: each call hops to a worker thread and back."""

    async def body(h: LibvirtHypervisor) -> None:
        rounds = 200
        started = time.perf_counter()
        for _ in range(rounds):
            await h.domains()
        domains_ms = (time.perf_counter() - started) / rounds * 1000
        started = time.perf_counter()
        for generation in range(rounds):
            await h.start("vm1", guest_xml("vm1"), "C", "n1", generation)
            await h.destroy("vm1")
        cycle_ms = (time.perf_counter() - started) / rounds * 1000
        print(
            f"\ntest driver: domains() {domains_ms:.2f} ms/call, "
            f"start+destroy {cycle_ms:.2f} ms/cycle"
        )
        assert domains_ms < 50
        assert cycle_ms < 100

    run_with(node_uri, body)
