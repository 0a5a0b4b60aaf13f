"""The daemon's guest-RAID1 wiring: the executor runs AttachLeg/DetachLeg through the
`Mirrors` port (checked against the lease and generation right before the call), the
stand-in `UnknownMirrors` says plainly that it can do nothing, and the observer reports an
array it cannot see as unknown, never as healthy."""

from __future__ import annotations

import math
from typing import cast

from haagent.agent import AgentSettings, AttachLeg, DetachLeg, NodeSettings
from haagent.config import Config
from haagent.core.lease import Lease
from haagent.daemon.authority import ActAuthority
from haagent.daemon.executor import ActionExecutor
from haagent.daemon.mirrors import UnknownMirrors
from haagent.daemon.observer import Observer
from haagent.daemon.offload import Offload
from haagent.daemon.telemetry import Telemetry
from haagent.model import ClusterState, GuestRecord, GuestSpec, NodeRole
from haagent.ports import DomainObservation, Mirrors


def executor(mirrors: Mirrors | None, leased: bool = True) -> ActionExecutor:
    settings = AgentSettings("c", "n1", {"n1": NodeSettings(NodeRole.HYPERVISOR, 1024)})
    # The committed state gives guest g to n1 at generation 3; the lease holds or has lapsed.
    lease = Lease(settings, "n1-inc", 0.0)
    lease.until, lease.held_since = (math.inf, 0.0) if leased else (-math.inf, math.inf)
    state = ClusterState().with_guest(GuestRecord(GuestSpec("g", "g", 64), "n1", 3))
    authority = ActAuthority("n1", lease, lambda: state)
    return ActionExecutor(
        cast(Config, None), settings, None, cast(object, None),  # type: ignore[arg-type]
        Telemetry("n1", Offload()), authority, mirrors=mirrors,
    )  # fmt: skip


async def test_leg_actions_go_through_the_mirrors_port_and_never_pass_silently() -> None:
    attach = AttachLeg("g", "a", "nbd://hv1:10809/g-a", 3)
    detach = DetachLeg("g", "a", 3, "faulty")
    for action in (attach, detach):
        result = await executor(UnknownMirrors()).dispatch(action)
        assert not result.ok and not result.refused and not result.unknown
        assert "no guest-RAID1 adapter" in result.detail
        result = await executor(None).dispatch(action)
        assert not result.ok and "no raid1 legs on this node" in result.detail
    # Checked at the moment of acting: without a lease, or for a generation that moved on,
    # the port is not called, and the refusal is not a failure.
    moved = AttachLeg("g", "a", "nbd://hv1:10809/g-a", 2)
    for ex, action in (
        (executor(UnknownMirrors(), leased=False), attach),
        (executor(UnknownMirrors()), moved),
    ):
        result = await ex.dispatch(action)
        assert not result.ok and result.refused, result


async def test_the_observer_reports_an_array_it_cannot_see_as_unknown() -> None:
    obs = Observer(None, lambda: None, mirrors=UnknownMirrors(), raid1_domains={"dom-g": "g"})
    running = {"dom-g": DomainObservation("dom-g", True), "other": DomainObservation("other", True)}
    assert await obs._observe_mirrors(running) == {}
    assert await obs._observe_mirrors(None) == {}
