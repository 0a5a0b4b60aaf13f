"""Failover durations from committed state changes (the leader's
`haagent_failover_duration_seconds`).

Runs on the loop, but only when the committed state changed, at O(nodes + guests pending
recovery); `state.guests_of` walks the guests once per node failure.
"""

from __future__ import annotations

from collections.abc import Mapping

from haagent.model import ClusterState, GuestState, NodeState
from haagent.ports import HeartbeatSeen


class FailoverTracker:
    """Turns committed state changes into failover durations.

    When a node becomes failed, remember when its last heartbeat was applied here (the start of
    the outage as this node measured it) and which guests it owned. When such a guest is next
    seen running on another node, report the elapsed time once.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}  # guest -> outage start (monotonic)
        self._failed: set[str] = set()

    def observe(
        self, state: ClusterState, heartbeats: Mapping[str, HeartbeatSeen], now: float
    ) -> list[float]:
        for name, rec in state.nodes.items():
            if rec.state in (NodeState.FAILED, NodeState.FENCED):
                if name not in self._failed:
                    self._failed.add(name)
                    seen = heartbeats.get(name)
                    start = seen.at if seen is not None else now
                    for owned in state.guests_of(name):
                        self._pending.setdefault(owned.name, start)
            else:
                self._failed.discard(name)
        done: list[float] = []
        for guest_name, start in list(self._pending.items()):
            guest = state.guests.get(guest_name)
            if guest is None:
                del self._pending[guest_name]
                continue
            owner_state = state.node(guest.owner).state if guest.owner else None
            if guest.state is GuestState.RUNNING and owner_state is NodeState.UP:
                done.append(now - start)
                del self._pending[guest_name]
        return done
