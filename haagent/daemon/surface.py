"""The HTTP surface (`haagent.api.Handlers`) over a running daemon.

Contract: every handler answers without running work that grows with nodes x guests on the
loop. Health reads two numbers; metrics and the status document are built by telemetry in the
offload; admin requests go to the admin service (what-if in the offload, commands through
Raft). The status document's `local` part is observed at request time, in libvirt's worker
threads, so it is what an admin or a test can trust.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from haagent.api import ApiError
from haagent.ports import DomainObservation, HypervisorError, Outcome

if TYPE_CHECKING:
    from haagent.daemon.shell import Daemon

LOOP_STALE_S = 1.0  # health: a loop without a pass for this long is stale (> MAX_IDLE_S)
STATUS_OBSERVE_TIMEOUT_S = 5.0


class Surface:
    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    def health(self) -> tuple[bool, str]:
        now = time.monotonic()
        age = now - self._d.telemetry.loop.last_pass_at
        if age > LOOP_STALE_S:
            return False, f"reconcile loop stale ({age:.2f}s since the last pass)"
        if not self._d.core.lease_valid(now):
            return False, "no valid lease (not in contact with a majority)"
        return True, "lease valid, loop fresh"

    async def metrics(self) -> bytes:
        return await self._d.telemetry.render_metrics()

    async def whatif(self, fail: list[str]) -> dict[str, Any]:
        return await self._d.admin.whatif(fail)

    def events(self, since: int, limit: int) -> dict[str, Any]:
        if self._d.consensus is None:
            raise ApiError(503, "the agent is starting")
        return self._d.consensus.events.page(since, limit)

    async def set_desired(self, guest: str, running: bool) -> Outcome:
        return await self._d.admin.set_desired(guest, running)

    async def set_maintenance(self, node: str, on: bool) -> Outcome:
        return await self._d.admin.set_maintenance(node, on)

    async def confirm_fenced(self, node: str, by: str) -> Outcome:
        return await self._d.admin.confirm_fenced(node, by)

    async def migrate(self, guest: str, node: str, generation: int | None) -> Outcome:
        return await self._d.admin.migrate(guest, node, generation)

    async def status(self) -> str:
        d = self._d
        if d.consensus is None:
            raise ApiError(503, "the agent is starting")
        local: Mapping[str, DomainObservation] | None = {}
        error = None
        if d.hypervisor is not None:
            try:
                local = await asyncio.wait_for(d.hypervisor.domains(), STATUS_OBSERVE_TIMEOUT_S)
            except (HypervisorError, TimeoutError) as exc:
                local, error = None, str(exc) or type(exc).__name__
        view = d.consensus.view()
        drbd = d.observer.view()
        now = time.monotonic()
        tol = d.telemetry.tolerance
        tolerated = None
        if tol is not None:
            tolerated = {
                "count": tol.tolerated,
                "detail": tol.detail,
                "age_s": round(now - tol.computed_at, 3),
                "took_s": round(tol.took_s, 3),
            }
        return await d.telemetry.status_document(
            node=d.config.node,
            cluster=d.config.cluster,
            pid=d.pid,
            incarnation=d.incarnation,
            view=view,
            now=now,
            lease_until=d.core.lease_until,
            loop_age_s=now - d.telemetry.loop.last_pass_at,
            local=local,
            local_error=error,
            loop=d.telemetry.loop.summary(now),
            tolerated=tolerated,
            voters=len(d.settings.nodes),
            config_digest=d.core.lease.config_digest,
            replicas=drbd.replicas,
            replicas_unknown=drbd.replicas_unknown,
            mirrors=drbd.mirrors,
        )
