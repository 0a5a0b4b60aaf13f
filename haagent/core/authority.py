"""Authority to act: the lease and the generation checked at the moment of the hypervisor call.

The core decides a start (a promote, a migration) on a snapshot; the call that carries it out
may happen much later: queued behind other libvirt calls in the worker pool, behind a
reconnect, behind a slow `defineXML`. So the executor asks again *right before* the call
(issue 8 item 5, DESIGN rules 1 and 3):

- `refusal(...)` says why the call must not be made now: this node's lease has lapsed, or
  the committed state no longer gives the guest to this node at the action's generation. A
  refused call is not made; its result is a refusal, never a failure counted against this
  node's start-failure budget (nothing was tried).
- `fence_refusal(...)` is the same test for a fence agent call: the attempt it belongs to must
  still be in flight (core.fencing), and the lease valid.
- An authorised call holds a `Permit` until it returns. `ActingCalls.overdue` names a call
  still in flight once the lease that authorised it has lapsed (a lease renewed without a gap
  since the grant still covers it: a node whose lease never lapsed was never declared failed,
  so its guests were not moved). While a call is overdue the node does not pet its watchdog:
  if a `create()` is stuck in libvirt beyond the lease, the watchdog resets the host, and that
  reset is what makes it safe for the others to recover the guest after lease + watchdog
  timeout + margin (core.fencing) although the late start might still complete.

Pure: times are this node's monotonic clock, passed in. `ActingCalls` is not thread-safe; the
daemon wraps it in a lock (haagent.daemon.authority).
"""

from __future__ import annotations

from dataclasses import dataclass

from haagent.core.keys import ActionKey
from haagent.model import ClusterState, DesiredState, NodeState


def refusal(
    state: ClusterState,
    node: str,
    guest: str,
    generation: int,
    *,
    now: float,
    lease_until: float,
) -> str | None:
    """Why `node` must not start (promote for, migrate) `guest` at `generation` now, or None.

    `state` is the freshest committed state this node has applied; `lease_until` its lease
    (valid while `now < lease_until`). The committed record must still name this node as
    owner at exactly `generation`, with the guest wanted running: an older generation means
    the guest moved on (it may run elsewhere now), a newer one that this action is stale."""
    if now >= lease_until:
        return f"lease lapsed {now - lease_until:.3f}s before the call"
    record = state.guests.get(guest)
    if record is None:
        return f"guest {guest} is not in the committed state"
    if record.owner != node or record.generation != generation:
        return (
            f"committed owner is {record.owner} at generation {record.generation}, "
            f"the action was for {node} at generation {generation}"
        )
    if record.desired is not DesiredState.RUNNING:
        return f"guest {guest} is committed {record.desired}"
    return None


def fence_refusal(
    state: ClusterState,
    node: str,
    target: str,
    epoch: int,
    attempt: int,
    *,
    now: float,
    lease_until: float,
) -> str | None:
    """Why `node` must not call a fence agent against `target` now for `attempt` of failure
    `epoch`, or None (checked before every power-off call of the attempt).

    The attempt must still be the one in flight, started by `node`, with `target` still
    failed in that epoch, and `node`'s lease valid: an attempt a new leader gave up (it waited
    for it as long as its fencer could act) or one whose verdict is in must not switch off a
    node that may have rejoined since; a node without a lease cannot know either."""
    if now >= lease_until:
        return f"lease lapsed {now - lease_until:.3f}s before the call"
    record = state.nodes.get(target)
    if record is None:
        return f"node {target} is not in the committed state"
    fence = record.fence
    if (
        record.state is not NodeState.FAILED
        or record.failure_epoch != epoch
        or fence.attempts != attempt
        or fence.in_progress_by != node
    ):
        return (
            f"{target} is {record.state} in failure {record.failure_epoch}, attempt "
            f"{fence.attempts} by {fence.in_progress_by}: attempt {attempt} of failure {epoch} "
            "is no longer in flight"
        )
    return None


@dataclass(frozen=True)
class Permit:
    """One authorised hypervisor call: what it is for, when it was authorised (this node's
    clock) and the lease that authorised it."""

    key: ActionKey
    generation: int
    granted_at: float
    lease_until: float


class ActingCalls:
    """The authorised hypervisor calls that have not returned yet (see the module doc)."""

    def __init__(self) -> None:
        self._open: dict[int, Permit] = {}
        self._next = 0

    def grant(self, key: ActionKey, generation: int, now: float, lease_until: float) -> int:
        """Record an authorised call; returns the handle `release` takes. Call only after
        `refusal` returned None for the same `now` and `lease_until`."""
        self._next += 1
        self._open[self._next] = Permit(key, generation, now, lease_until)
        return self._next

    def release(self, handle: int) -> None:
        """The call returned (whatever its result). Idempotent."""
        self._open.pop(handle, None)

    def open(self) -> tuple[Permit, ...]:
        return tuple(self._open.values())

    def overdue(self, now: float, lease_until: float, held_since: float) -> Permit | None:
        """An open call whose authorising lease has lapsed, or None.

        `lease_until`/`held_since`: this node's lease now and since when it has been valid
        without a gap (core.lease). A call stays covered while the lease granted it and has
        been renewed without a gap since: then `now < lease_until` and
        `held_since <= granted_at`. Anything else means the lease lapsed at some point after
        the grant, which is after the authorising lease's end."""
        for permit in self._open.values():
            covered = now < lease_until and held_since <= permit.granted_at
            if not covered:
                return permit
        return None
