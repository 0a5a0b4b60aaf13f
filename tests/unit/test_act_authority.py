"""Lease and generation checked at the moment of acting (issue 8 item 5).

The core decides a start on a snapshot; the hypervisor call may come much later. These tests
check, against the real executor, the real libvirt adapter on libvirt's in-process test driver,
the real lease and the real stand-in watchdog, that:
- a start whose lease lapsed, or whose generation moved on, before the call is not made, and
  comes back as a refusal the core does not count as a failure;
- the check is repeated in the worker thread right before `create()` (a start that waited in
  the worker pool past its lease is not made);
- the watchdog is not petted while an authorised call is still in flight past its lease;
- a clean shutdown does not disarm the watchdog while such a call is in flight.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import cast

import pytest

from haagent.agent import ActionKey, ActionKind, ActionResult, StartGuest
from haagent.commands import AssignGuests, Assignment, GuestStarting, GuestStopped, SetDesired
from haagent.config import Config
from haagent.core.authority import ActingCalls, refusal
from haagent.core.lease import Lease
from haagent.daemon.authority import ActAuthority
from haagent.daemon.executor import ActionExecutor
from haagent.daemon.offload import Offload
from haagent.daemon.shell import Daemon
from haagent.daemon.telemetry import Telemetry
from haagent.fencing.levels import AgentFencer
from haagent.fencing.watchdog import FileWatchdog, read_standin
from haagent.model import ClusterState, DesiredState
from haagent.ports import RefusedError
from haagent.resources.libvirt_guests import LibvirtHypervisor
from tests.helpers.core_views import (
    build,
    commands,
    core,
    joined,
    local,
    of,
    settings,
    view,
    with_lease,
)
from tests.unit.test_libvirt_test_driver import NODE_XML, guest_xml
from tests.unit.test_watchdog_commitment import config as node_config

START = ActionKey(ActionKind.START, "g")


def starting_on_n1() -> ClusterState:
    """g assigned to n1 and its start committed: generation 2."""
    return build(
        AssignGuests((Assignment("g", "n1", 0),), "placed", 0.0),
        GuestStarting("g", "n1", 1, 0.0),
        state=joined("n1", "n2", "n3"),
    )


# --- the pure rule -------------------------------------------------------------------------------


def test_refusal_names_a_lapsed_lease_a_moved_generation_and_a_disabled_guest() -> None:
    state = starting_on_n1()
    assert refusal(state, "n1", "g", 2, now=5.0, lease_until=6.0) is None
    assert "lease lapsed" in str(refusal(state, "n1", "g", 2, now=6.0, lease_until=6.0))
    assert "generation 2" in str(refusal(state, "n1", "g", 1, now=5.0, lease_until=6.0))
    assert "committed owner is n1" in str(refusal(state, "n2", "g", 2, now=5.0, lease_until=6.0))
    assert "not in the committed state" in str(
        refusal(state, "n1", "x", 2, now=5.0, lease_until=6.0)
    )
    disabled = build(SetDesired("g", DesiredState.STOPPED, "admin", 0.0), state=state)
    assert "stopped" in str(refusal(disabled, "n1", "g", 2, now=5.0, lease_until=6.0))


def test_a_call_is_overdue_once_the_lease_that_authorised_it_lapsed() -> None:
    calls = ActingCalls()
    handle = calls.grant(START, 2, now=10.0, lease_until=11.0)
    assert calls.overdue(10.5, lease_until=11.0, held_since=9.0) is None
    # Renewed without a gap since the grant: still covered (the node was never declared
    # failed, so its guests were not moved).
    assert calls.overdue(13.0, lease_until=14.0, held_since=9.0) is None
    # Lapsed: overdue.
    assert calls.overdue(14.0, lease_until=14.0, held_since=9.0) is not None
    # Regained after a gap: the gap could have let the cluster move the guest.
    assert calls.overdue(15.0, lease_until=16.0, held_since=14.5) is not None
    calls.release(handle)
    assert calls.overdue(15.0, lease_until=14.0, held_since=9.0) is None


# --- the core: a refusal is not a failure --------------------------------------------------------


def test_a_refused_start_is_decided_again_and_never_counted_as_a_failure() -> None:
    state = starting_on_n1()
    c = core()
    with_lease(c, state, 10.0)
    assert of(StartGuest, c.tick(10.01, view(state), local(10.01)).actions)
    refused = ActionResult(False, "lease lapsed right before the call", refused=True)
    events = c.action_done(START, refused, 10.02)
    assert [e.name for e in events] == ["start_refused"]
    step = c.tick(10.03, view(state), local(10.03))
    assert not [x for x in commands(step) if isinstance(x, GuestStopped)]
    assert of(StartGuest, step.actions)  # decided again on the current state
    # Contrast: a start that was made and failed is reported, and counted.
    c.action_done(START, ActionResult(False, "libvirt said no"), 10.04)
    (stopped,) = [x for x in commands(c.tick(10.05, view(state), local(10.05)))]
    assert isinstance(stopped, GuestStopped) and stopped.failed


# --- the executor and the libvirt adapter --------------------------------------------------------


class GuestXml:
    """The one thing the executor reads from the config for a start."""

    def guest_xml(self, guest: str) -> str:
        return guest_xml(guest)


class Rig:
    def __init__(self, tmp_path: Path, state: ClusterState) -> None:
        self.state = state
        self.lease = Lease(settings(), "n1-inc", started_at=0.0)
        self.authority = ActAuthority("n1", self.lease, lambda: self.state)
        node = tmp_path / "node.xml"
        node.write_text(NODE_XML)
        self.uri = f"test://{node}"

    def executor(self, hv: LibvirtHypervisor) -> ActionExecutor:
        return ActionExecutor(
            cast(Config, GuestXml()),
            settings(start_timeout_s=5.0),
            hv,
            AgentFencer(),
            Telemetry("n1", Offload()),
            self.authority,
        )

    def hold(self, until: float) -> None:
        self.lease.until = until
        self.lease.held_since = 0.0


def run(rig: Rig, body: object) -> None:
    async def main() -> None:
        hv = LibvirtHypervisor(rig.uri)
        await hv.open()
        try:
            await body(hv)  # type: ignore[operator]
        finally:
            await hv.close()

    asyncio.run(main())


async def running(hv: LibvirtHypervisor, domain: str) -> bool:
    seen = (await hv.domains()).get(domain)
    return seen is not None and seen.running


def test_the_executor_refuses_a_start_whose_lease_lapsed_or_generation_moved(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, starting_on_n1())

    async def body(hv: LibvirtHypervisor) -> None:
        ex = rig.executor(hv)
        loop = asyncio.get_running_loop()
        rig.hold(loop.time() - 0.001)  # lapsed a moment ago
        result = await ex.dispatch(StartGuest("g", "g", 2))
        assert result.refused and not result.ok and "lease lapsed" in result.detail
        assert not await running(hv, "g")
        rig.hold(loop.time() + 30)
        result = await ex.dispatch(StartGuest("g", "g", 1))  # decided on an older snapshot
        assert result.refused and "generation 2" in result.detail
        assert not await running(hv, "g")
        result = await ex.dispatch(StartGuest("g", "g", 2))
        assert result.ok and await running(hv, "g")
        assert rig.authority.in_flight() == 0  # the permit went with the returned call

    run(rig, body)


def test_a_start_that_waited_in_the_worker_pool_past_its_lease_is_not_made(
    tmp_path: Path,
) -> None:
    """The executor's check passes, then the call queues behind busy libvirt worker threads
    until the lease has lapsed: the check in the worker thread, right before create(),
    refuses it."""
    rig = Rig(tmp_path, starting_on_n1())

    async def body(hv: LibvirtHypervisor) -> None:
        ex = rig.executor(hv)
        loop = asyncio.get_running_loop()
        release = threading.Event()
        # Occupy every worker thread of the default pool (as slow libvirt calls would).
        busy = [loop.run_in_executor(None, release.wait) for _ in range(64)]
        rig.hold(loop.time() + 0.3)
        start = asyncio.ensure_future(ex.dispatch(StartGuest("g", "g", 2)))
        while loop.time() < rig.lease.until + 0.05:
            await asyncio.sleep(0.05)
        assert not start.done()
        release.set()
        await asyncio.gather(*busy)
        result = await start
        assert result.refused and "right before the call" in result.detail, result
        assert not await running(hv, "g")

    run(rig, body)


def test_the_adapter_holds_the_permit_until_create_returns(tmp_path: Path) -> None:
    rig = Rig(tmp_path, starting_on_n1())
    seen: list[int] = []
    authorise = rig.authority.authorise(START, "g", 2)

    def wrapped() -> object:
        context = authorise()

        class Spy:
            def __enter__(self) -> None:
                context.__enter__()
                seen.append(rig.authority.in_flight())

            def __exit__(self, *exc: object) -> None:
                context.__exit__(None, None, None)

        return Spy()

    async def body(hv: LibvirtHypervisor) -> None:
        rig.hold(asyncio.get_running_loop().time() + 30)
        await hv.start("g", guest_xml("g"), "c", "n1", 2, authorise=wrapped)  # type: ignore[arg-type]
        assert seen == [1] and rig.authority.in_flight() == 0 and await running(hv, "g")
        rig.hold(asyncio.get_running_loop().time() - 1)
        with pytest.raises(RefusedError):
            await hv.start("h", guest_xml("h"), "c", "n1", 2, authorise=authorise)

    run(rig, body)


# --- the watchdog --------------------------------------------------------------------------------


def test_no_pet_while_a_start_is_in_flight_past_the_lease_that_authorised_it(
    tmp_path: Path,
) -> None:
    daemon = Daemon(node_config(tmp_path, '[["bmc"]]'))
    standin = tmp_path / "standin"
    keeper = daemon.watchdogs
    keeper.watchdog = FileWatchdog(standin, 5.0)
    lease = daemon.core.lease
    state = starting_on_n1()
    authority = ActAuthority("n1", lease, lambda: state, clock=lambda: 100.0)
    keeper._authority = authority
    lease.until, lease.held_since = 101.0, 50.0
    in_create = threading.Event()
    returned = threading.Event()

    def slow_create() -> None:  # a create() stuck in libvirt, in its worker thread
        with authority.authorise(START, "g", 2)():
            in_create.set()
            returned.wait(10)

    worker = threading.Thread(target=slow_create)
    worker.start()
    try:
        assert in_create.wait(5)
        keeper.feed(100.5, pet=True)  # within the lease: pets
        assert read_standin(standin)[0] == "pet"
        petted_at = read_standin(standin)[1]
        # The lease lapses with the create() still in libvirt; the core would pet (nothing is
        # observed running), but the call is overdue.
        keeper.feed(101.5, pet=True)
        keeper.feed(102.5, pet=True)
        assert read_standin(standin)[1] == petted_at
        keeper.close_if_safe(nothing_runs=True)
        assert read_standin(standin)[0] == "pet"  # not disarmed under a start in flight
    finally:
        returned.set()
        worker.join()
    keeper.feed(103.0, pet=True)  # the call returned: the core's word counts again
    assert read_standin(standin)[1] > petted_at
    keeper.close_if_safe(nothing_runs=True)
    assert read_standin(standin)[0] == "closed"
