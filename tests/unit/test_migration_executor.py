"""The executor's live-migration actions against the real libvirt adapter (`test:///`
driver): authorised like a start (the source's lease and committed generation, right before
the call), and a libvirt failure is a plain failure, never "refused" (the core then aborts
the migration). The `test:///` driver cannot migrate (there is no second host): the call is
made and fails, and the guest stays where it runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from haagent.agent import LiveMigrate, ResumeGuest, StartGuest
from haagent.commands import GuestRunning
from haagent.resources.libvirt_guests import LibvirtHypervisor
from tests.helpers.core_views import build
from tests.unit.test_act_authority import Rig, run, running, starting_on_n1


def test_a_migration_is_authorised_like_a_start_and_a_libvirt_failure_is_a_failure(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, starting_on_n1())

    async def body(hv: LibvirtHypervisor) -> None:
        ex = rig.executor(hv)
        loop = asyncio.get_running_loop()
        rig.hold(loop.time() + 30)
        assert (await ex.dispatch(StartGuest("g", "g", 2))).ok
        rig.state = build(GuestRunning("g", "n1", 2, 0.0), state=rig.state)
        migrate = LiveMigrate("g", "g", "n2", "qemu+tcp://n2/system", 2, 3, 5.0)
        stale = LiveMigrate("g", "g", "n2", "qemu+tcp://n2/system", 1, 2, 5.0)
        result = await ex.dispatch(stale)
        assert result.refused and "generation 2" in result.detail
        rig.hold(loop.time() - 0.001)
        result = await ex.dispatch(migrate)
        assert result.refused and "lease lapsed" in result.detail
        rig.hold(loop.time() + 30)
        result = await ex.dispatch(migrate)
        assert not result.ok and not result.refused and not result.unknown, result
        assert await running(hv, "g")  # still on its source
        # Resume: authorised against the committed ownership (n1 owns it at 2, not 3).
        result = await ex.dispatch(ResumeGuest("g", "g", 3))
        assert result.refused and "generation 2" in result.detail
        assert rig.authority.in_flight() == 0

    run(rig, body)
