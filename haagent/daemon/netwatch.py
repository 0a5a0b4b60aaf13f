"""The network observer: which needed host interfaces are missing here, refreshed off the loop.

The model is the hypervisor observer (haagent.daemon.observer), with the same contract:

- `missing()` never waits. A pass reads the latest result; None means "not known" (not checked
  yet, or the last check failed or timed out), and then the core reports nothing: an unknown
  condition never reads as "all fine", nor as "all lost".
- A netlink link event (`LinkWatcher`, a non-blocking socket read by the loop) asks for a
  check at once; without events the check still runs every `interval_s`, because a message
  can be lost. The check (one pyroute2 link dump) runs in a worker thread with a timeout, so
  neither a slow netlink nor pyroute2's blocking API can delay a pass, a heartbeat or a pet.
- A finished check whose result differs from the last one wakes the loop.

Which interfaces: those named by the guests this node may host (their `networks`, from their
domain XML). A node no guest may use needs none and runs no watcher. A libvirt network
(``network:NAME``) is resolved to its bridge by this host's libvirtd in the same worker
thread on each check (resources.libvirt_networks), so a network redefined on another bridge
is followed; its bridge's link events wake the check like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from haagent.core.netneeds import libvirt_network
from haagent.daemon.observer import cancel, raise_if_ended
from haagent.model import GuestSpec

if TYPE_CHECKING:
    from haagent.resources.netlink import Resolver

log = logging.getLogger("haagent")

CHECK_INTERVAL_S = 5.0
CHECK_TIMEOUT_S = 5.0


def needed_here(node: str, guests: Iterable[GuestSpec]) -> tuple[str, ...]:
    """The interfaces the guests that may run on `node` need, sorted, without duplicates."""
    return tuple(sorted({n for g in guests if g.allows(node) for n in g.networks}))


class NetworkObserver:
    def __init__(
        self,
        needed: tuple[str, ...],
        wake: Callable[[], None],
        interval_s: float = CHECK_INTERVAL_S,
        timeout_s: float = CHECK_TIMEOUT_S,
        libvirt_uri: str | None = None,
    ) -> None:
        """`libvirt_uri`: where this host's libvirt networks among `needed` are resolved to
        their bridges (None: they cannot be, and count as not working)."""
        self._needed = needed
        self._libvirt_uri = libvirt_uri
        self._wake = wake
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._due = asyncio.Event()
        self._due.set()
        self._found: dict[str, str] | None = {} if not needed else None
        self._task: asyncio.Task[None] | None = None
        self._watcher: object | None = None
        self.checks = 0
        self.error: str | None = None

    @property
    def needed(self) -> tuple[str, ...]:
        return self._needed

    def missing(self) -> tuple[str, ...] | None:
        """The needed interfaces that do not work (sorted); None when unknown."""
        return None if self._found is None else tuple(sorted(self._found))

    def problems(self) -> dict[str, str] | None:
        """Interface -> why it does not work (absent, down, no carrier); None when unknown."""
        return None if self._found is None else dict(self._found)

    def request(self) -> None:
        self._due.set()

    def start(self) -> None:
        if not self._needed or self._task is not None:
            return
        from haagent.resources.netlink import LinkWatcher

        loop = asyncio.get_running_loop()
        watcher = LinkWatcher(self.request)
        try:
            watcher.start(loop)
            self._watcher = watcher
        except OSError as exc:
            # Without events the periodic check still runs: slower, never blind.
            log.warning("cannot watch netlink link events: %s", exc)
        self._task = loop.create_task(self._run())

    def check(self) -> None:
        """Re-raise what ended the check task (only a bug ends it), as the observer does."""
        raise_if_ended(self._task, "the network observer stopped")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._watcher is not None:
            self._watcher.close()  # type: ignore[attr-defined]
            self._watcher = None

    def _resolver(self) -> Resolver | None:
        uri = self._libvirt_uri
        if uri is None or not any(libvirt_network(n) for n in self._needed):
            return None  # libvirt is imported only where a guest uses a libvirt network
        from haagent.resources.libvirt_networks import resolve_networks

        return functools.partial(resolve_networks, uri)

    async def _run(self) -> None:
        from haagent.resources.netlink import NetlinkError, check_links, summary

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            found: dict[str, str] | None
            try:
                found = await asyncio.wait_for(
                    asyncio.to_thread(check_links, self._needed, self._resolver()),
                    self._timeout_s,
                )
                self.error = None
            except (NetlinkError, TimeoutError) as exc:
                found, self.error = None, str(exc) or type(exc).__name__
                log.warning("cannot check the host's networks: %s", self.error)
            self.checks += 1
            if found != self._found:
                if found is not None:
                    log.info("networks: %s", summary(found) or "all needed interfaces work")
                self._found = found
                self._wake()
