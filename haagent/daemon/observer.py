"""The observer: the local hypervisor as last seen, refreshed in its own task.

Contract:
- `view()` never waits. A pass reads the latest observation whatever its age; the core sees
  `observed_at` and decides with it. A hung or slow hypervisor therefore never delays a pass,
  a heartbeat or a watchdog pet: it only ages the observation.
- `request()` asks for a fresh observation (a libvirt lifecycle event, one of our own actions
  finished). Without requests the observer still refreshes every `interval_s`, because an
  event can be lost.
- Every finished observation (success or failure) calls `wake`, so the loop decides with it.
- A failed or timed-out listing publishes `domains=None` ("cannot see"), never an empty map:
  an empty map would read as "nothing runs here".
- Raid1 guests' arrays (`mirrors`, the `Mirrors` port): observed from inside each raid1 guest
  running here right after the listing, each within `timeout_s`; one that fails or answers
  None is left out of `LocalView.mirrors` (not known now), never reported as healthy.
- DRBD replicas (`replicas`, the daemon's `DrbdReplicas`) are event-driven already (their
  watchers fold events2 and wake the loop): `view()` adds what they know now, O(local
  replicas), with the resources whose state is not current in `replicas_unknown`.

Listing every domain's metadata is one RPC per domain, which is why this is not done on every
pass on a host with hundreds of guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from haagent.agent import LocalView
from haagent.ports import (
    DomainObservation,
    Hypervisor,
    HypervisorError,
    MirrorObservation,
    Mirrors,
    ReplicaObservation,
)

log = logging.getLogger("haagent")

OBSERVE_INTERVAL_S = 1.0
OBSERVE_TIMEOUT_S = 5.0


class ReplicaSource(Protocol):
    def snapshot(self) -> tuple[Mapping[str, ReplicaObservation], frozenset[str]]:
        """(current observations by resource, resources whose state is not known now);
        never waits."""
        ...


def raise_if_ended(task: asyncio.Task[None] | None, what: str) -> None:
    """Re-raise, as RuntimeError(`what`), what ended a task that should run forever."""
    if task is not None and task.done() and not task.cancelled():
        raise RuntimeError(what) from task.exception()


CANCEL_RETRY_S = 0.1


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait until it ended; re-raise what it failed with, if not
    the cancellation.

    The cancel is repeated until the task ends: on Python 3.11 `asyncio.wait_for` returns the
    inner result, swallowing a cancel, when the inner call completes just as the cancel
    arrives (gh-86296, fixed in 3.12), and a looping task such as the observer then goes on
    for ever. A shutdown that awaited it once hung after the agent had left cleanly (CI,
    tests/integration/test_systemd.py)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


class Observer:
    def __init__(
        self,
        hypervisor: Hypervisor | None,
        wake: Callable[[], None],
        interval_s: float = OBSERVE_INTERVAL_S,
        timeout_s: float = OBSERVE_TIMEOUT_S,
        on_error: Callable[[str], None] | None = None,
        replicas: ReplicaSource | None = None,
        mirrors: Mirrors | None = None,
        raid1_domains: Mapping[str, str] | None = None,
    ) -> None:
        """`raid1_domains`: the raid1 guests' domains (domain -> guest) whose arrays
        `mirrors` observes while they run here."""
        self._hv = hypervisor
        self._mirrors = mirrors
        self._raid1_domains = dict(raid1_domains or {})
        self._on_error = on_error  # counts failed observations (telemetry)
        self._replicas = replicas
        self._wake = wake
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._due = asyncio.Event()
        self._due.set()
        self._error: str | None = None
        # No hypervisor (a witness): "nothing runs here" is the truth, observed once and for all.
        self._view = LocalView({} if hypervisor is None else None, -1.0)
        self._task: asyncio.Task[None] | None = None

    @property
    def error(self) -> str | None:
        """Why the last observation failed (None: it succeeded)."""
        return self._error

    def view(self) -> LocalView:
        if self._replicas is None:
            return self._view
        current, unknown = self._replicas.snapshot()
        return replace(self._view, replicas=current, replicas_unknown=unknown)

    def request(self) -> None:
        """Ask for a fresh observation soon (safe from the loop thread only)."""
        self._due.set()

    def start(self) -> None:
        if self._hv is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(self._hv))

    def check(self) -> None:
        """Re-raise what ended the observer task, if anything did. Only a bug ends it (its
        operating errors are observations): the loop calls this every pass and crashes with
        it, rather than deciding forever on an observation that no longer refreshes."""
        raise_if_ended(self._task, "the hypervisor observer stopped")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self, hv: Hypervisor) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            await self._observe(hv)

    async def _observe(self, hv: Hypervisor) -> None:
        started = time.monotonic()
        domains: Mapping[str, DomainObservation] | None
        try:
            domains = await asyncio.wait_for(hv.domains(), self._timeout_s)
            self._error = None
        except (HypervisorError, TimeoutError) as exc:
            domains, self._error = None, str(exc) or type(exc).__name__
            log.warning("cannot observe the hypervisor: %s", self._error)
            if self._on_error is not None:
                self._on_error(self._error)
        mirrors = await self._observe_mirrors(domains)
        # observed_at is when the listing began: the domains (and arrays) were at least that
        # fresh.
        self._view = LocalView(domains, started, mirrors=mirrors)
        self._wake()

    async def _observe_mirrors(
        self, domains: Mapping[str, DomainObservation] | None
    ) -> dict[str, MirrorObservation]:
        """The arrays of the raid1 guests running here, asked concurrently (one guest whose
        agent hangs costs `timeout_s`, not one each)."""
        mirrors = self._mirrors
        if mirrors is None or not domains:
            return {}
        guests = [
            guest
            for domain, guest in sorted(self._raid1_domains.items())
            if (seen := domains.get(domain)) is not None and seen.running
        ]

        async def one(guest: str) -> MirrorObservation | None:
            try:
                return await asyncio.wait_for(mirrors.observe(guest), self._timeout_s)
            except (HypervisorError, TimeoutError) as exc:
                log.warning("cannot observe the RAID1 of %s: %s", guest, exc or "timed out")
                return None

        seen_all = await asyncio.gather(*(one(g) for g in guests))
        return {g: obs for g, obs in zip(guests, seen_all, strict=True) if obs is not None}
