"""LibvirtHypervisor.migrate/resume between two real libvirtd "hosts" (TCG guest, NBD disk).

Each test starts its own pair of hosts (tests/helpers/libvirtd_pair.py: one libvirtd per mount
and network namespace, peer-to-peer over TCP between the namespaces) and tears everything down
even on failure. A watcher samples the guest's state on both hosts every 100 ms for the whole
test; every test ends by checking that no sample shows it running unpaused on both.

The guest is 64 MiB whose RAM a tiny kernel filled with noise, so a migration moves ~55 MiB of
real pages. The failure tests slow the migration to 2 MiB/s (`migrateSetMaxSpeed` on the
source, which libvirt applies to the next migration) so that the fault lands mid-copy.
Timings are printed (`pytest -s`) for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass

import libvirt
import pytest

from haagent.ports import DomainObservation, HypervisorError, RefusedError
from haagent.resources.libvirt_guests import OWNER_NS, LibvirtHypervisor, Owner, parse_owner
from tests.helpers.libvirt_host import make_empty_disk, qemu_guest_xml
from tests.helpers.libvirtd_pair import LibvirtdPair
from tests.helpers.migration_watch import DomainWatch

pytestmark = pytest.mark.integration

GUEST = "g"
MEMORY_MIB = 64
SLOW_MIB_S = 2  # 55 MiB at 2 MiB/s: ~27 s of copying, a fault lands well inside it
DEADLINE_S = 30.0


@dataclass
class Cluster:
    pair: LibvirtdPair
    src: LibvirtHypervisor
    dst: LibvirtHypervisor
    watch: DomainWatch
    t0: float


@contextlib.asynccontextmanager
async def running_guest(pair: LibvirtdPair) -> AsyncIterator[Cluster]:
    """Adapters on both hosts, the guest started on host 1 by the adapter (owner C/n1/3) with
    its RAM filled, and a watch on both hosts. On exit: the watch stops, the adapters close,
    and no sample may show the guest running on both hosts."""
    xml = pair.guest_xml(GUEST, MEMORY_MIB)
    src = LibvirtHypervisor(pair.uri(1), call_timeout_s=60.0)
    dst = LibvirtHypervisor(pair.uri(2), call_timeout_s=60.0)
    await src.open()
    await dst.open()
    watch = DomainWatch([pair.uri(1), pair.uri(2)], GUEST).start()
    try:
        started = time.perf_counter()
        # The destination's first Prepare would wait for its QEMU capability probe (~5 s on a
        # loaded machine); a host that ran guests before has them cached, so probe it now.
        warming = asyncio.ensure_future(asyncio.to_thread(probe_qemu, pair.uri(2)))
        await src.start(GUEST, xml, "C", "n1", 3)
        await warming
        filled = await asyncio.to_thread(pair.wait_filled, GUEST)
        print(f"guest started (first define probes QEMU) in {time.perf_counter() - started:.2f}"
              f" s, RAM filled {filled:.2f} s later")  # fmt: skip
        yield Cluster(pair, src, dst, watch, time.monotonic())
    finally:
        await asyncio.to_thread(watch.stop)
        # A libvirt error's traceback keeps the adapter's frames, and the virDomain objects in
        # them keep their connection (with its socket watch and keepalive timer) alive after
        # close(); the tests drop their exceptions before this, the collector frees the rest.
        gc.collect()
        await src.close()
        await dst.close()
    twice = watch.both_running()
    assert twice == [], f"the guest ran on both hosts: {twice[:3]}"


def seen_as(obs: DomainObservation) -> tuple[bool, str | None, str | None, int | None]:
    """What `domains()` says about the guest: active?, and its owner record."""
    return obs.running, obs.cluster, obs.owner, obs.generation


def probe_qemu(uri: str) -> None:
    conn = libvirt.open(uri)
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "qemu")
    finally:
        conn.close()


def raw_domain(uri: str) -> tuple[libvirt.virConnect, libvirt.virDomain]:
    conn = libvirt.open(uri)
    return conn, conn.lookupByName(GUEST)


def owner_of(uri: str, flags: int) -> Owner | None:
    conn, dom = raw_domain(uri)
    try:
        return parse_owner(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, flags))
    finally:
        conn.close()


def slow_down(uri: str, mib_s: int) -> None:
    conn, dom = raw_domain(uri)
    try:
        dom.migrateSetMaxSpeed(mib_s)
    finally:
        conn.close()


def wait_copying(uri: str, min_bytes: int = 4 << 20) -> None:
    """Block until the source's migration job moved `min_bytes` of memory."""
    conn, dom = raw_domain(uri)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while dom.jobStats().get("memory_processed", 0) < min_bytes:
            assert time.monotonic() < deadline, "the migration never got going"
            time.sleep(0.05)
    finally:
        conn.close()


async def failure_of(call: Awaitable[None]) -> str:
    """Await `call`, which must raise HypervisorError; returns its type and message only (the
    exception itself would keep libvirt objects alive, see `running_guest`)."""
    try:
        await asyncio.wait_for(call, DEADLINE_S)
    except HypervisorError as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("no HypervisorError")


def show(c: Cluster, what: str) -> None:
    print(f"{what} (states h1 | h2, from the guest filled):")
    for line in c.watch.transitions(c.t0):
        print("   ", line)


def test_migrate_leaves_destination_paused_then_resume_runs_it(pair: LibvirtdPair) -> None:
    async def scenario() -> None:
        async with running_guest(pair) as c:
            # A refused permit: nothing is tried, the guest stays where it is.
            @contextlib.contextmanager
            def refuse() -> Iterator[None]:
                raise RefusedError("lease lapsed")
                yield

            with pytest.raises(RefusedError):
                await c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 60.0, refuse)
            assert c.watch.wait_for(0, "running", 2).states[1] == "absent"

            # libvirt's own storage check stays on: a disk file on a local filesystem is
            # refused, and the refusal is a HypervisorError with the guest still running.
            disk = make_empty_disk(pair.host(1).dir("lib") / "images" / "local.qcow2")
            await c.src.start("local", qemu_guest_xml("local", disk), "C", "n1", 1)
            refusal = await failure_of(c.src.migrate("local", pair.peer_uri(2), "C", "n2", 2, 60.0))
            assert refusal.startswith("HypervisorError: ") and "unsafe" in refusal, refusal
            assert (await c.src.domains())["local"].running
            assert "local" not in await c.dst.domains()
            await c.src.destroy("local")
            print(f"local disk refused: {refusal}")

            entered: list[str] = []

            @contextlib.contextmanager
            def permit() -> Iterator[None]:
                entered.append(threading.current_thread().name)
                yield
                entered.append("returned")

            gaps: list[float] = []

            async def ticker() -> None:  # the event loop keeps serving during the migration
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.02)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            ticking = asyncio.ensure_future(ticker())
            called = time.monotonic()
            await c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 60.0, permit)
            returned = time.monotonic()
            ticking.cancel()
            assert len(gaps) > 10 and max(gaps) < 1.0, max(gaps)
            assert len(entered) == 2 and entered[1] == "returned"
            assert entered[0] != threading.current_thread().name  # a worker thread, not the loop

            # Destination: paused, persistent, new owner record live and in its config.
            c.watch.wait_for(1, "paused", 2)
            assert seen_as((await c.dst.domains())[GUEST]) == (True, "C", "n2", 4)
            # ... and reported paused: the agents' hand-over waits on exactly this (migcore).
            assert (await c.dst.domains())[GUEST].paused
            new = Owner("C", "n2", 4)
            assert owner_of(pair.uri(2), libvirt.VIR_DOMAIN_AFFECT_CONFIG) == new
            # Source: shut off "migrated", its definition (and old owner record) kept.
            c.watch.wait_for(0, f"shutoff/{libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED}", 5)
            assert seen_as((await c.src.domains())[GUEST]) == (False, "C", "n1", 3)
            await asyncio.sleep(0.5)  # a few more samples: nothing resumes the guest by itself
            assert c.watch.latest() is not None
            assert not c.watch.latest().running()  # type: ignore[union-attr]

            resume_called = time.monotonic()
            early = [s for s in c.watch.samples if s.at < resume_called and s.running() == [1]]
            assert early == [], f"the destination ran before resume: {early[:3]}"
            await c.dst.resume(GUEST, permit)
            running = c.watch.wait_for(1, "running", 5)
            await c.dst.resume(GUEST)  # already running: a no-op
            assert not (await c.dst.domains())[GUEST].paused
            conn, dom = raw_domain(pair.uri(2))
            try:
                stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            finally:
                conn.close()
            # For the report only: the source's final pause can be shorter than the 100 ms
            # between samples (seen on a faster host), so it may not have been sampled.
            paused = next(
                (s for s in c.watch.samples if s.at > called and s.states[0].startswith("paused")),
                None,
            )
            down = (
                "the source's pause was not sampled"
                if paused is None
                else f"guest down from its first paused sample on h1 to the call's return "
                f"{returned - paused.at:.2f} s, to its first running sample on h2 "
                f"{running.at - paused.at:.2f} s"
            )
            show(c, "happy path")
            print(
                f"migrate call {returned - called:.2f} s (longest loop stall {max(gaps):.3f} s); "
                "resume call "
                f"{running.at - resume_called:.2f} s to a running sample; QEMU: elapsed "
                f"{stats.get('time_elapsed')} ms, downtime {stats.get('downtime')} ms, "
                f"{stats.get('memory_normal_bytes', 0) / 2**20:.1f} MiB sent at "
                f"{stats.get('memory_bps', 0) / 2**20:.1f} MiB/s in "
                f"{stats.get('memory_iteration')} iterations; {down} (this includes "
                f"the {resume_called - returned:.2f} s the test waited before resume)"
            )

    asyncio.run(scenario())


def test_destination_dies_mid_migration(pair: LibvirtdPair) -> None:
    """The destination's libvirtd and incoming QEMU are SIGKILLed while memory is copied: the
    call raises HypervisorError, the guest keeps running on the source (never paused), and the
    destination keeps nothing once its libvirtd is back."""

    async def scenario() -> None:
        async with running_guest(pair) as c:
            await asyncio.to_thread(slow_down, pair.uri(1), SLOW_MIB_S)
            called = time.monotonic()
            migration = asyncio.ensure_future(
                c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 120.0)
            )
            await asyncio.to_thread(wait_copying, pair.uri(1))
            killed_at = time.monotonic()
            killed = await asyncio.to_thread(pair.crash, 2)
            failure = await failure_of(migration)
            returned = time.monotonic()
            del migration
            c.watch.wait_for(1, "down", 2)
            restart_s = await asyncio.to_thread(pair.host(2).restart_libvirtd)
            settled = c.watch.wait_for(1, "absent", DEADLINE_S)
            assert settled.states[0].startswith("running"), settled
            assert GUEST not in await c.dst.domains()
            source = [s.states[0] for s in c.watch.samples if s.at > called]
            assert all(state.startswith("running") for state in source), set(source)
            show(c, "destination killed mid-migration")
            print(
                f"killed {killed} {killed_at - called:.2f} s into the call; the call raised "
                f"{returned - killed_at:.2f} s after the kill: {failure}; "
                f"h2 libvirtd back in {restart_s:.2f} s"
            )

    asyncio.run(scenario())


@pytest.mark.parametrize("guests", [True, False], ids=["host", "libvirtd-only"])
def test_source_dies_mid_migration(pair: LibvirtdPair, guests: bool) -> None:
    """The source's libvirtd (and its QEMU, `host`) is SIGKILLed while memory is copied: the
    call raises UnknownOutcomeError (the connection to the source is gone), and the incoming
    domain on the destination is destroyed without ever running. The source's libvirtd, once
    back, shows the guest shut off when its QEMU died (it runs nowhere: HA must start it
    again), and running, re-attached, when only libvirtd died: "unknown" really can mean
    "still running on the source"."""

    async def scenario() -> None:
        async with running_guest(pair) as c:
            await asyncio.to_thread(slow_down, pair.uri(1), SLOW_MIB_S)
            called = time.monotonic()
            migration = asyncio.ensure_future(
                c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 120.0)
            )
            await asyncio.to_thread(wait_copying, pair.uri(1))
            # The incoming domain is active (paused) and already carries its new owner record:
            # what lets the destination's agent tell it from a foreign instance.
            assert seen_as((await c.dst.domains())[GUEST]) == (True, "C", "n2", 4)
            killed_at = time.monotonic()
            killed = await asyncio.to_thread(pair.crash, 1, guests=guests)
            failure = await failure_of(migration)
            returned = time.monotonic()
            del migration
            assert failure.startswith("UnknownOutcomeError: "), failure
            gone = c.watch.wait_for(1, "absent", DEADLINE_S)
            destination = [s.states[1] for s in c.watch.samples if s.at > called]
            assert not any(state.startswith("running") for state in destination)
            restart_s = await asyncio.to_thread(pair.host(1).restart_libvirtd)
            back = c.watch.wait_for(0, "shutoff" if guests else "running", DEADLINE_S)
            assert back.states[1] == "absent", back
            show(c, f"source {'host' if guests else 'libvirtd'} killed mid-migration")
            print(
                f"killed {killed} {killed_at - called:.2f} s into the call; the call raised "
                f"{returned - killed_at:.2f} s after the kill: {failure}; destination "
                f"empty {gone.at - killed_at:.2f} s after the kill; h1 libvirtd back in "
                f"{restart_s:.2f} s showing {back.states[0]}"
            )

    asyncio.run(scenario())


def test_timeout_aborts_and_leaves_the_guest_on_the_source(pair: LibvirtdPair) -> None:
    """A migration slower than its timeout is aborted mid-copy: HypervisorError (not "unknown")
    once the job ended, the guest running on the source throughout, nothing left on the
    destination; a migration at full speed afterwards succeeds (the abort left nothing behind).
    The timeout is long enough for the copy to have begun (the destination's QEMU start takes
    0.5 s idle, ~5 s on a loaded machine); that it had is checked."""

    async def scenario() -> None:
        async with running_guest(pair) as c:
            await asyncio.to_thread(slow_down, pair.uri(1), SLOW_MIB_S)
            called = time.monotonic()
            copying = asyncio.ensure_future(asyncio.to_thread(wait_copying, pair.uri(1), 1 << 20))
            failure = await failure_of(c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 10.0))
            returned = time.monotonic()
            assert copying.done(), "the timeout hit before any memory was copied"
            await copying
            assert failure.startswith("HypervisorError: "), failure
            assert "timed out after 10.0 s (job aborted)" in failure, failure
            settled = c.watch.wait_for(1, "absent", DEADLINE_S)
            assert settled.states[0].startswith("running"), settled
            source = [s.states[0] for s in c.watch.samples if s.at > called]
            assert all(state.startswith("running") for state in source), set(source)
            assert (await c.src.domains())[GUEST].running

            await asyncio.to_thread(slow_down, pair.uri(1), 8192)
            again = time.monotonic()
            await c.src.migrate(GUEST, pair.peer_uri(2), "C", "n2", 4, 60.0)
            done = time.monotonic()
            c.watch.wait_for(0, "shutoff", 5)
            assert (await c.dst.domains())[GUEST].generation == 4
            show(c, "timeout 10 s at 2 MiB/s, then a migration at full speed")
            print(
                f"timed-out call returned after {returned - called:.2f} s: {failure}; "
                f"destination empty {settled.at - returned:.2f} s after; the next migration "
                f"took {done - again:.2f} s"
            )

    asyncio.run(scenario())
