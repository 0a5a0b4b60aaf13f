"""The daemon's authority to act: `haagent.core.authority` over the live lease and replica.

Contract:
- `check(guest, generation)` is the executor's refusal test right before it calls the
  hypervisor (None: go ahead). It reads the clock, the lease and the replica's committed state
  at that moment, not the snapshot the core decided on.
- `require(key, guest, generation)` raises `RefusedError` where `check` names a refusal;
  `permit(key, guest, generation)` is `require` then `authorise`: the one path by which the
  executor asks before a start, a migration, a resume, a promote or a leg change.
- `check_fence(target, epoch, attempt)`: the same before every fence agent power-off call.
- `authorise(key, guest, generation)` returns the `Authorise` an adapter enters in the thread
  that makes the call, right before it: the same check again (the call may have waited in the
  worker pool or behind a reconnect since), then a permit held until the call returns, even
  if the caller stopped waiting for it (a `create()` outliving `start_timeout_s`).
- `overdue(now)` names a permit whose authorising lease has lapsed: the shell does not pet the
  watchdog while there is one (README, "Safety model"), and a clean shutdown does not disarm
  it.

Thread-safe: permits are granted and released in libvirt's worker threads and read by the
loop. The lease is read without the core's cooperation: `until` and `held_since` are floats
the loop thread replaces, so a worker reads an old or a new value, and an old `until` is the
smaller one (a refusal at worst).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from haagent.core.authority import ActingCalls, Permit, fence_refusal, refusal
from haagent.core.keys import ActionKey
from haagent.core.lease import Lease
from haagent.model import ClusterState
from haagent.ports import Authorise, RefusedError


class ActAuthority:
    def __init__(
        self,
        node: str,
        lease: Lease,
        committed_state: Callable[[], ClusterState],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._lease = lease
        self._state = committed_state
        self._clock = clock
        self._calls = ActingCalls()
        self._lock = threading.Lock()

    def check(self, guest: str, generation: int) -> str | None:
        """Why a start of `guest` at `generation` must not be made now (None: it may)."""
        return refusal(
            self._state(),
            self._node,
            guest,
            generation,
            now=self._clock(),
            lease_until=self._lease.until,
        )

    def require(self, key: ActionKey, guest: str, generation: int) -> None:
        """Raise RefusedError (the call must not be made) where `check` names a refusal."""
        why = self.check(guest, generation)
        if why is not None:
            raise RefusedError(f"{key} refused before the call: {why}")

    def permit(self, key: ActionKey, guest: str, generation: int) -> Authorise:
        """`require`, then the `authorise` context for the adapter's call: raises RefusedError
        when the call must not be made now."""
        self.require(key, guest, generation)
        return self.authorise(key, guest, generation)

    def check_fence(self, target: str, epoch: int, attempt: int) -> str | None:
        """Why a fence agent call against `target` for `attempt` of failure `epoch` must not
        be made now (None: it may)."""
        return fence_refusal(
            self._state(),
            self._node,
            target,
            epoch,
            attempt,
            now=self._clock(),
            lease_until=self._lease.until,
        )

    def authorise(self, key: ActionKey, guest: str, generation: int) -> Authorise:
        """The context an adapter enters right before the call (see the module contract)."""

        @contextlib.contextmanager
        def permit() -> Iterator[None]:
            with self._lock:
                now = self._clock()
                until = self._lease.until
                why = refusal(
                    self._state(), self._node, guest, generation, now=now, lease_until=until
                )
                if why is not None:
                    raise RefusedError(f"{key} refused right before the call: {why}")
                handle = self._calls.grant(key, generation, now, until)
            try:
                yield
            finally:
                with self._lock:
                    self._calls.release(handle)

        return permit

    def overdue(self, now: float) -> Permit | None:
        """An authorised call still in flight past the lease that authorised it, or None."""
        with self._lock:
            return self._calls.overdue(now, self._lease.until, self._lease.held_since)

    def in_flight(self) -> int:
        """How many authorised calls have not returned."""
        with self._lock:
            return len(self._calls.open())
